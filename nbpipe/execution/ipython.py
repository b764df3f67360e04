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

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import nbformat
from papermill.engines import Engine, NotebookExecutionManager

from ..runtime import KERNEL_ONLY
from .counts import planned_counts, serial_history, set_count
from .shell import make_shell, new_task, reset, run_cell

__all__ = ["IPythonEngine", "execute", "make_shell", "save_partial"]

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
            self.write()

    def write(self) -> None:
        if self.output_path:
            _write(self.nb, self.output_path)
        self.last_save_time = self.now()

    def cell_complete(self, cell: Any, cell_index: Any = None, **kwargs: Any) -> None:
        """papermill's, with the duration from ``fromisoformat`` (papermill's dateutil
        parse was a twentieth of a short task)."""
        meta = cell.metadata.papermill
        end = self.now()
        meta["end_time"] = end.isoformat()
        if meta.get("start_time"):
            meta["duration"] = (end - datetime.datetime.fromisoformat(meta["start_time"])).total_seconds()
        if meta["status"] != self.FAILED:
            meta["status"] = self.COMPLETED
        self.save()

    def notebook_complete(self, **kwargs: Any) -> None:
        """papermill's; its final save is made whenever the last one was."""
        self.last_save_time = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        super().notebook_complete(**kwargs)  # its final save is due whatever the time


def execute(notebook: str, output: str, *, parameters: dict[str, Any], cwd: str,
            kernel_name: str | None = None, **engine: Any) -> Any:
    """``papermill.execute_notebook`` with this engine, less its per-notebook costs.

    The same steps, through papermill's own functions: parameterize the task
    notebook (the injected-parameters cell), record its paths, run it, raise
    :class:`~papermill.exceptions.PapermillExecutionError` for a cell's error
    (with papermill's error cells), write the executed notebook. What it leaves
    out: checking the notebook against nbformat's schema at each read and write
    (nbpipe wrote the task notebook; papermill's cells are built by nbformat),
    reading the same task notebook again for each item of a batch, and
    ``_infer_parameters``, which parses the parameters cell to warn about
    names it does not declare. On a trivial map item these were a third of
    the task's time. The executed notebook is written as compact JSON.
    """
    from papermill.execute import prepare_notebook_metadata, raise_for_execution_errors
    from papermill.utils import chdir

    nb = _parameterize(_read(notebook), parameters, kernel_name)
    nb = prepare_notebook_metadata(nb, notebook, output)
    with chdir(cwd):
        nb = IPythonEngine.execute_notebook(nb, kernel_name, output_path=output, progress_bar=False, **engine)
    raise_for_execution_errors(nb, output)  # the engine wrote the notebook as it ended
    return nb


_texts: dict[str, tuple[tuple[int, int], str]] = {}  # path -> (mtime, size), text: a batch's items share one


def _read(path: str) -> Any:
    """The task notebook, as papermill's ``load_notebook_node`` gives it, without the schema check."""
    from papermill import __version__

    st = os.stat(path)
    stamp = (st.st_mtime_ns, st.st_size)
    if path not in _texts or _texts[path][0] != stamp:
        _texts[path] = stamp, Path(path).read_text(encoding="utf-8")
    nb = nbformat.v4.upgrade(nbformat.v4.nbjson.reads(_texts[path][1]))
    nb.metadata.setdefault("papermill", {"default_parameters": {}, "parameters": {},
                                         "environment_variables": {}, "version": __version__})
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
        cell.metadata.setdefault("papermill", {})
    return nb


def _parameterize(nb: Any, parameters: dict[str, Any], kernel_name: str | None) -> Any:
    """papermill's ``parameterize_notebook``: its injected-parameters cell, in
    place of an earlier one, else after the parameters cell, else first; the
    cell built without nbformat's schema check (as long as a short cell's run)."""
    from papermill.engines import papermill_engines
    from papermill.translators import translate_parameters
    from papermill.utils import find_first_tagged_cell_index

    kernel = papermill_engines.nb_kernel_name("nbpipe", nb, kernel_name)
    language = papermill_engines.nb_language("nbpipe", nb)
    cell = nbformat.from_dict({
        "id": nbformat.v4.nbbase.random_cell_id(), "cell_type": "code", "execution_count": None,
        "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
        "source": translate_parameters(kernel, language, parameters, "Parameters")})
    injected = find_first_tagged_cell_index(nb, "injected-parameters")
    if injected >= 0:
        nb.cells[injected] = cell
    else:
        nb.cells.insert(find_first_tagged_cell_index(nb, "parameters") + 1, cell)
    nb.metadata.papermill["parameters"] = parameters
    return nb


def _write(nb: Any, path: str) -> None:
    """The notebook as JSON, without the schema check, and compact: a task
    notebook is read by the merge, and by Jupyter from a kept run directory.
    (nbformat's indented JSON, like ``json.dump``, goes through Python's
    encoder: 20 times the time of ``json.dumps``' C one.)"""
    text = json.dumps(nb, ensure_ascii=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


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
            if cell.cell_type != "code" or cell.metadata.get("nbpipe", {}).get(KERNEL_ONLY):
                continue  # (the kernel's numbering step: this engine numbers cells itself)
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
