"""The ``local`` site: an embedded pool of worker processes on this machine.

With the ``ipython`` engine (the default) a preloaded zygote process forks
one child per task (:mod:`.zygote`). With the ``kernel`` engine each task runs
in a worker process of its own (``python -m nbpipe.execution.task``) that
starts a Jupyter kernel. Either way every task runs in a new session, so the
driver can stop it -- and whatever it started -- on a timeout or Ctrl-C
without stopping itself. Threads of this process wait for the workers; no
server is started.
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
from typing import Any

from .. import stop
from ..containers import Container, ContainerError, container_name, launch_argv, prepare_launch, stop_container
from ..store import Store
from ..stop import GRACE_SECONDS
from .base import AppStatus, TaskResult, TaskSpec
from .batch import Batcher
from .zygote import process_start

__all__ = ["LocalExecutor", "result_path"]

#: After the grace period a task that still runs (it caught the interrupt) gets a
#: second SIGTERM, which saves what it printed and ends it; SIGKILL this long after.
LAST_WORDS_SECONDS = 1.0

#: A zygote that dies (killed, out of memory) is started again this many times:
#: it costs one preload, and the apps after it run as before.
ZYGOTE_RESTARTS = 1


class LocalExecutor:
    """Run up to ``workers`` tasks at once, each in its own process."""

    def __init__(self, workers: int | None = None, engine: str = "ipython",
                 preload: list[str] | tuple[str, ...] = (), batch: bool = True) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.engine = engine
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nbpipe-local")
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._preload = tuple(preload)
        # Where tasks fork from: None is this machine (the ``ipython`` engine, started
        # now); a container's key is a warm container of that image, started when
        # its first task comes (any engine: the child runs the task as the engine says).
        self._zygotes: dict[Any, _Zygote] = {}
        self._restarts: dict[Any, int] = {}
        # Short map items run several to a forked process (batch.py); a kernel per task never batches.
        self._queue = Batcher(self.workers, enabled=batch and engine == "ipython")
        if engine == "ipython":
            self._zygotes[None] = _Zygote(_host_command(self._preload))

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        self._queue.put(spec, future)
        self._pool.submit(self._next)  # one turn per task; a batch leaves the later turns nothing to do
        return future

    def run_together(self, specs: list[TaskSpec]) -> list[TaskResult]:
        """Run ``specs`` in this thread: one task, or items of one map app one after
        another in one forked process (a batch site's worker, :mod:`.remote`)."""
        return self._run_batch(specs) if len(specs) > 1 else [self._run(specs[0])]

    def _next(self) -> None:
        """Take the next task (or batch of items) from the queue, run it, resolve its futures."""
        batch = [(spec, future) for spec, future in self._queue.take() if future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            results = self._run_batch([spec for spec, _ in batch]) if len(batch) > 1 else [self._run(batch[0][0])]
        except BaseException as exc:
            for _, future in batch:
                future.set_exception(exc)
            return
        for (spec, future), result in zip(batch, results):
            self._queue.ended(result, spec.item)
            future.set_result(result)

    def _run(self, spec: TaskSpec) -> TaskResult:
        start = time.time()
        if self.engine == "ipython" or spec.container is not None:
            return self._run_forked(spec, _files(spec, made=True), start)
        base = _write_spec(spec)
        spec_path, result_path = base.with_suffix(".spec.json"), base.with_suffix(".result.json")
        with open(base.with_suffix(".log"), "wb") as log:
            with self._lock:
                if self._closing:
                    return _unstarted(spec, start)
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
                return self._result(spec, start, AppStatus.TIMED_OUT, "TimeoutError", _too_long(spec))
            finally:
                with self._lock:
                    self._procs.pop(proc.pid, None)
        _kill_leftovers(proc.pid)
        return self._collect(spec, base, start, proc.returncode)

    def _run_forked(self, spec: TaskSpec, base: _Files, start: float) -> TaskResult:
        if self._closing:
            return _unstarted(spec, start)
        try:
            zygote = self._live_zygote(spec)
        except (OSError, ContainerError) as exc:  # no runtime or image on this worker
            return self._result(spec, start, AppStatus.FAILED, "WorkerError",
                                f"cannot start the app's container: {exc}")
        task = zygote.run(spec.to_dict(), str(base.with_suffix(".result.json")), str(base.with_suffix(".log")))
        # No per-cell timeout runs inside the child: the app's timeout is enforced
        # here, from the moment the child exists (not while the zygote starts).
        task.started.wait()
        if not task.done.wait(timeout=spec.timeout):
            _kill_group(task.pid, task.done)
            return self._result(spec, start, AppStatus.TIMED_OUT, "TimeoutError", _too_long(spec))
        if self._closing and task.status != 0:
            return _interrupted(spec, start)
        if task.orphaned:
            return self._result(spec, start, AppStatus.FAILED, "WorkerDied", zygote.death(started=bool(task.pid))
                                + _printed(base))
        return self._collect(spec, base, start, task.status)

    def _run_batch(self, specs: list[TaskSpec]) -> list[TaskResult]:
        """Items of one map app, one after another in one forked process; each has its
        own files and result. Items the process did not reach run again, alone."""
        bases = [_files(spec, made=True) for spec in specs]
        start = time.time()
        if self._closing:
            return [_unstarted(spec, start) for spec in specs]
        try:
            zygote = self._live_zygote(specs[0])
        except (OSError, ContainerError) as exc:
            return [self._result(spec, start, AppStatus.FAILED, "WorkerError",
                                 f"cannot start the app's container: {exc}") for spec in specs]
        task = zygote.run_many([(spec.to_dict(), str(b.with_suffix(".result.json")), str(b.with_suffix(".log")))
                                for spec, b in zip(specs, bases)])
        task.done.wait()
        results: list[TaskResult] = []
        for spec, base in zip(specs, bases):
            if base.with_suffix(".result.json").exists() or base.with_suffix(".log").exists() or self._closing:
                results.append(self._ended_in_batch(spec, base, start, zygote, task))
            else:  # not reached: the process died (or was stopped) before it
                results.append(self._run(spec))
        return results

    def _ended_in_batch(self, spec: TaskSpec, base: _Files, start: float, zygote: _Zygote,
                        task: _Task) -> TaskResult:
        if self._closing and not base.with_suffix(".result.json").exists():
            # an item the batch never reached did not start
            return _interrupted(spec, start) if base.with_suffix(".log").exists() else _unstarted(spec, start)
        if task.orphaned and not base.with_suffix(".result.json").exists():
            return self._result(spec, start, AppStatus.FAILED, "WorkerDied", zygote.death(started=True)
                                + _printed(base))
        return self._collect(spec, base, start, task.status)

    def _live_zygote(self, spec: TaskSpec) -> _Zygote:
        """The zygote the task forks from, started for its first task; one that died
        is replaced, ``ZYGOTE_RESTARTS`` times in a run."""
        where = _where(spec)
        with self._lock:
            zygote = self._zygotes.get(where)
            if zygote is not None and (zygote.alive() or self._closing
                                       or self._restarts.get(where, 0) >= ZYGOTE_RESTARTS):
                return zygote
            if zygote is not None:
                self._restarts[where] = self._restarts.get(where, 0) + 1
                zygote.close()
            command = _host_command(self._preload) if spec.container is None else \
                _ContainerCommand(spec, self._preload, container_name())
            self._zygotes[where] = _Zygote(command, restarted=zygote is not None)
            return self._zygotes[where]

    def _collect(self, spec: TaskSpec, base: _Files, start: float, returncode: int | None) -> TaskResult:
        result_path = base.with_suffix(".result.json")
        if result_path.exists():
            return TaskResult.from_dict(json.loads(result_path.read_text()))
        if not base.with_suffix(".log").exists():
            return self._result(spec, start, AppStatus.FAILED, "WorkerDied",
                                "the preloaded worker process stopped before it could start the app; "
                                "its error is printed above")
        return self._result(spec, start, AppStatus.FAILED, "WorkerDied", _died(returncode) + _printed(base))

    @staticmethod
    def _result(spec: TaskSpec, start: float, status: AppStatus, ename: str, evalue: str) -> TaskResult:
        output = spec.output if Path(spec.output).exists() else None
        return TaskResult(spec.app, status, start, time.time(), socket.gethostname(), spec.attempt,
                          output, {"ename": ename, "evalue": evalue})

    def shutdown(self, *, cancel: bool = False) -> None:
        with self._lock:
            self._closing = cancel
            procs = list(self._procs.values())
            zygotes = list(self._zygotes.values())
        if cancel:
            for proc in procs:
                _stop(proc)
            for zygote in zygotes:
                zygote.kill_children()
                # Also a zygote still starting (preloading imports) stops now, and the
                # tasks waiting for it to start them fail instead of waiting.
                zygote.close()
        if cancel:
            for future in self._queue.drain():
                future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        with self._lock:
            zygotes = list(self._zygotes.values())
        for zygote in zygotes:
            zygote.close()


def result_path(spec: TaskSpec) -> Path:
    """Where the task of ``spec`` writes its result, also when it is stopped."""
    return _files(spec).with_suffix(".result.json")


def _interrupted(spec: TaskSpec, start: float) -> TaskResult:
    return LocalExecutor._result(spec, start, AppStatus.FAILED, "KeyboardInterrupt", "the run was interrupted")


def _unstarted(spec: TaskSpec, start: float) -> TaskResult:
    """A task the pool was stopped before it started: failed like a stopped one,
    marked so that an interrupted run shows it skipped (:mod:`.scheduler`)."""
    result = LocalExecutor._result(spec, start, AppStatus.FAILED, "KeyboardInterrupt",
                                   "the run was interrupted before the task started")
    result.error["unstarted"] = True  # type: ignore[index]
    return result


def _write_spec(spec: TaskSpec) -> _Files:
    """The spec as a file, for a task started as a command (a forked one gets it
    in its request)."""
    base = _files(spec, made=True)
    base.with_suffix(".spec.json").write_text(json.dumps(spec.to_dict()))
    return base


_made: set[Path] = set()  # task directories known to exist


def _files(spec: TaskSpec, made: bool = False) -> _Files:
    """Where an attempt's files go; ``made``: its directory exists (made once)."""
    which = "split" if spec.split else spec.item if spec.item is not None else "app"
    base = Store(spec.run_dir).attempt(spec.app, str(which), spec.attempt, "")
    if made and base.parent not in _made:
        base.parent.mkdir(parents=True, exist_ok=True)
        _made.add(base.parent)
    return _Files(base)


class _Files:
    """The files of one attempt: ``BASE.spec.json``, ``BASE.result.json``, ``BASE.log``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def with_suffix(self, suffix: str) -> Path:
        return self.base.parent / (self.base.name + suffix)


class _Task:
    def __init__(self) -> None:
        self.pid = 0
        self.status: int | None = None
        self.orphaned = False  # its zygote died before it reported the task's end
        self.started = threading.Event()
        self.done = threading.Event()


def _where(spec: TaskSpec) -> Any:
    """Which zygote a task forks from: this machine's, or one per container and run."""
    if spec.container is None:
        return None
    return (Container.from_dict(spec.container).key, spec.run_dir, spec.cwd)


def _host_command(preload: tuple[str, ...]) -> _Command:
    return _Command([sys.executable, "-m", "nbpipe.execution.zygote", *preload])


class _Command:
    """How a zygote is started, and what is left to remove once it has ended."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    def cleanup(self, clean_exit: bool) -> None:
        pass


class _ContainerCommand(_Command):
    """A zygote in a long-lived container: the notebook and run directories at the
    same paths as here; the runtime removes the container when the zygote ends."""

    def __init__(self, spec: TaskSpec, preload: tuple[str, ...], name: str) -> None:
        container = Container.from_dict(spec.container or {}).here()
        self.container = Container(**{**container.to_dict(),
                                      "mounts": tuple(dict.fromkeys((*container.mounts, spec.run_dir)))})
        self.name = name
        prepare_launch(self.container)
        # The zygote watches this process too, should the runtime keep the container's
        # input open once this process is gone (see zygote._Driver).
        env = {"NBPIPE_DRIVER": f"{os.getpid()}:{process_start(os.getpid())}"}
        if self.container.fresh_home:  # IPython, matplotlib and others write to HOME
            home = Store(spec.run_dir).container_home
            home.mkdir(parents=True, exist_ok=True)
            env["HOME"] = str(home)
        super().__init__(launch_argv(self.container, name, spec.cwd,
                                     ["python3", "-m", "nbpipe.execution.zygote", *preload], env,
                                     {"nbpipe.run": Path(spec.run_dir).name}))

    def cleanup(self, clean_exit: bool) -> None:
        if not clean_exit:  # the runtime's client was killed: the container may live on
            stop_container(self.container, self.name)


class _Zygote:
    """The driver's side of :mod:`.zygote`: one reader thread resolves the tasks."""

    def __init__(self, command: _Command, restarted: bool = False) -> None:
        self.restarted = restarted
        self._command: _Command | None = command
        self._proc = subprocess.Popen(command.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      start_new_session=True)
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._reader = threading.Thread(target=self._read, name="nbpipe-zygote", daemon=True)
        self._reader.start()

    def run(self, spec: dict[str, Any], result: str, log: str) -> _Task:
        return self.run_many([(spec, result, log)])

    def run_many(self, tasks: list[tuple[dict[str, Any], str, str]]) -> _Task:
        """Fork one child that runs ``tasks`` (a spec, the paths of its result and
        log) one after another."""
        task = _Task()
        with self._lock:
            self._count += 1
            key = str(self._count)
            self._tasks[key] = task
            request = {"op": "run", "key": key, "tasks": [list(paths) for paths in tasks]}
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                task.orphaned = True
                task.status = -1
                task.started.set()
                task.done.set()
        return task

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = _message(line)
            key = message.get("key", "")
            task = self._tasks.get(key)
            if task is None:
                continue
            if "pid" in message:
                task.pid = message["pid"]
                task.started.set()
            if "exit" in message:
                task.status = message["exit"]
                with self._lock:  # a long-lived worker runs many tasks: keep only live ones
                    self._tasks.pop(key, None)
                task.done.set()
        # The zygote is gone: nothing will report on the tasks still waiting. Its
        # children run on, orphans: stop them (they save what they printed).
        with self._lock:
            waiting = [task for task in self._tasks.values() if not task.done.is_set()]
        for task in waiting:
            if task.pid:
                _stop_orphan(task.pid)
            task.orphaned = True
            task.status = -1
            task.started.set()
            task.done.set()

    def alive(self) -> bool:
        return self._proc.poll() is None

    def death(self, started: bool) -> str:
        """Why a task of this zygote ended without a result, once the zygote died."""
        status = self._proc.poll()
        how = _died(status).replace("the app's process", "the zygote (the preloaded process that forks "
                                    "the apps)") if status is not None else "the zygote's pipe closed"
        what = "; the app was stopped" if started else "; the app did not start"
        again = "" if not self.restarted else f" (it was restarted {ZYGOTE_RESTARTS} time(s) already)"
        return how + again + what

    def kill_children(self) -> None:
        with self._lock:
            live = list(self._tasks.values())
        for task in live:
            if task.pid and not task.done.is_set():
                _kill_group(task.pid, task.done)

    def close(self) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        clean = stop.wait_process(self._proc)
        if not clean:
            self.kill_children()
            self._proc.kill()
            self._proc.wait()
        if self._command is not None:
            command, self._command = self._command, None
            command.cleanup(clean and self._proc.returncode == 0)
        self._reader.join(timeout=GRACE_SECONDS)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _message(line: bytes) -> dict[str, Any]:
    """A line of the zygote's protocol; anything else (an image whose Python greets on
    stdout when it starts, before the zygote owns its stdout) is no message."""
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _died(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"the app's process was killed by {signal.Signals(-returncode).name}"
    return f"the app's process exited with status {returncode} before it wrote its result"


def _printed(base: _Files) -> str:
    """What a task that died printed last (its log), to show with the failure."""
    log = base.with_suffix(".log")
    text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    return f"; it printed last:\n{text}" if text.strip() else ""


def _stop_orphan(pid: int) -> None:
    """Stop a task whose zygote died: SIGTERM (it saves what it printed), then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while _running(pid) and time.monotonic() < deadline and not stop.hurried():
        time.sleep(0.05)
    _kill_leftovers(pid)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (an orphan is reaped by init; a zombie does not count)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return True  # no /proc here: alive, as os.kill said
    except OSError:
        return False


def _too_long(spec: TaskSpec) -> str:
    return f"app {spec.app!r} ran longer than its timeout of {spec.timeout:g} s"


def _kill_group(pid: int, done: threading.Event | None = None) -> None:
    """Stop a forked task and whatever it started (it leads its own session).

    SIGTERM first, so the task can save the outputs it has. After the grace
    period (cut short by a second Ctrl-C) a task still running caught the
    interrupt: a second SIGTERM makes it save what it printed and exit. Then
    SIGKILL for whatever is left of the group.
    """
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    if done is not None and not stop.wait(done, GRACE_SECONDS):
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        done.wait(LAST_WORDS_SECONDS)
    # Also a process the app was starting when SIGTERM came (it missed the
    # signal, and its parent is gone).
    _kill_leftovers(pid)
    if done is not None:
        done.wait()


def _kill_leftovers(pgid: int) -> None:
    """SIGKILL whatever is left in the process group a finished task led."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker and everything it started (its kernel runs in a session of its own)."""
    family = _descendants(proc.pid)
    for wait in (GRACE_SECONDS, LAST_WORDS_SECONDS):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if stop.wait_process(proc, wait if not stop.hurried() else LAST_WORDS_SECONDS):
            break
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
