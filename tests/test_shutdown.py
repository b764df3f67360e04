"""No process outlives the run: a driver stopped while its zygote is still starting.

The zygote imports every module the notebook imports before it takes a task,
which can take seconds. Whatever stops the driver then -- Ctrl-C, SIGTERM,
even SIGKILL, which leaves no chance to clean up -- the zygote must end with
it, not finish its start and stay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nbbuild import code, write

#: A module that takes long to import: it says when it starts, then sleeps.
SLOW_MODULE = "from pathlib import Path\nimport time\nPath({flag!r}).touch()\ntime.sleep(60)\n"


def processes_of(marker: str) -> list[str]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if int(pid) != os.getpid() and state != "Z" and (marker in cmdline or marker in environ):
            found.append(f"{pid}: {cmdline[:120]}")
    return found


def start_with_slow_import(tmp_path: Path, *site_args: str) -> subprocess.Popen[str]:
    """Start ``nbpipe execute`` on a notebook importing a slow module; return once
    the zygote is importing it."""
    lib, flag = tmp_path / "lib", tmp_path / "importing"
    lib.mkdir()
    (lib / "slow_to_import.py").write_text(SLOW_MODULE.format(flag=str(flag)))
    nb = write(tmp_path / "nb.ipynb", code("import slow_to_import\nprint('imported')", "app:a"))
    (tmp_path / "tmp").mkdir()  # the run directory goes here, where the tests can see it
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(lib), os.environ.get("PYTHONPATH", "")]),
               TMPDIR=str(tmp_path / "tmp"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb), *site_args],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the zygote never started to preload the notebook's imports"
        time.sleep(0.1)
    assert any("nbpipe.execution.zygote" in p for p in processes_of(str(tmp_path)))
    return proc


def assert_nothing_left(marker: str, within: float) -> None:
    deadline = time.time() + within
    while processes_of(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert processes_of(marker) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_run_stops_its_zygote_while_it_preloads(tmp_path: Path, sig: int) -> None:
    proc = start_with_slow_import(tmp_path)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err  # 130 for Ctrl-C, 143 for SIGTERM
    assert "nbpipe: interrupted" in err
    # The driver cleaned up before it exited: nothing is left now.
    assert processes_of(str(tmp_path)) == []
    assert list((tmp_path / "tmp").glob("nbpipe-run-*")) == []


@pytest.mark.parametrize("gap", [0.05, 0.2, 0.6])
def test_ctrl_c_twice_while_the_zygote_preloads(tmp_path: Path, gap: float) -> None:
    """The second Ctrl-C lands during the cleanup, the report, or the exit: never a traceback or -2."""
    proc = start_with_slow_import(tmp_path)
    proc.send_signal(signal.SIGINT)
    time.sleep(gap)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert processes_of(str(tmp_path)) == []
    assert list((tmp_path / "tmp").glob("nbpipe-run-*")) == []


def test_a_killed_driver_takes_its_starting_zygote_with_it(tmp_path: Path) -> None:
    proc = start_with_slow_import(tmp_path)
    proc.kill()  # no handler runs: the zygote notices alone
    proc.communicate(timeout=60)
    assert_nothing_left(str(tmp_path), within=10)  # the slow import alone would take 60 s


@pytest.mark.slow  # test_parsl.py stops a Parsl run with Ctrl-C in the default suite
def test_ctrl_c_on_a_parsl_site_stops_the_workers_starting_zygote(tmp_path: Path) -> None:
    pytest.importorskip("parsl", reason="the Parsl engine needs the parsl extra: pip install -e '.[parsl]'")
    from sitekit import PARSL_LOCAL

    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)
    proc = start_with_slow_import(tmp_path, "--site", "htex")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    # The driver cannot wait for a worker's processes (they may be on other nodes):
    # they stop themselves when the worker is gone, well before the import ends.
    assert_nothing_left(str(tmp_path), within=10)
