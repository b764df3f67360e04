"""The ``ipython`` engine: cells run in an in-process IPython shell.

A papermill engine (registered as ``nbpipe`` on papermill's
``papermill.engine`` entry point) that executes a task notebook's cells in
the in-process shell of :mod:`.shell`, set up like ipykernel's, and records
the outputs a Jupyter kernel would send: ``stream`` (stdout, stderr),
``display_data`` (HTML, Markdown, matplotlib PNG through the inline backend),
``execute_result`` and ``error``. No kernel is started, so an app costs
milliseconds. Each cell copied from the source notebook runs with the
execution count it has in the merged notebook; the load and save steps run
without one.

Isolation comes from the process: the ``local`` site forks a fresh child of a
preloaded parent for every app (:mod:`.zygote`), so nothing one app does to
modules, ``sys.path``, the working directory, the environment or random state
reaches the next.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from papermill.engines import Engine, NotebookExecutionManager

from .counts import planned_counts, serial_history, set_count
from .shell import make_shell, new_task, reset, run_cell

__all__ = ["IPythonEngine", "make_shell", "save_partial"]

_used = False  # whether a task ran in this process's shell already
_running: Any = None  # the notebook manager of the task running in this process


def save_partial() -> None:
    """Write the running task's notebook with what it printed so far, now.

    For an app that caught the interrupt and would not stop: the driver is
    about to kill it (:func:`nbpipe.execution.task.main`).
    """
    if _running is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        NotebookExecutionManager.save(_running)


def mark_fresh() -> None:
    """Declare the shell pristine (after the zygote's warm-up, before it forks)."""
    global _used
    _used = False


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
        global _running
        _running = nb_man
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: Any, stdout_file: Any = None,
                                 stderr_file: Any = None, **kwargs: Any) -> None:
        global _used
        shell = make_shell()
        if _used:
            # A second task in this process (the in-process executor of --debug):
            # start from a clean namespace, as a forked app does.
            reset(shell)
        _used = True
        new_task(mark_displays="nbpipe_task" in nb_man.nb.metadata,
                 stdout_file=stdout_file, stderr_file=stderr_file)
        if os.getcwd() not in sys.path:
            # A kernel starts in the notebook's directory with it on sys.path, so a
            # module beside the notebook (or one a %%writefile cell wrote) imports.
            sys.path.insert(0, os.getcwd())
        nb = nb_man.nb
        nb.metadata.setdefault("language_info", {
            "name": "python", "version": sys.version.split()[0], "mimetype": "text/x-python",
            "file_extension": ".py", "codemirror_mode": {"name": "ipython", "version": 3},
            "pygments_lexer": "ipython3", "nbconvert_exporter": "python"})
        counts = planned_counts(nb)
        history = serial_history(nb, counts)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            nb_man.cell_start(cell, index)
            try:
                if not cell.source.strip():
                    continue
                cell.outputs = []
                count = counts[index]
                if count is not None:
                    set_count(shell, count, history)
                cell.execution_count = count  # as a kernel's execute_input sets it: a stopped cell has one
                outputs, failed = run_cell(shell, cell.source, cell.outputs, store_history=count is not None)
                cell.outputs, cell.execution_count = outputs, count
                if failed and "raises-exception" not in cell.metadata.get("tags", []):
                    nb_man.cell_exception(cell, cell_index=index, exception=RuntimeError("cell raised"))
                    break
            finally:
                nb_man.cell_complete(cell, cell_index=index)
