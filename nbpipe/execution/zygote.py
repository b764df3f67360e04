"""A preloaded parent that forks one child per task (the ``ipython`` engine).

The zygote imports papermill, IPython and every module the notebook imports
(in any cell), creates the IPython shell once, and then waits for requests on
stdin. For each task it forks: the child starts a new session, runs the task
notebook through papermill with the in-process engine, writes its result and
exits. A fork costs milliseconds and gives every app a pristine copy of the
preloaded process, so no state leaks from one app to the next.

Protocol, one JSON object per line.
driver -> zygote: ``{"op": "run", "key": K, "spec": PATH, "result": PATH, "log": PATH}``.
zygote -> driver: ``{"ready": true}`` once, then ``{"key": K, "pid": PID}`` and
``{"key": K, "exit": STATUS}`` for each task. The zygote exits at end of input
once its children have.

The driver holds the only write end of the zygote's stdin, so its end of
input is the driver's end, however the driver ends (Ctrl-C, SIGKILL, a batch
job cancelled). The zygote watches for it from its first moment: starting up
(imports, preloading) can take many seconds, and a zygote orphaned meanwhile
exits at once instead of finishing its start. Requests still buffered when
the driver is gone are not started.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _child(request: dict[str, Any], inherited: list[int], forgotten: frozenset[str]) -> None:
    """In the forked child: run the request's tasks one after another, write each
    one's result, never return. A batch's later tasks start from the state the
    fork left (:mod:`.fresh`); an interrupted task ends the batch."""
    status = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in inherited:  # the zygote's pipes: its driver must see them close when it dies
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        sys.stdin = open(0, closefd=False)
        from . import shell, task
        from .fresh import Fresh

        shell.echo = True
        tasks = request.get("tasks") or [[request["spec"], request["result"], request["log"]]]
        fresh = Fresh(forgotten) if len(tasks) > 1 else None
        for number, (spec, result, log) in enumerate(tasks):
            if number and fresh is not None:
                fresh.restore()
            _log_to(log)
            # ``random`` reseeds itself after a fork; numpy's global generator does
            # not, and parallel apps must not draw the same "random" numbers.
            if number == 0 and "numpy" in sys.modules:
                sys.modules["numpy"].random.seed()
            # SIGTERM (a timeout, Ctrl-C in the driver) interrupts the running cell, so
            # papermill still writes what the app printed before it was stopped.
            status = task.main([spec, result])
            if task.interrupted():
                break
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _log_to(path: str) -> None:
    """Send what this process prints (fds 1 and 2, and sys.stdout/stderr) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if not getattr(sys.stdout, "_nbpipe_log", False):
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdout._nbpipe_log = sys.stderr._nbpipe_log = True  # type: ignore[attr-defined]


def _warm_up(shell: Any) -> None:
    """Run one throw-away task so that every child inherits warm code paths.

    The first papermill run and the first cell of a shell pay for lazy imports
    and caches; paid here once instead of in every forked app.
    """
    import logging

    import papermill
    from nbformat import v4

    logging.getLogger("papermill").setLevel(logging.ERROR)
    # In memory: a zygote whose driver dies meanwhile exits at once and leaves no files.
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [v4.new_code_cell("warm = 1", metadata={"tags": ["parameters"]}),
                v4.new_code_cell("print(warm)\nwarm")]
    papermill.execute_notebook(nb, None, parameters={"warm": 2}, engine_name="nbpipe",
                               progress_bar=False, kernel_name="python3")
    from .ipython import mark_fresh
    from .shell import reset

    reset(shell)
    mark_fresh()


def _preload(modules: list[str]) -> frozenset[str]:
    """Import what the notebook imports, so that an app pays a fork, not an import.

    Nothing an import does may stop the zygote: a module that is missing, fails,
    or exits is left for the app that imports it to report. A Python module
    that prints or warns when imported is forgotten again (only it: what it
    imported stays, as re-running a C extension's Python parts could split
    its classes in two), so that the app importing it shows that output, as
    a serial run does.
    """
    import contextlib
    import io
    import warnings

    forgotten: set[str] = set()
    for name in modules:
        new = name not in sys.modules
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text), \
                warnings.catch_warnings(record=True) as caught:
            try:
                importlib.import_module(name)
            except (Exception, SystemExit):
                pass
        module = sys.modules.get(name)
        if new and (text.getvalue() or caught) and str(getattr(module, "__file__", "")).endswith(".py"):
            del sys.modules[name]
            forgotten.add(name)
    return frozenset(forgotten)


def _import_task_side() -> None:
    """Import what every task runs (the task function, the load and save steps
    and the shipping they use) once here, not in every forked child: importing
    them took a third of a trivial app's time), and the pickler they import when
    an app first ships a value."""
    for name in ("..digest", "..runtime", "..serializers", "..sharing", "..store", ".counts", ".remote", ".task"):
        importlib.import_module(name, __package__)
    importlib.import_module("cloudpickle")


def _hung_up(fd: int, timeout_ms: int = 0) -> bool:
    """Whether every write end of the pipe ``fd`` is closed, without reading it."""
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: only a hang-up (or an error) is reported
    return bool(poller.poll(timeout_ms))


class _StartWatch:
    """While the zygote starts, a thread that ends it as soon as its driver is gone.

    Nothing needs saving then: no task has started. The thread is stopped
    before the first fork, so that children are forked from one thread.
    """

    def __init__(self) -> None:
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="nbpipe-zygote-start", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(0, 0)
        poller.register(self._stop_r, select.POLLIN)
        if any(fd == 0 for fd, _ in poller.poll()):
            os._exit(0)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)


def _signal_children(children: dict[int, str], sig: int) -> None:
    for pid in children:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class _Driver:
    """The process this zygote works for, when it runs in a container.

    There the driver's pipe passes through the runtime (podman's client and
    conmon), which outlives a cancelled batch job: the job's processes are
    killed, a container podman started is not. Should the runtime keep the
    pipe open when the driver is gone, the zygote would wait for ever; so it
    also watches the driver's pid (the container shares the host's pids), with
    its start time against a recycled pid: ``NBPIPE_DRIVER=PID:START``.
    """

    def __init__(self, value: str) -> None:
        pid, _, start = value.partition(":")
        self.pid, self.start = (int(pid), start) if pid.isdigit() else (0, "")
        self.period = 1.0 if self.pid else None

    def gone(self) -> bool:
        return bool(self.pid) and process_start(self.pid) != self.start


def process_start(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, from /proc), or "" if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else ""


def main() -> int:
    driver = _Driver(os.environ.pop("NBPIPE_DRIVER", ""))
    watch = _StartWatch()
    # Imported here, once, so that every forked child has them for free.
    import papermill  # noqa: F401
    import papermill.engines

    from .ipython import IPythonEngine, make_shell

    papermill.engines.papermill_engines.register("nbpipe", IPythonEngine)
    _warm_up(make_shell())
    _import_task_side()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of preloaded modules must not corrupt the protocol
    forgotten = _preload(sys.argv[1:])

    def send(message: dict[str, Any]) -> None:
        try:
            out.write(json.dumps(message) + "\n")
            out.flush()
        except (BrokenPipeError, ValueError):
            pass  # the driver is gone; the apps are stopped all the same (eof)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    children: dict[int, str] = {}
    buffer = b""
    eof = False
    # Children inherit the preloaded heap copy-on-write; a garbage collection in a
    # child would touch (and so copy) every page of it. Freezing moves it out of
    # the collector's reach.
    watch.stop()
    gc.collect()
    gc.freeze()
    send({"ready": True})
    stop_at = None
    last_words = False
    while not eof or children:
        if eof and stop_at is None:
            # The driver is gone (a worker killed by its batch system, Ctrl-C):
            # stop the running apps rather than leave them behind.
            stop_at = time.monotonic() + 5.0
            _signal_children(children, signal.SIGTERM)
        if stop_at is not None and time.monotonic() > stop_at:
            # An app that caught the interrupt: a second SIGTERM saves what it
            # printed and ends it (see task.py); SIGKILL a second later.
            _signal_children(children, signal.SIGTERM if not last_words else signal.SIGKILL)
            stop_at, last_words = time.monotonic() + 1.0, True
        readable, _, _ = select.select([wake_r] + ([] if eof else [0]), [], [],
                                       0.5 if eof else driver.period)
        if wake_r in readable:
            os.read(wake_r, 4096)
        if not eof and driver.gone():
            eof, readable = True, []  # as when the pipe hangs up: nobody waits for these tasks
        if 0 in readable:
            chunk = os.read(0, 65536)
            eof = not chunk
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if lines and _hung_up(0):
                lines, eof = [], True  # the driver is gone: nobody waits for these tasks
            for line in lines:
                if not line.strip():
                    continue
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(request, [out.fileno(), wake_r, wake_w], forgotten)
                children[pid] = request["key"]
                send({"key": request["key"], "pid": pid})
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            key = children.pop(pid, None)
            _signal_children({pid: ""}, signal.SIGKILL)  # what the app started dies with it
            if key is not None:
                send({"key": key, "exit": os.waitstatus_to_exitcode(status)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
