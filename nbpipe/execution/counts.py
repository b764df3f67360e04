"""Execution counts: every cell of an app runs with the count a serial run gives it.

The merged notebook numbers cells as papermill numbers a serial run
(``graph.execution_counts``; papermill's ``injected-parameters`` cell, when it
sets a parameter of the user's, counts too and shifts the cells below it).
Running each copied cell with that count makes ``In``, ``Out``, ``_N`` and
``_iN`` inside an app those of the serial run: the input history is filled
with the other apps' sources, which compile records in the task notebook
(``metadata.nbpipe_task.history``). The load and save steps take no count.

The ``ipython`` engine sets each count itself (:func:`planned_counts`); in a
Jupyter kernel a hidden first step installs :func:`number_cells`, which does
the same from IPython's ``post_run_cell`` event.
"""

from __future__ import annotations

import ast
from typing import Any

from ..runtime import INTERNAL_TAG

__all__ = ["number_cells", "planned_counts", "serial_history", "set_count"]

INJECTED_TAG = "injected-parameters"


def planned_counts(nb: Any) -> list[int | None]:
    """The execution count each cell of a task notebook runs with; None: no count.

    A cell copied from the source notebook carries its count without injected
    parameters in ``metadata.nbpipe.count``. papermill's ``injected-parameters``
    cell of a task counts only when it sets a parameter of the user's (not just
    nbpipe's run context). Any other cell takes the next count, so a plain
    notebook (``papermill -E nbpipe``) is numbered as a kernel numbers it.
    """
    task = "nbpipe_task" in nb.metadata
    user_parameters = _user_parameters(nb.metadata.get("papermill", {}).get("parameters", {}))
    counts: list[int | None] = []
    shift, last = 0, 0
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        planned = cell.metadata.get("nbpipe", {}).get("count")
        if cell.cell_type != "code" or not cell.source.strip() or INTERNAL_TAG in tags:
            counts.append(None)
        elif INJECTED_TAG in tags and task:
            counts.append(last + 1 if user_parameters else None)
            shift = 1 if user_parameters else 0
        else:
            last = planned + shift if planned is not None else last + 1
            counts.append(last)
    return counts


def serial_history(nb: Any, counts: list[int | None]) -> dict[int, str]:
    """Count -> source of the cells a serial run executes before this app's last
    cell, numbered as :func:`planned_counts` numbers the task's cells."""
    history = {int(k): v for k, v in nb.metadata.get("nbpipe_task", {}).get("history", {}).items()}
    injected = [i for i, cell in enumerate(nb.cells)
                if INJECTED_TAG in cell.metadata.get("tags", []) and counts[i] is not None]
    if not injected:
        return history
    at = counts[injected[0]]
    assert at is not None
    return _with_injected(history, at, nb.cells[injected[0]].source)


def _with_injected(history: dict[int, str], at: int, source: str) -> dict[int, str]:
    """The history with papermill's injected cell at count ``at``, the cells from there on one later."""
    shifted = {count + (count >= at): text for count, text in history.items()}
    shifted[at] = source
    return shifted


def _user_parameters(parameters: Any) -> set[str]:
    from ..runtime import CONTEXT_NAME

    return set(parameters) - {CONTEXT_NAME}


def _sets_user_parameters(source: str) -> bool:
    """Whether papermill's injected cell assigns more than nbpipe's run context."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    names = {t.id for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    return bool(_user_parameters(names))


def set_count(shell: Any, count: int, history: dict[int, str]) -> None:
    """Make the next cell run as ``In[count]``.

    The input history is trimmed to it (a kernel stores the hidden steps too)
    or filled up to it with the sources a serial run executed there
    (``history``, of other apps' cells), stored as IPython stores a cell's
    input; ``_i``, ``_ii``, ``_iii`` and ``_iN`` follow.
    """
    shell.execution_count = count
    manager = shell.history_manager
    parsed, raw = manager.input_hist_parsed, manager.input_hist_raw
    del parsed[count:], raw[count:]
    while len(raw) < count:
        n = len(raw)
        source = history.get(n, "")
        manager.store_inputs(n, shell.transform_cell(source) if source else "", source)
        if len(raw) == n:  # IPython keeps no `exit` in its history; keep the numbering
            parsed.append(source)
            raw.append(source)
    before = [raw[count - k] if count - k >= 1 else "" for k in (1, 2, 3, 4)]
    manager._i00, manager._i, manager._ii, manager._iii = before
    _bind_results(shell, count)


def _bind_results(shell: Any, count: int) -> None:
    """Set ``_``, ``__`` and ``___`` to the last three results before ``In[count]``,
    as a serial run has them: ``Out`` holds this app's results and the ones
    shipped from other apps (the analysis ships those a cell reads as ``_``)."""
    hook, ns = shell.displayhook, shell.user_ns
    if any(u in ns and ns[u] is not getattr(hook, u) for u in ("_", "__", "___")):
        return  # the user assigned one of them: IPython stops updating them too
    out = ns.get("Out")
    if not isinstance(out, dict):
        return
    recent = [out[k] for k in sorted((k for k in out if isinstance(k, int) and k < count), reverse=True)[:3]]
    recent += [""] * (3 - len(recent))
    hook._, hook.__, hook.___ = recent
    ns.update({"_": recent[0], "__": recent[1], "___": recent[2]})


def number_cells(shell: Any, plan: list[Any], history: dict[Any, str]) -> None:
    """In a Jupyter kernel: run the cells after this one with the counts of ``plan``.

    ``plan`` has an entry per cell the kernel executes after this one: its
    count without injected parameters, None for a hidden step (the kernel
    counts it; the next cell's count undoes that), or ``"injected"`` for
    papermill's parameters cell. A kernel takes a cell's count before any code
    of ours sees the cell, so each count is set when the previous cell ends.
    In the ``ipython`` engine, which numbers cells itself, this does nothing.
    """
    from .shell import is_engine_shell

    if shell is None or is_engine_shell(shell):
        return
    raw = shell.history_manager.input_hist_raw
    # This step is in the history already: it goes when it ends, as every hidden step does.
    state: dict[str, Any] = {"next": 0, "shift": 0, "last": 0, "hidden_from": len(raw) - 1,
                             "history": {int(k): v for k, v in history.items()}}
    if "injected" not in plan and len(raw) > 2 and _sets_user_parameters(raw[1]):
        # No parameters cell: papermill put its cell first, before this step.
        state["shift"] = 1
        state["history"] = _with_injected(state["history"], 1, raw[1])

    def after_cell(result: Any) -> None:
        if state["hidden_from"] is not None:
            _forget_since(shell, state["hidden_from"])
            state["hidden_from"] = None
        if state["next"] and plan[state["next"] - 1] == "injected":
            source = result.info.raw_cell or ""
            if _sets_user_parameters(source):
                state["shift"] = 1
                state["history"] = _with_injected(state["history"], state["last"] + 1, source)
        if state["next"] >= len(plan):
            shell.events.unregister("post_run_cell", after_cell)
            return
        entry = plan[state["next"]]
        state["next"] += 1
        if entry is None:
            state["hidden_from"] = len(shell.history_manager.input_hist_raw)
        elif entry == "injected":
            set_count(shell, state["last"] + 1, state["history"])
        else:
            state["last"] = entry + state["shift"]
            set_count(shell, state["last"], state["history"])

    shell.events.register("post_run_cell", after_cell)


def _forget_since(shell: Any, count: int) -> None:
    """Drop a hidden step from a kernel's input history and count."""
    manager = shell.history_manager
    del manager.input_hist_parsed[count:], manager.input_hist_raw[count:]
    shell.execution_count = count
