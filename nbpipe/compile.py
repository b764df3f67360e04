"""App -> task notebook (pure).

A task notebook follows papermill's conventions: a numbering step, the
source's ``parameters`` cell (papermill injects ``injected-parameters`` after
it), the ``setup`` cells, the carried-state prelude (:mod:`.state`: settings
earlier cells changed), a load step, the app's own cells, and a save step.
Every cell copied from the source carries ``metadata.nbpipe.source = {"index",
"id"}`` so the merge can put its outputs back, and ``metadata.nbpipe.count``,
its execution count in a serial run, which it runs with (the ``ipython``
engine reads it; in a kernel the numbering step applies it). The hidden steps
(numbering, prelude, load, save) are tagged ``nbpipe-internal``: they take no
execution count and never reach the merged notebook.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

from .errors import UsageError
from .graph import AppNode, Pipeline, execution_counts
from .runtime import INTERNAL_TAG, KERNEL_ONLY
from .state import prelude_for

__all__ = ["INTERNAL_TAG", "KERNEL_ONLY", "compile_app", "compile_pipeline", "write_compiled"]


def compile_pipeline(pipeline: Pipeline, pull: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Return one task notebook per app, in the pipeline's order.

    A ``map:`` app has a second notebook, ``NAME.split``: its first step,
    which stores the elements of the iterable for the item tasks. ``pull``
    (app -> names, :func:`nbpipe.pull.plan`): the save step also ships these
    names for the driver (``--pull``).
    """
    out = {}
    for name in pipeline.order:
        app = pipeline.apps[name]
        if app.spec.map is not None:
            out[f"{name}.split"] = compile_app(pipeline, app, split=True)
        out[name] = compile_app(pipeline, app, pull=(pull or {}).get(name, ()))
    return out


def compile_app(pipeline: Pipeline, app: AppNode, split: bool = False,
                pull: list[str] | tuple[str, ...] = ()) -> Any:
    """Build the task notebook of one app (or of the split step of a map: app)."""
    parsed = pipeline.parsed
    source = parsed.nb
    nb = v4.new_notebook()
    nb.metadata = copy.deepcopy({k: v for k, v in source.metadata.items() if k != "nbpipe"})
    counts = execution_counts(parsed)
    last = max(app.spec.cells, default=0)
    # The cells a serial run executes before this app's last cell, by count: the
    # engine fills ``In`` and ``_iN`` with them, as a serial run has them.
    history = {counts[c.index]: c.source for c in parsed.cells if c.index in counts and c.index < last}
    nb.metadata["nbpipe_task"] = {"app": app.name, "history": history}

    def copy_cell(index: int, tags: list[str] | None = None) -> Any:
        original = source.cells[index]
        cell = v4.new_code_cell(original.source)
        cell.metadata = copy.deepcopy(dict(original.metadata))
        if tags is not None:
            cell.metadata["tags"] = tags
        cell.metadata["nbpipe"] = {"source": {"index": index, "id": original.id}}
        if index in counts:
            cell.metadata["nbpipe"]["count"] = counts[index]
        return cell

    for info in parsed.cells_of("parameters"):
        nb.cells.append(copy_cell(info.index, ["parameters"]))
    for info in parsed.cells_of("setup"):
        nb.cells.append(copy_cell(info.index))
    # Before the load step: unpickling may need a carried sys.path entry.
    prelude = prelude_for(pipeline, app.name)
    if prelude is not None:
        nb.cells.append(_internal(prelude))
    # Load after setup: a shipped value of a setup name (mutated upstream) must win over setup's.
    spec = app.spec
    reads = app.reads
    if spec.map is not None:
        reads = {k: v for k, v in reads.items() if k == spec.map.iterable} if split else app.item_reads or {}
    inputs = json.dumps(dict(sorted(reads.items())))
    item = f", item={spec.map.item!r}" if spec.map is not None and not split else ""
    shared = f", shared={sorted(pipeline.setup_names)!r}" if pipeline.setup_names else ""
    nb.cells.append(_internal(f"__import__('nbpipe.runtime').runtime.enter(globals(), {inputs}{item}{shared})"))
    if split:
        assert spec.map is not None
        nb.cells.append(_internal(f"__import__('nbpipe.runtime').runtime.split("
                                  f"globals(), {spec.map.iterable!r}, {spec.map.item!r})"))
        return _numbered_in_kernels(nb) if parsed.language == "python" else nb
    for index in app.spec.cells:
        nb.cells.append(copy_cell(index))
    ships = json.dumps({k: list(v) for k, v in sorted(app.ships.items())})
    metrics = json.dumps(list(app.metric_names)) if app.metric_names else "None"
    pulled = f", pull={sorted(pull)!r}" if pull else ""
    nb.cells.append(_internal(f"__import__('nbpipe.runtime').runtime.leave(globals(), {ships}, {metrics}{pulled})"))
    return _numbered_in_kernels(nb) if parsed.language == "python" else nb


def _numbered_in_kernels(nb: Any) -> Any:
    """Put first a hidden step that, in a Jupyter kernel, gives every later cell
    its count, as the ``ipython`` engine does from ``metadata.nbpipe.count``,
    and marks display outputs for the merge (``shell.mark_kernel_displays``)."""
    plan: list[Any] = []
    for cell in nb.cells:
        if not cell.source.strip():
            continue  # nbclient does not send an empty cell
        internal = INTERNAL_TAG in cell.metadata.get("tags", [])
        plan.append(None if internal else cell.metadata["nbpipe"]["count"])
        if "parameters" in cell.metadata.get("tags", []) and "injected" not in plan:
            plan.append("injected")
    history = nb.metadata["nbpipe_task"]["history"]
    step = _internal(f"__import__('nbpipe.execution.counts').execution.counts.number_cells("
                     f"get_ipython(), {plan!r}, {history!r})\n"
                     "__import__('nbpipe.execution.shell').execution.shell.mark_kernel_displays("
                     "get_ipython())")
    step.metadata["nbpipe"] = {KERNEL_ONLY: True}  # the ipython engine skips it: it would do nothing
    nb.cells.insert(0, step)
    return nb


def _internal(source: str) -> Any:
    """A hidden step: it runs without an execution count and is left out of the merge."""
    cell = v4.new_code_cell(source)
    cell.metadata["tags"] = [INTERNAL_TAG]
    return cell


def write_compiled(pipeline: Pipeline, directory: str | Path) -> dict[str, Path]:
    """Write every task notebook and ``graph.json`` into ``directory``; run nothing."""
    directory = Path(directory)
    notebooks = compile_pipeline(pipeline)
    paths = {}
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, nb in notebooks.items():
            path = directory / f"{name}.ipynb"
            nbformat.write(nb, path)
            paths[name] = path
        (directory / "graph.json").write_text(json.dumps(pipeline.to_json(), indent=1) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write the task notebooks into {directory}: {exc.strerror or exc}; "
                         "choose another -d directory") from None
    return paths
