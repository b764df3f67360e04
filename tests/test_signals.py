"""One stop path: every signal stops a run the same way (issue 9, findings 2-4).

Each test starts the real ``nbpipe execute`` in a subprocess, waits until an
app has printed something and is running, collects every descendant process,
sends a signal, and then checks the contract: the exit code (130 for SIGINT,
128+N for another signal), the partial merged notebook with what the
interrupted app printed so far, no run directory, and no descendant left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nbbuild import code, read, write

#: An app that says it runs, starts a grandchild, then waits. ``stubborn``
#: catches the interrupt and keeps going, as a careless app does.
RUNNING = """
import subprocess, time, pathlib
print('partial output')
child = subprocess.Popen(['sleep', '999'])
pathlib.Path({flag!r}).write_text(str(child.pid))
"""
WAIT = "time.sleep(120)\n"
STUBBORN = """
for _ in range(400):
    try:
        time.sleep(0.3)
    except KeyboardInterrupt:
        print('caught the interrupt, going on')
"""


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid``, also those that started a session of their own."""
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if stat[0] != "Z":
            parents[int(entry)] = int(stat[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def marked(marker: str) -> set[int]:
    """Live processes whose command line or environment mentions ``marker``: also
    those a launcher detached (Parsl's local provider starts blocks with ``&``)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{entry}/cmdline").read_bytes() + Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text and int(entry) != os.getpid():
            found.add(int(entry))
    return alive(found)


def alive(pids: set[int]) -> set[int]:
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(pid)
    return left


class Run:
    """``nbpipe execute`` on a notebook with an independent quick app and a running one."""

    def __init__(self, tmp_path: Path, *args: str, stubborn: bool = False) -> None:
        self.flag = tmp_path / "running"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        body = RUNNING.format(flag=str(self.flag)) + (STUBBORN if stubborn else WAIT)
        nb = write(tmp_path / "nb.ipynb", code("print('quick done')", "app:quick"), code(body, "app:slow"))
        self.output = tmp_path / "nb.merged.ipynb"
        env = dict(os.environ, TMPDIR=str(self.tmp))
        self.proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb), *args],
                                     cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.tmp_path = tmp_path

    def wait_running(self, timeout: float = 120) -> set[int]:
        deadline = time.time() + timeout
        while not self.flag.exists() or not self.flag.read_text():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.time() < deadline, "the app never started"
            time.sleep(0.1)
        time.sleep(0.5)  # let the quick app finish and the print reach the recorder
        family = descendants(self.proc.pid) | marked(str(self.tmp)) | {int(self.flag.read_text())}
        assert len(family) >= 2, family
        return family

    def stop(self, *signals: int, gap: float = 0.3, timeout: float = 60) -> str:
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            if sig in (signal.SIGINT, signal.SIGHUP):
                # as a terminal does: to the whole foreground process group
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=timeout)
        return err

    def run_dirs(self) -> list[str]:
        found = [p.name for p in self.tmp.glob("nbpipe-run-*")]
        return found + [p.name for p in (self.tmp_path / ".nbpipe-runs").glob("*")]

    def outputs_of(self, text: str) -> bool:
        nb = read(self.output)
        return any(text in json.dumps(c.get("outputs", [])) for c in nb.cells)


def assert_stopped(run: Run, family: set[int], err: str, code: int) -> None:
    assert run.proc.returncode == code, err
    assert "nbpipe: interrupted" in err or "nbpipe: stopped" in err, err
    assert run.output.exists(), err
    assert run.outputs_of("quick done"), "the finished app's output is missing"
    assert run.outputs_of("partial output"), "the interrupted app's partial output is missing"
    assert run.run_dirs() == []
    deadline = time.time() + 10
    while alive(family) and time.time() < deadline:
        time.sleep(0.2)
    assert alive(family) == set(), [Path(f"/proc/{p}/cmdline").read_bytes() for p in alive(family)]


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]


@pytest.mark.parametrize("sig,code", SIGNALS, ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_apps_run_stops_cleanly(tmp_path: Path, sig: int, code: int) -> None:
    run = Run(tmp_path)
    family = run.wait_running()
    assert_stopped(run, family, run.stop(sig), code)


@pytest.mark.parametrize("sig,code", [SIGNALS[0], *(pytest.param(*s, marks=pytest.mark.slow) for s in SIGNALS[1:])],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_an_app_that_catches_the_interrupt_is_stopped_all_the_same(tmp_path: Path, sig: int, code: int) -> None:
    run = Run(tmp_path, stubborn=True)
    family = run.wait_running()
    started = time.time()
    assert_stopped(run, family, run.stop(sig), code)
    assert time.time() - started < 30


def test_a_second_ctrl_c_only_shortens_the_grace_period(tmp_path: Path) -> None:
    run = Run(tmp_path, stubborn=True)
    family = run.wait_running()
    started = time.time()
    err = run.stop(signal.SIGINT, signal.SIGINT)
    assert "Traceback" not in err, err
    assert_stopped(run, family, err, 130)
    assert time.time() - started < 5  # no grace period waited for


def test_under_nohup_a_hang_up_does_not_stop_the_run(tmp_path: Path) -> None:
    flag = tmp_path / "running"
    nb = write(tmp_path / "nb.ipynb", code(f"import pathlib, time\npathlib.Path({str(flag)!r}).touch()\n"
                                           "time.sleep(1)\nprint('finished')", "app:a"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb)], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    deadline = time.time() + 60
    while not flag.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "finished" in json.dumps(read(tmp_path / "nb.merged.ipynb").cells[0].outputs)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", SIGNALS, ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_kernel_engine_cleanly(tmp_path: Path, sig: int, code: int) -> None:
    run = Run(tmp_path, "--engine", "kernel", stubborn=True)
    family = run.wait_running()
    assert_stopped(run, family, run.stop(sig), code)


@pytest.mark.slow
def test_a_second_ctrl_c_on_the_kernel_engine(tmp_path: Path) -> None:
    run = Run(tmp_path, "--engine", "kernel", stubborn=True)
    family = run.wait_running()
    assert_stopped(run, family, run.stop(signal.SIGINT, signal.SIGINT), 130)


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", SIGNALS[:2], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_parsl_site_cleanly(tmp_path: Path, sig: int, code: int) -> None:
    pytest.importorskip("parsl", reason="the Parsl engine needs the parsl extra: pip install -e '.[parsl]'")
    from sitekit import PARSL_LOCAL

    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)
    run = Run(tmp_path, "--site", "htex")
    family = run.wait_running()
    started = time.time()
    err = run.stop(sig, timeout=90)
    assert_stopped(run, family, err, code)
    assert time.time() - started < 60


def test_execute_from_another_thread_runs_without_signal_handlers(tmp_path: Path) -> None:
    import threading

    import nbpipe

    nb = write(tmp_path / "nb.ipynb", code("print('ran')", "app:a"))
    before = signal.getsignal(signal.SIGINT)
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(nbpipe.execute(nb)))
    thread.start()
    thread.join(timeout=120)
    assert results and results[0].ok  # type: ignore[attr-defined]
    nbpipe.execute(nb)  # in the main thread: handlers installed, then put back
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", SIGNALS[:2], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_dask_cluster_nbpipe_started(tmp_path: Path, sig: int, code: int) -> None:
    pytest.importorskip("distributed", reason="the Dask engine needs the dask extra: pip install -e '.[dask]'")
    (tmp_path / "nbpipe.toml").write_text('[sites.dasklocal]\nengine = "dask"\nworkers = 2\n')
    run = Run(tmp_path, "--site", "dasklocal")
    family = run.wait_running()
    assert_stopped(run, family, run.stop(sig, timeout=90), code)


def test_a_signal_while_the_run_directory_is_filled_leaves_no_run_directory(tmp_path: Path) -> None:
    """The moment the run directory appears, before any app runs (task notebooks being written)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    nb = write(tmp_path / "wide.ipynb", *[code(f"x{i} = {i}", f"app:a{i}") for i in range(1500)])
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb)], cwd=tmp_path,
                            env=dict(os.environ, TMPDIR=str(tmp)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list(tmp.glob("nbpipe-run-*")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    assert list(tmp.glob("nbpipe-run-*")) == []
