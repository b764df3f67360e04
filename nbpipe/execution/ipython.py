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

import sys
from typing import Any

from papermill.engines import Engine, NotebookExecutionManager

from ..compile import INTERNAL_TAG
from .shell import make_shell, new_task, reset, run_cell

__all__ = ["IPythonEngine", "make_shell"]

_used = False  # whether a task ran in this process's shell already


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
            reset(shell)
        _used = True
        new_task()
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
                outputs, failed = run_cell(shell, cell.source, cell.outputs, store_history=count is not None)
                cell.outputs, cell.execution_count = outputs, count
                if failed and "raises-exception" not in cell.metadata.get("tags", []):
                    nb_man.cell_exception(cell, cell_index=index, exception=RuntimeError("cell raised"))
                    break
            finally:
                nb_man.cell_complete(cell, cell_index=index)


def planned_counts(nb: Any) -> list[int | None]:
    """The execution count each cell of a task notebook runs with; None: no count.

    A cell copied from the source notebook carries its count in the merged
    notebook (``metadata.nbpipe.count``, papermill's numbering of the whole
    notebook), so ``In``, ``Out`` and ``_N`` are those of a serial run. The
    load and save steps run without a count and leave no history. papermill's
    ``injected-parameters`` cell counts only when it sets a parameter of the
    user's (not just nbpipe's run context), shifting the cells below it, as it
    does in a serial papermill run. Any other cell takes the next count, so a
    plain notebook is numbered as a kernel numbers it.
    """
    from ..runtime import CONTEXT_NAME

    task = "nbpipe_task" in nb.metadata
    user_parameters = set(nb.metadata.get("papermill", {}).get("parameters", {})) - {CONTEXT_NAME}
    counts: list[int | None] = []
    shift, last = 0, 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        planned = cell.metadata.get("nbpipe", {}).get("count")
        if cell.cell_type != "code" or not cell.source.strip() or INTERNAL_TAG in tags:
            counts.append(None)
        elif "injected-parameters" in tags and task:
            counts.append(last + 1 if user_parameters else None)
            shift = 1 if user_parameters else 0
        else:
            last = planned + shift if planned is not None else last + 1
            counts.append(last)
    return counts


def serial_history(nb: Any, counts: list[int | None]) -> dict[int, str]:
    """Count -> source of the cells a serial run executes before this app's last
    cell (``metadata.nbpipe_task.history``), numbered as :func:`planned_counts`
    numbers them: shifted by the ``injected-parameters`` cell when it counts."""
    history = {int(k): v for k, v in nb.metadata.get("nbpipe_task", {}).get("history", {}).items()}
    injected = [i for i, cell in enumerate(nb.cells)
                if "injected-parameters" in cell.metadata.get("tags", []) and counts[i] is not None]
    if not history or not injected:
        return history
    at = counts[injected[0]]
    assert at is not None
    shifted = {count + (count >= at): source for count, source in history.items()}
    shifted[at] = nb.cells[injected[0]].source
    return shifted


def set_count(shell: Any, count: int, history: dict[int, str]) -> None:
    """Make the next cell run as ``In[count]``.

    The input history is filled up to it with the sources a serial run executed
    there (``history``: count -> source, of other apps' cells), stored as
    IPython stores a cell's input, so ``_i``, ``_ii``, ``_iii`` and ``_iN`` follow.
    """
    shell.execution_count = count
    manager = shell.history_manager
    parsed, raw = manager.input_hist_parsed, manager.input_hist_raw
    if len(raw) > count:
        del parsed[count:], raw[count:]
    while len(raw) < count:
        source = history.get(len(raw), "")
        manager.store_inputs(len(raw), shell.transform_cell(source) if source else "", source)
