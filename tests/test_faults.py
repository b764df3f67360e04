"""The fault suite: processes dying under the run (issue 9, findings 9 and 12).

An app killed by SIGKILL, an app that crashes hard, the zygote killed, a
Parsl worker pool killed: each is reported as a failure that carries what
the app printed, and the independent apps still run. Processes an app
started do not outlive it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import ENGINE_PARAMS
from nbbuild import code, write
from test_signals import alive, descendants, marked

import nbpipe
from nbpipe.api import AppStatus

CHILD = """
import subprocess, pathlib
child = subprocess.Popen(['sleep', '999'])
pathlib.Path({flag!r}).write_text(str(child.pid))
"""


def cell_text(result: nbpipe.RunResult, app: str) -> str:
    """Everything the merged notebook shows for ``app``'s cells, and its error."""
    cells = [c for c in result.notebook.cells if c.get("metadata", {}).get("nbpipe", {}).get("app") == app]
    texts = [str(o.get("text", "")) + str(o.get("evalue", "")) for c in cells for o in c.get("outputs", [])]
    return "".join(texts) + str(result.apps[app].error or "")


def wait_gone(pid: int, within: float = 10) -> bool:
    deadline = time.time() + within
    while alive({pid}) and time.time() < deadline:
        time.sleep(0.1)
    return not alive({pid})


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_process_a_finished_app_started_ends_with_the_app(tmp_path: Path, engine: str) -> None:
    flag = tmp_path / "child"
    nb = write(tmp_path / "nb.ipynb", code(CHILD.format(flag=str(flag)), "app:a"), code("x = 1", "app:b"))
    result = nbpipe.execute(nb, engine=engine)
    assert result.ok
    pid = int(flag.read_text())
    assert wait_gone(pid, within=5), f"sleep 999 (pid {pid}) outlived the app that started it"


@pytest.mark.parametrize("how", ["SIGKILL", "os._exit"])
def test_an_app_that_dies_fails_with_its_output_and_the_run_goes_on(tmp_path: Path, how: str) -> None:
    die = "os.kill(os.getpid(), signal.SIGKILL)" if how == "SIGKILL" else "os._exit(3)"
    nb = write(tmp_path / "nb.ipynb",
               code(f"import os, signal\nprint('printed before dying')\n{die}", "app:dies"),
               code("print('independent app ran')", "app:other"))
    result = nbpipe.execute(nb, workers=1)
    assert result.apps["dies"].status is AppStatus.FAILED
    assert result.apps["other"].status is AppStatus.COMPLETED
    assert "independent app ran" in cell_text(result, "other")
    shown = cell_text(result, "dies")
    assert "printed before dying" in shown, shown
    assert ("SIGKILL" if how == "SIGKILL" else "status 3") in shown, shown


def zygotes_of(pid: int) -> list[int]:
    """The zygotes ``pid`` started (not the apps they forked, which share their command line)."""
    found = []
    for child in descendants(pid):
        try:
            ppid = int(Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[1])
            if ppid == pid and b"nbpipe.execution.zygote" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except OSError:
            continue
    return found


def test_a_killed_zygote_fails_its_running_app_and_restarts_once(tmp_path: Path) -> None:
    flag = tmp_path / "running"
    nb = write(tmp_path / "nb.ipynb",
               code(f"import pathlib, time\nprint('a started')\npathlib.Path({str(flag)!r}).touch()\n"
                    "time.sleep(60)", "app:a"),
               code("print('b ran on a new zygote')", "app:b"))
    killed: list[int] = []

    def kill_zygote() -> None:
        while not flag.exists():
            time.sleep(0.05)
        zygote = zygotes_of(os.getpid())
        killed.extend(zygote)
        os.kill(zygote[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_zygote, daemon=True)
    killer.start()
    started = time.time()
    result = nbpipe.execute(nb, workers=1)
    killer.join(timeout=5)
    assert len(killed) == 1
    assert time.time() - started < 30  # a's sleep was stopped, not waited for
    assert result.apps["a"].status is AppStatus.FAILED
    assert "a started" in cell_text(result, "a")
    assert "zygote" in cell_text(result, "a")
    assert result.apps["b"].status is AppStatus.COMPLETED, result.apps["b"].error
    assert zygotes_of(os.getpid()) == []


def test_a_zygote_killed_twice_is_not_restarted_again(tmp_path: Path) -> None:
    flags = [tmp_path / "a", tmp_path / "b"]
    nb = write(tmp_path / "nb.ipynb",
               *[code(f"import pathlib, time\npathlib.Path({str(f)!r}).touch()\ntime.sleep(60)", f"app:{f.name}")
                 for f in flags],
               code("print('c')", "app:c"))

    def kill_zygotes() -> None:
        for f in flags:
            while not f.exists():
                time.sleep(0.05)
            os.kill(zygotes_of(os.getpid())[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_zygotes, daemon=True)
    killer.start()
    result = nbpipe.execute(nb, workers=1)
    killer.join(timeout=5)
    assert [result.apps[a].status for a in "abc"] == [AppStatus.FAILED] * 3
    assert "zygote" in str(result.apps["c"].error)
    assert zygotes_of(os.getpid()) == []


@pytest.mark.slow
def test_a_killed_parsl_worker_pool_fails_its_app_and_the_run_goes_on(tmp_path: Path) -> None:
    pytest.importorskip("parsl", reason="the Parsl engine needs the parsl extra: pip install -e '.[parsl]'")
    from sitekit import PARSL_LOCAL

    # Parsl notices a lost worker pool by its missed heartbeats: make that quick here.
    site = PARSL_LOCAL + "heartbeat_period = 1\nheartbeat_threshold = 4\n"
    # One worker: b waits for a, and runs on the block Parsl starts in the lost one's place.
    site = site.replace("max_blocks = 1", "max_blocks = 1\nmin_blocks = 1").replace(
        "max_workers_per_node = 2", "max_workers_per_node = 1")
    (tmp_path / "nbpipe.toml").write_text(site)
    flag = tmp_path / "running"
    nb = write(tmp_path / "nb.ipynb",
               code(f"import pathlib, time\nprint('a started')\npathlib.Path({str(flag)!r}).touch()\n"
                    "time.sleep(60)", "app:a"),
               code("import time\ntime.sleep(1)\nprint('b ran')", "app:b"))

    def kill_pool() -> None:
        while not flag.exists():
            time.sleep(0.1)
        for pid in pools():
            os.killpg(os.getpgid(pid), signal.SIGKILL)  # the pool and its workers, as a lost node
            killed.append(pid)

    def pools() -> list[int]:  # started detached: not our descendants
        return [p for p in marked(str(tmp_path)) if b"process_worker_pool" in Path(f"/proc/{p}/cmdline").read_bytes()]

    killed: list[int] = []
    killer = threading.Thread(target=kill_pool, daemon=True)
    killer.start()
    started = time.time()
    result = nbpipe.execute(nb, site="htex")
    killer.join(timeout=5)
    assert time.time() - started < 50, {a: r.to_dict() for a, r in result.apps.items()}
    assert result.apps["a"].status is AppStatus.FAILED
    assert "a started" in cell_text(result, "a")
    assert result.apps["b"].status is AppStatus.COMPLETED, result.apps["b"].error
    assert killed
    assert pools() == []
