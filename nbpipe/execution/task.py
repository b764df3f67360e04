"""Run one task notebook through papermill, in a real Jupyter kernel.

:func:`run_task` is what every executor calls, in whatever process it owns.
Run as ``python -m nbpipe.execution.task SPEC.json RESULT.json`` it is the
body of one worker process of the ``local`` site.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .base import AppStatus, TaskResult, TaskSpec

__all__ = ["run_task"]


def run_task(spec: TaskSpec) -> TaskResult:
    """Execute ``spec.notebook`` to ``spec.output`` and report how it went."""
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    from ..digest import read_report
    from ..runtime import CONTEXT_NAME
    from ..store import Store

    start = time.time()
    status, error = AppStatus.COMPLETED, None
    before = _output_stats(spec)
    context = {"run_dir": spec.run_dir, "app": spec.app, "item": spec.item, "maps": spec.maps,
               "sources": spec.sources, "watch": spec.watch}
    report = Store(spec.run_dir).mutation_report(spec.app, spec.item)
    report.unlink(missing_ok=True)
    parameters = {**spec.parameters, CONTEXT_NAME: context}
    engine: dict[str, Any] = {}
    log = _output_log(spec)
    if log is not None:
        engine.update(stdout_file=log, stderr_file=log)
    try:
        executed = _run(spec, parameters, engine)
        error = _clean_exit(executed)
    except PapermillExecutionError as exc:
        status = AppStatus.FAILED
        error = {"ename": exc.ename, "evalue": exc.evalue, "cell": _failed_source_index(spec.output)}
        if error["cell"] is not None:  # a cell of the notebook, not a generated step
            error.update(_frame(exc))
    except CellTimeoutError:
        status = AppStatus.TIMED_OUT
        error = {"ename": "TimeoutError",
                 "evalue": f"app {spec.app!r} ran longer than its timeout of {spec.timeout:g} s"}
    except KeyboardInterrupt:
        status = AppStatus.FAILED
        error = {"ename": "KeyboardInterrupt", "evalue": "the run was interrupted"}
    except Exception as exc:  # a kernel that dies or cannot start is the app's failure
        status = AppStatus.FAILED
        error = {"ename": type(exc).__name__, "evalue": str(exc)}
    finally:
        if log is not None:
            log.close()
    if status is AppStatus.COMPLETED and error is None:
        error = _unwritten_output(spec, before)
        status = AppStatus.FAILED if error else status
    output = spec.output if Path(spec.output).exists() else None
    from .remote import batch_job_id

    return TaskResult(spec.app, status, start, time.time(), socket.gethostname(), spec.attempt,
                      output, error, batch_job_id(), read_report(report))


def _run(spec: TaskSpec, parameters: dict[str, Any], engine: dict[str, Any]) -> Any:
    """The task notebook executed: in this process's shell (``ipython``), else in a
    kernel through ``papermill.execute_notebook``."""
    if spec.engine == "ipython":
        import papermill.engines

        from .ipython import IPythonEngine, execute

        papermill.engines.papermill_engines.register("nbpipe", IPythonEngine)
        return execute(spec.notebook, spec.output, parameters=parameters, cwd=spec.cwd,
                       kernel_name=spec.kernel_name, **engine)
    return _execute(
        spec.notebook,
        spec.output,
        parameters=parameters,
        kernel_name=spec.kernel_name,
        cwd=spec.cwd,
        progress_bar=False,
        log_output=False,
        # Outputs of finished cells survive a timeout or an interrupt.
        request_save_on_cell_execute=True,
        # papermill's execution_timeout is per cell: give each cell what is left of the app's.
        timeout_func=_AppDeadline(spec.timeout) if spec.timeout else None,
        **engine,
    )


#: What jupyter_client raises when a kernel exits or stays silent before its
#: first reply. Kernels started side by side can race for the same free TCP
#: port (papermill#511); no cell has run yet, so starting again is safe.
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond in")

#: How many times a task starts its kernel before the failure is the app's.
KERNEL_STARTS = 3


def _execute(notebook: str, output: str, **options: Any) -> Any:
    """``papermill.execute_notebook``, starting the kernel again when it fails to start."""
    import papermill

    if _is_ipykernel(options.get("kernel_name")):
        # Kernels started in the same second share IPython's history database and
        # print "Session/line number was not unique" into an app's output.
        options["extra_arguments"] = ["--HistoryManager.enabled=False"]
    for start in range(1, KERNEL_STARTS + 1):
        try:
            return papermill.execute_notebook(notebook, output, **options)
        except RuntimeError as exc:
            if start == KERNEL_STARTS or not str(exc).startswith(KERNEL_START_FAILURES):
                raise
            time.sleep(0.1 * start)


def _output_log(spec: TaskSpec) -> Any:
    """With ``-v``: the file the cells' printed text is appended to as it comes
    (papermill's ``stdout_file``/``stderr_file``; both engines honour them)."""
    if not spec.verbose:
        return None
    from ..store import Store

    path = Store(spec.run_dir).output_log(spec.app, spec.item, spec.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8", errors="replace")


#: The head of a cell's frame in IPython's traceback (``Cell In[5], line 3``).
_CELL_FRAME = re.compile(r"^\s*Cell In\[(\d+)\], line (\d+)", re.M)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _frame(exc: Any) -> dict[str, Any]:
    """Where in the failing cell the error was raised: its execution count (the
    ``In [N]`` the reader sees), the 1-based line and that line's text, from
    the cell's frame in IPython's traceback. The text is the cell's own line
    (a traceback shows ``%time x`` as IPython's translation)."""
    count = exc.exec_count if isinstance(exc.exec_count, int) else None
    text = _ANSI.sub("", "\n".join(str(part) for part in exc.traceback or ()))
    frames = [(int(n), int(line)) for n, line in _CELL_FRAME.findall(text)]
    line = next((line for n, line in frames if n == count), frames[0][1] if frames else None)
    found: dict[str, Any] = {"count": count}
    lines = str(exc.source or "").splitlines()
    if line is not None and 1 <= line <= len(lines):
        found.update(line=line, source=lines[line - 1].strip())
    return found


def _is_ipykernel(name: str | None) -> bool:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec(name or "python3").argv
    except (NoSuchKernel, OSError, ValueError):
        return False
    return any("ipykernel" in arg for arg in argv)


def _clean_exit(nb: Any) -> dict[str, Any] | None:
    """``SystemExit`` with no code or code 0 in a cell (``sys.exit()``, ``raise SystemExit``):
    papermill stops the notebook there and calls the run a success. The error, with the
    source notebook's index of that cell, tells the scheduler that serial execution stops here."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and out.get("ename") == "SystemExit":
                source = cell.metadata.get("nbpipe", {}).get("source")
                return {"ename": "SystemExit", "evalue": out.get("evalue", ""),
                        "cell": int(source["index"]) if source else None}
    return None


class _AppDeadline:
    """nbclient asks this for each cell's timeout: what is left of the app's
    ``timeout:``, counted from the first cell (not while the kernel starts).
    When it passes, nbclient raises ``CellTimeoutError`` and shuts the kernel down."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end: float | None = None

    def __call__(self, cell: Any) -> float:
        if self.end is None:
            self.end = time.monotonic() + self.seconds
        return max(self.end - time.monotonic(), 0.001)  # 0 would mean no timeout


Stats = dict[str, dict[str, tuple[int, ...]]]


def _output_stats(spec: TaskSpec) -> Stats:
    """``outputs:`` pattern -> each existing file it matches -> what shows a write to it."""
    stats: Stats = {}
    for pattern in spec.outputs:
        found = stats.setdefault(pattern, {})
        for path in glob.glob(str(Path(spec.cwd) / pattern)):
            try:
                st = Path(path).stat()
            except OSError:
                continue
            found[path] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return stats


def _unwritten_output(spec: TaskSpec, before: Stats) -> dict[str, str] | None:
    """The error for the first ``outputs:`` pattern that matches no file the app
    wrote: a file that existed before the app ran and is unchanged does not count
    (it is compared, never deleted)."""
    for pattern, found in _output_stats(spec).items():
        if any(before[pattern].get(path) != stat for path, stat in found.items()):
            continue
        stale = f"; {min(found)} existed before the app ran and the app did not change it" if found else ""
        return {"ename": "MissingOutputError",
                "evalue": f"app {spec.app!r} declared outputs:{pattern} but did not write "
                          f"{Path(spec.cwd) / pattern}{stale}"}
    return None


def _failed_source_index(output: str) -> int | None:
    """The source notebook's index of the cell that failed in an executed task notebook.

    papermill's ``cell_index`` counts the banner cells it inserts, so look the
    cell up by its status instead.
    """
    try:
        cells = json.loads(Path(output).read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return None
    for cell in cells:
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            source = cell["metadata"].get("nbpipe", {}).get("source")
            # None when a generated step (load or save) failed
            return int(source["index"]) if source else None
    return None


_interrupts = 0


def _interrupted(signum: int, frame: Any) -> None:
    """The first SIGTERM interrupts the running cell; papermill saves and ends the
    task. A second one comes when the app caught the first and went on: save
    what it printed so far and exit, before the driver's SIGKILL."""
    global _interrupts
    _interrupts += 1
    if _interrupts == 1:
        raise KeyboardInterrupt
    if "nbpipe.execution.ipython" in sys.modules:
        try:
            sys.modules["nbpipe.execution.ipython"].save_partial()
        finally:
            os._exit(1)


def interrupted() -> bool:
    """Whether a SIGTERM came while a task ran (a batch then starts no further task)."""
    return _interrupts > 0


def main(argv: list[Any], handle_sigterm: bool = True) -> int:
    """Run a task: ``argv`` is its spec (a dict, or the path of its JSON) and the
    path its result is written to."""
    given, result_path = argv
    if handle_sigterm:
        # The driver stops a task with SIGTERM; turning it into KeyboardInterrupt
        # lets papermill save what ran and shut its kernel down.
        signal.signal(signal.SIGTERM, _interrupted)
    spec = TaskSpec(**(given if isinstance(given, dict) else json.loads(Path(given).read_text())))
    result = run_task(spec)
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result.to_dict()))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
