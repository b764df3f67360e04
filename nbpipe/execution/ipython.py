"""The ``ipython`` engine: cells run in an in-process IPython shell.

A papermill engine (registered as ``nbpipe`` on papermill's
``papermill.engine`` entry point) that executes a task notebook's cells in an
:class:`IPython.core.interactiveshell.InteractiveShell` of the current
process and records the outputs a Jupyter kernel would send: ``stream``
(stdout, stderr), ``display_data`` (HTML, Markdown, matplotlib PNG through the
inline backend), ``execute_result`` and ``error``. No kernel is started, so an
app costs milliseconds.

Isolation comes from the process: the ``local`` site forks a fresh child of a
preloaded parent for every app (:mod:`.zygote`), so nothing one app does to
modules, ``sys.path``, the working directory, the environment or random state
reaches the next.
"""

from __future__ import annotations

import copy
import io
import os
import sys
from typing import Any

from nbformat import v4
from papermill.engines import Engine, NotebookExecutionManager

__all__ = ["IPythonEngine", "make_shell"]

_shell: Any = None
_used = False  # whether a task ran in this process's shell already


def mark_fresh() -> None:
    """Declare the shell pristine (after the zygote's warm-up, before it forks)."""
    global _used
    _used = False


def make_shell() -> Any:
    """Create (once per process) the shell that cells run in, set up like ipykernel's."""
    global _shell
    if _shell is not None:
        return _shell
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data: Any, metadata: Any = None, source: Any = None, *,
                    transient: Any = None, update: bool = False, **kwargs: Any) -> None:
            _recorder.display(data, metadata or {}, transient or {}, update)

        def clear_output(self, wait: bool = False) -> None:
            _recorder.clear(wait)

    class Hook(DisplayHook):
        def start_displayhook(self) -> None:
            pass

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: Any, md_dict: Any = None) -> None:
            _recorder.result(format_dict, md_dict or {}, self.prompt_count)

        def finish_displayhook(self) -> None:
            pass

    class Shell(InteractiveShell):
        def _showtraceback(self, etype: Any, evalue: Any, stb: Any) -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            _recorder.error(str(etype.__name__), str(evalue), list(stb))

    config = Config()
    config.HistoryManager.enabled = False  # no history thread: this process forks
    # ipykernel selects the inline backend the same way, so figures come out as PNG.
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    shell = Shell.instance(config=config, display_pub_class=Publisher, displayhook_class=Hook)
    _shell = shell
    return shell


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr during a cell: text becomes ``stream`` outputs."""

    def __init__(self, name: str, real: Any) -> None:
        self.name_ = name
        self.real = real

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self.real.fileno())

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if text:
            _recorder.stream(self.name_, text)
        return len(text)


class _Recorder:
    """Collects the outputs of the cell being executed, in order."""

    def __init__(self) -> None:
        self.outputs: list[Any] = []
        self.clear_pending = False
        #: display id -> the outputs that show it, across the cells of one task
        self.displays: dict[str, list[Any]] = {}

    def _append(self, output: Any) -> None:
        if self.clear_pending:
            self.outputs.clear()
            self.clear_pending = False
        self.outputs.append(output)

    def stream(self, name: str, text: str) -> None:
        last = self.outputs[-1] if self.outputs and not self.clear_pending else None
        if last is not None and last.output_type == "stream" and last.name == name:
            last.text += text  # nbclient coalesces consecutive stream messages too
        else:
            self._append(v4.new_output("stream", name=name, text=text))

    def display(self, data: Any, metadata: Any, transient: Any, update: bool) -> None:
        display_id = transient.get("display_id")
        if display_id:
            # As nbclient does: every output already showing this display id, in
            # any cell of the task, takes the new data.
            for out in self.displays.get(display_id, []):
                out.data, out.metadata = copy.deepcopy(data), copy.deepcopy(metadata)
        if update:
            return
        out = v4.new_output("display_data", data=data, metadata=metadata)
        self._append(out)
        if display_id:
            self.displays.setdefault(display_id, []).append(out)

    def result(self, data: Any, metadata: Any, count: int) -> None:
        self._append(v4.new_output("execute_result", data=data, metadata=metadata,
                                   execution_count=count))

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        self._append(v4.new_output("error", ename=ename, evalue=evalue, traceback=traceback))

    def clear(self, wait: bool) -> None:
        if wait:
            self.clear_pending = True
        else:
            self.outputs.clear()


_recorder = _Recorder()


def run_cell(shell: Any, source: str, outputs: list[Any] | None = None) -> tuple[list[Any], int, bool]:
    """Run one cell; return its outputs, its execution count and whether it raised.

    Outputs are appended to ``outputs`` as they come, so a notebook saved while
    the cell runs (or when it is stopped) shows what it printed so far.
    """
    _recorder.outputs = outputs if outputs is not None else []
    _recorder.clear_pending = False
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Stream("stdout", real_out), _Stream("stderr", real_err)
    try:
        count = shell.execution_count
        result = shell.run_cell(source, store_history=True)
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    outputs = _recorder.outputs
    failed = result.error_before_exec is not None or result.error_in_exec is not None
    return outputs, count, failed


class _Manager(NotebookExecutionManager):  # type: ignore[misc]
    """papermill's manager writes the notebook at every cell start and end; here at
    most once a second (papermill writes it once more when the run ends), so a
    small app is not dominated by notebook writes and a stopped app loses at
    most a second of outputs."""

    SAVE_EVERY = 1.0

    def save(self, **kwargs: Any) -> None:
        if (self.now() - self.last_save_time).total_seconds() >= self.SAVE_EVERY:
            super().save(**kwargs)


class IPythonEngine(Engine):
    """papermill engine running cells in this process's IPython shell."""

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: Any, output_path: Any = None,
                         progress_bar: bool = True, log_output: bool = False,
                         autosave_cell_every: int = 30, **kwargs: Any) -> Any:
        nb_man = _Manager(nb, output_path=output_path, progress_bar=progress_bar,
                          log_output=log_output, autosave_cell_every=autosave_cell_every)
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: Any, **kwargs: Any) -> None:
        global _used
        shell = make_shell()
        if _used:
            # A second task in this process (the in-process executor of --debug):
            # start from a clean namespace, as a forked app does.
            shell.reset(new_session=False)
            shell.execution_count = 1
        _used = True
        _recorder.displays = {}
        if os.getcwd() not in sys.path:
            # A kernel starts in the notebook's directory with it on sys.path, so a
            # module beside the notebook (or one a %%writefile cell wrote) imports.
            sys.path.insert(0, os.getcwd())
        nb_man.nb.metadata.setdefault("language_info", {
            "name": "python", "version": sys.version.split()[0], "mimetype": "text/x-python",
            "file_extension": ".py", "codemirror_mode": {"name": "ipython", "version": 3},
            "pygments_lexer": "ipython3", "nbconvert_exporter": "python"})
        for index, cell in enumerate(nb_man.nb.cells):
            if cell.cell_type != "code":
                continue
            nb_man.cell_start(cell, index)
            try:
                if not cell.source.strip():
                    continue
                cell.outputs = []
                outputs, count, failed = run_cell(shell, cell.source, cell.outputs)
                cell.outputs, cell.execution_count = outputs, count
                if failed and "raises-exception" not in cell.metadata.get("tags", []):
                    nb_man.cell_exception(cell, cell_index=index, exception=RuntimeError("cell raised"))
                    break
            finally:
                nb_man.cell_complete(cell, cell_index=index)
