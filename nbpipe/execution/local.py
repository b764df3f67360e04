"""The ``local`` site: an embedded pool of worker processes on this machine.

Each task runs in a worker process of its own (``python -m
nbpipe.execution.task``), in a new session, so the driver can stop it -- and
the kernel it started -- on a timeout or Ctrl-C without stopping itself.
Threads of this process wait for the workers; no server is started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .base import AppStatus, TaskResult, TaskSpec

__all__ = ["LocalExecutor"]

#: How long a stopped task may take to save its notebook and stop its kernel.
GRACE_SECONDS = 5.0


class LocalExecutor:
    """Run up to ``workers`` tasks at once, each in its own process."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nbpipe-local")
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closing = False

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        return self._pool.submit(self._run, spec)

    def _run(self, spec: TaskSpec) -> TaskResult:
        base = Path(spec.run_dir) / "tasks" / f"{spec.app}.{spec.attempt}"
        spec_path, result_path = base.with_suffix(".spec.json"), base.with_suffix(".result.json")
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec.to_dict()))
        start = time.time()
        with open(base.with_suffix(".log"), "wb") as log:
            with self._lock:
                if self._closing:
                    return self._result(spec, start, AppStatus.FAILED, "KeyboardInterrupt",
                                        "the run was interrupted")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "nbpipe.execution.task", str(spec_path), str(result_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                self._procs[proc.pid] = proc
            try:
                # papermill enforces the timeout per cell; this bounds the whole app.
                limit = spec.timeout + GRACE_SECONDS if spec.timeout else None
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _stop(proc)
                return self._result(spec, start, AppStatus.TIMED_OUT, "TimeoutError",
                                    f"app {spec.app!r} ran longer than its timeout of {spec.timeout:g} s")
            finally:
                with self._lock:
                    self._procs.pop(proc.pid, None)
        if result_path.exists():
            return TaskResult.from_dict(json.loads(result_path.read_text()))
        tail = base.with_suffix(".log").read_text(errors="replace")[-2000:]
        return self._result(spec, start, AppStatus.FAILED, "WorkerDied",
                            f"worker process exited with status {proc.returncode}: {tail}")

    @staticmethod
    def _result(spec: TaskSpec, start: float, status: AppStatus, ename: str, evalue: str) -> TaskResult:
        output = spec.output if Path(spec.output).exists() else None
        return TaskResult(spec.app, status, start, time.time(), socket.gethostname(), spec.attempt,
                          output, {"ename": ename, "evalue": evalue})

    def shutdown(self, *, cancel: bool = False) -> None:
        with self._lock:
            self._closing = cancel
            procs = list(self._procs.values())
        if cancel:
            for proc in procs:
                _stop(proc)
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker and everything it started (its kernel runs in a session of its own)."""
    family = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    for pid in [proc.pid, *family]:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()


def _descendants(pid: int) -> list[int]:
    """All descendants of ``pid``, from /proc (Linux); empty elsewhere."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                out.append(child)
                todo.append(child)
    return out
