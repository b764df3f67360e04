"""Executed task notebooks -> one narrative notebook.

Every original cell comes back in its original order with the outputs its app
produced, the execution count a serial papermill run gives it (which the
``ipython`` engine ran it with), and
``metadata.nbpipe`` telling which app ran it, how and where (SPEC §6).

A ``map:`` app's item notebooks are read one at a time and dropped: only the
outputs the merged notebook shows are kept. A map of more than
``SIDECAR_ITEMS`` items writes every item to an items file beside the merged
notebook (:mod:`.itemsfile`) and keeps the first and last few items (and every
failed one) inline, so the notebook and the driver's memory stay bounded.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import nbformat
from nbformat import v4
from nbformat.v4.rwbase import rejoin_lines

from .version import __version__
from .compile import INTERNAL_TAG
from .execution.base import AppResult, AppStatus, ItemResult, run_ok
from .graph import Pipeline, execution_counts
from .itemsfile import ItemsFile
from .parameters import effective
from .shape import ERROR_TAG, INJECTED_TAG

__all__ = ["merge", "reader_label"]


def merge(
    pipeline: Pipeline,
    results: dict[str, AppResult],
    executed: dict[str, Any],
    *,
    parameters: dict[str, Any],
    site: str,
    extra: dict[str, Any] | None = None,
    containers: dict[str, dict[str, Any]] | None = None,
    items_file: ItemsFile | None = None,
) -> Any:
    """Build the merged notebook.

    ``executed`` maps an app to its executed task notebook (apps that never
    ran are absent); a ``map:`` app to an iterable of its items' notebooks
    (None for an item that left none), read once, in item order. ``extra`` is
    added to the notebook's ``metadata.nbpipe`` (provenance, cache keys,
    metrics). ``containers`` maps an app that runs in a container to its
    image, digest and runtime, recorded on its cells. ``items_file`` receives
    the items of every map of more than ``SIDECAR_ITEMS`` items (without it,
    every map is merged inline).
    """
    containers = containers or {}
    parsed = pipeline.parsed
    merged = copy.deepcopy(parsed.nb)
    executed = {app: nb for app, nb in executed.items() if nb is not None}
    by_app = {app: _by_source(nb) for app, nb in executed.items() if not _is_map(nb)}
    maps = {app: _gather(app, pipeline, results[app], nbs, items_file)
            for app, nbs in executed.items() if _is_map(nbs) and results[app].items is not None}
    for app, runs in maps.items():  # shared cells (setup, parameters) of a map app
        by_app[app] = runs.first
    notebook_order = list(pipeline.apps)  # apps in order of their first cell

    for info in parsed.cells:
        if info.cell_type != "code":
            continue
        cell = merged.cells[info.index]
        cell.outputs, cell.execution_count = [], None
        meta: dict[str, Any]
        if info.role == "skip":
            meta = {"status": AppStatus.SKIPPED.value, "reason": "tagged skip: never executed"}
        elif info.role in ("parameters", "setup"):
            app, ran = _first_run(info.index, notebook_order, by_app)
            meta = {"app": info.role}
            if ran is not None:
                _take_outputs(cell, ran)
                meta.update(_cell_timing(ran), status=_cell_status(ran, results[app]), ran_in=app)
                meta.update(_host(results[app]))
            else:
                meta["status"] = AppStatus.SKIPPED.value
                meta["reason"] = "no app ran"
        elif results[info.app or ""].items is not None:
            app = info.app or ""
            runs = maps[app].cells[info.index] if app in maps else _CellRuns()
            meta = {"app": app, **_map_cell(cell, runs, results[app], pipeline.apps[app].spec.map,
                                            maps[app].items_file if app in maps else None)}
            meta.update(_host(results[app]))
        else:
            app = info.app or ""
            result = results[app]
            ran = by_app.get(app, {}).get(info.index)
            meta = {"app": app}
            if ran is not None and ran.get("execution_count") is not None:
                _take_outputs(cell, ran)
                meta.update(_cell_timing(ran), status=_cell_status(ran, result))
            else:
                meta["status"] = AppStatus.SKIPPED.value
                meta["reason"] = result.reason or _not_reached(result)
            meta.update(_host(result))
        if meta.get("app") in containers:
            meta["container"] = containers[meta["app"]]
        cell.metadata["nbpipe"] = meta

    _apply_display_updates(merged)
    _attach_app_errors(pipeline, merged, results)
    counts = execution_counts(pipeline.parsed)
    _number(pipeline, merged, counts, bool(parameters))
    _insert_injected_parameters(pipeline, merged, counts, parameters)
    _insert_error_banner(pipeline, merged, results)

    for app, nb in executed.items():
        info = maps[app].language_info if app in maps else nb.get("metadata", {}).get("language_info") \
            if not _is_map(nb) else None
        if info is not None:
            merged.metadata["language_info"] = copy.deepcopy(info)
            break
    # every parameter's value, defaults too, and whether it is the default or was given
    values, sources = effective(pipeline.parsed, parameters)
    merged.metadata["nbpipe"] = {
        "version": __version__,
        "site": site,
        "status": "completed" if run_ok(results) else "failed",
        "finished": datetime.now(timezone.utc).isoformat(),
        "parameters": values,
        "parameter_sources": sources,
        "graph": pipeline.to_json(),
        "apps": {name: {**_app_record(results[name], maps.get(name)),
                        **({"container": containers[name]} if name in containers else {})}
                 for name in pipeline.order},
        # readers re-wired to an app that changed a value unpredicted (the mutation check)
        "reruns": [{"app": name, "read": r["variable"], "from": r["app"], "reran": r["reran"]}
                   for name in pipeline.order for r in results[name].reruns or ()],
        **(extra or {}),
    }
    folded_out = {app: runs.items_file for app, runs in maps.items() if runs.items_file}
    if folded_out:  # every item of these maps is a line of the items file beside the notebook
        merged.metadata["nbpipe"]["items_file"] = {
            "file": next(iter(folded_out.values())),
            "apps": {app: len(results[app].items or []) for app in folded_out}}
    nbformat.validate(merged)
    return merged


def _by_source(nb: Any) -> dict[int, Any]:
    """An executed task notebook's cells of the source notebook, by their index there."""
    out = {}
    for cell in nb["cells"]:
        meta = cell.get("metadata", {})
        source = meta.get("nbpipe", {}).get("source")
        if source is not None and INTERNAL_TAG not in meta.get("tags", []):
            out[int(source["index"])] = _node(cell)
    return out


def _node(cell: Any) -> Any:
    """A cell read as plain JSON as nbformat reads it: a notebook node, its texts joined."""
    return rejoin_lines(nbformat.from_dict({"cells": [cell]})).cells[0]


#: A map app's cell shows every item's outputs up to this many items; beyond, the
#: first and last few and every failed item, so the notebook stays readable.
SHOW_ITEMS = 20
SHOW_HEAD, SHOW_TAIL = 10, 5
#: A map of more than this many items writes every item to the items file beside the
#: merged notebook (:mod:`.itemsfile`); a smaller one keeps its folded items' text in
#: the cell's ``metadata.nbpipe.folded``.
SIDECAR_ITEMS = 200
#: Folded items keep their text outputs in the cell's ``metadata.nbpipe.folded``
#: (the per-item task notebooks go with the run directory), this much of each.
FOLDED_ITEMS, FOLDED_CHARS = 500, 500


def _is_map(executed: Any) -> bool:
    """A map app's value in ``executed``: an iterable of item notebooks, not one notebook."""
    return not isinstance(executed, dict)


@dataclass
class _CellRuns:
    """One cell of a map app over its items: the statuses and times of every item that
    ran it, and the outputs of those the merged notebook may show."""

    #: each item that ran the cell: the status it came to, and its duration
    statuses: dict[int, str] = field(default_factory=dict)
    durations: dict[int, float | None] = field(default_factory=dict)
    outputs: dict[int, list[Any]] = field(default_factory=dict)
    count: int | None = None
    start: str | None = None
    end: str | None = None
    duration: float = 0.0
    key: str | None = None
    same: bool = True  # every item's outputs are the same
    order: list[int] = field(default_factory=list)  # the items that ran it, in order
    #: items past SHOW_HEAD whose outputs may be dropped once they leave the last SHOW_TAIL
    _dropped_to: int = SHOW_HEAD

    def add(self, index: int, ran: Any, status: str, *, bounded: bool) -> None:
        timing = _cell_timing(ran)
        self.statuses[index] = status
        self.order.append(index)
        self.durations[index] = timing.get("duration")
        self.duration += timing.get("duration") or 0.0
        if "start_time" in timing and (self.start is None or timing["start_time"] < self.start):
            self.start = timing["start_time"]
        if "end_time" in timing and (self.end is None or timing["end_time"] > self.end):
            self.end = timing["end_time"]
        if self.count is None:
            self.count = ran.get("execution_count")
        key = _outputs_key(ran.get("outputs", []))
        self.key = key if self.key is None else self.key
        self.same = self.same and key == self.key
        self.outputs[index] = ran.get("outputs", [])  # a node of its own (_node): no copy
        if bounded:
            self._drop_middle()

    def _drop_middle(self) -> None:
        """Keep the outputs of the first SHOW_HEAD and the last SHOW_TAIL items, and of failed ones."""
        if len(self.order) <= SHOW_ITEMS:
            return  # all of them are shown
        for index in self.order[self._dropped_to:len(self.order) - SHOW_TAIL]:
            if self.statuses[index] in _DONE:
                self.outputs.pop(index, None)
        self._dropped_to = max(self._dropped_to, len(self.order) - SHOW_TAIL)


@dataclass
class _MapRuns:
    """A map app's items, read once: the first item's cells (the shared cells show them)
    and each of the app's cells over the items."""

    first: dict[int, Any] = field(default_factory=dict)
    cells: dict[int, _CellRuns] = field(default_factory=dict)
    language_info: Any = None
    items_file: str | None = None  # the items file's name, when the items went there


def _gather(app: str, pipeline: Pipeline, result: AppResult, notebooks: Iterable[Any],
            items_file: ItemsFile | None) -> _MapRuns:
    """One pass over a map app's item notebooks, each dropped once read."""
    records = result.items or []
    cells = pipeline.apps[app].spec.cells
    ids = {index: pipeline.parsed.cells[index].id for index in cells}
    bounded = items_file is not None and len(records) > SIDECAR_ITEMS
    runs = _MapRuns(cells={index: _CellRuns() for index in cells},
                    items_file=items_file.name if bounded and items_file else None)
    for record, nb in zip(records, notebooks):
        by_source = _by_source(nb) if nb is not None else {}
        if by_source and not runs.first:
            runs.first, runs.language_info = by_source, nb.get("metadata", {}).get("language_info")
        outputs = {}
        for index in cells:
            ran = by_source.get(index)
            if ran is not None and ran.get("execution_count") is not None:
                runs.cells[index].add(record.index, ran, _cell_status(ran, record), bounded=bounded)
                outputs[ids[index]] = ran.get("outputs", [])
        if bounded and items_file is not None:
            items_file.add(app, record.to_dict(), outputs)
    return runs


def _app_record(result: AppResult, runs: _MapRuns | None) -> dict[str, Any]:
    """An app's record in ``metadata.nbpipe.apps``; a map whose items went to the items file
    keeps the first and last few items' records and every failed one's, and their count."""
    if runs is None or runs.items_file is None:
        return result.to_dict()
    items = result.items or []
    keep = [r for i, r in enumerate(items) if i < SHOW_HEAD or i >= len(items) - SHOW_TAIL
            or r.status.value not in _DONE]
    return {**result.to_dict(items=False), "items": [r.to_dict() for r in keep], "item_count": len(items),
            "items_file": runs.items_file}


def _map_cell(cell: Any, runs: _CellRuns, result: AppResult, spec: Any,
              items_file: str | None) -> dict[str, Any]:
    """Outputs of every item of a map: app in one cell, each labelled with its item."""
    records = result.items or []
    by_index = {r.index: r for r in records}
    statuses = runs.statuses
    meta: dict[str, Any] = {"items": len(records)}
    if not records:
        meta.update(status=result.status.value, reason="the iterable was empty: no item ran")
        return meta
    if not statuses:
        meta.update(status=AppStatus.SKIPPED.value, reason=result.reason or _not_reached(result))
        return meta
    cell.execution_count = runs.count
    ran = [by_index[i] for i in runs.order]
    failed = [r for r in ran if statuses[r.index] not in _DONE]
    label = (lambda r: f"{spec.item} = {r.label}") if spec else (lambda r: r.label)
    if len(ran) > 1 and runs.same and not failed:
        first, last = ran[0], ran[-1]
        outs = runs.outputs[first.index]
        cell.outputs = [_label_output(f"all {len(ran)} items, {label(first)} … {label(last)}: "
                                      "identical outputs")] + outs if outs else []
    else:
        shown = ran
        if len(ran) > SHOW_ITEMS:
            keep = {r.index for r in ran[:SHOW_HEAD] + ran[-SHOW_TAIL:]} | {r.index for r in failed}
            shown = [r for r in ran if r.index in keep]
        cell.outputs = _fold([(r, runs.outputs[r.index]) for r in shown], label, items_file)
        on_show = {r.index for r in shown}
        folded = [r for r in ran if r.index not in on_show]
        if folded and items_file is None:
            meta["folded"] = [{"item": r.index, "label": label(r), "status": statuses[r.index],
                               "text": _folded_text(runs.outputs[r.index])} for r in folded[:FOLDED_ITEMS]]
        elif folded:
            meta["items_file"] = items_file
    if runs.start is not None and runs.end is not None:
        meta.update(start_time=runs.start, end_time=runs.end)
    meta["duration"] = round(runs.duration, 6)
    hits = all(s == AppStatus.CACHED.value for s in statuses.values())
    meta["status"] = statuses[failed[0].index] if failed else (AppStatus.CACHED if hits else AppStatus.COMPLETED).value
    if len(records) <= 100:
        meta["item_status"] = [{"item": r.index, "status": statuses.get(r.index, _unran_status(r)),
                                **({"duration": runs.durations[r.index]}
                                   if runs.durations.get(r.index) is not None else {})}
                               for r in records]
    return meta


def _fold(shown: list[tuple[ItemResult, list[Any]]], label: Any, items_file: str | None = None) -> list[Any]:
    """The shown items' outputs, each under its label, with a note where items were folded."""
    outputs: list[Any] = []
    previous = -1
    for record, outs in shown:
        if record.index > previous + 1:
            outputs.append(_fold_note(previous + 1, record.index - 1, items_file))
        outputs.append(_label_output(f"item {record.index}: {label(record)}"))
        outputs.extend(outs)
        previous = record.index
    return outputs


def _fold_note(first: int, last: int, items_file: str | None) -> Any:
    count = last - first + 1
    if items_file is None:
        return _label_output(f"… {count} item(s) folded: their text outputs are kept "
                             "in this cell's metadata (nbpipe.folded)", folded=[first, last])
    return _label_output(f"… {count} item(s) folded: every item's outputs are in {items_file}",
                         folded=[first, last], link=items_file)


def _folded_text(outputs: list[Any]) -> str:
    """What a folded item printed, its results' text and its error, cut at FOLDED_CHARS."""
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            parts.append(str(out.get("text", "")))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}\n")
        elif "text/plain" in out.get("data", {}):
            parts.append(str(out["data"]["text/plain"]) + "\n")
    text = "".join(parts)
    return text if len(text) <= FOLDED_CHARS else text[: FOLDED_CHARS - 1] + "…"


def _apply_display_updates(merged: Any) -> None:
    """Apply display updates across apps, as nbclient applies them in one notebook.

    An engine marks each output shown with a display id, and keeps each update
    (``handle.update(…)``) as a marked output (``shell.mark_display``). In
    notebook order, every marked output gives its data to the earlier outputs
    with its id; then the updates are dropped and the marks removed.
    """
    shown: dict[str, list[Any]] = {}
    for cell in merged.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.outputs:
            mark = out.get("metadata", {}).get("nbpipe", {})
            display_id = mark.get("display_id") or mark.get("update_display")
            if display_id is None:
                kept.append(out)
                continue
            out.metadata = {k: v for k, v in out.metadata.items() if k != "nbpipe"}
            for earlier in shown.get(display_id, []):
                earlier.data, earlier.metadata = copy.deepcopy(out.data), copy.deepcopy(out.metadata)
            if "display_id" in mark:
                shown.setdefault(display_id, []).append(out)
                kept.append(out)
        cell.outputs = kept


def _outputs_key(outputs: list[Any]) -> str:
    import json

    return json.dumps([{k: v for k, v in o.items() if k not in ("execution_count", "metadata")}
                       for o in outputs], sort_keys=True)


def _label_output(text: str, *, folded: list[int] | None = None, link: str | None = None) -> Any:
    mark: dict[str, Any] = {"item_label": True}
    if folded is not None:
        mark["folded"] = folded  # the first and last item folded here
    markdown = f"**{text}**"
    if link is not None:  # the items file beside the notebook: a link a reader can follow
        mark["items_file"] = link
        markdown = f"**{text.removesuffix(link).rstrip()}** [{link}]({link})"
    return v4.new_output("display_data", data={"text/plain": f"[{text}]", "text/markdown": markdown},
                         metadata={"nbpipe": mark})


def _first_run(index: int, apps: list[str], by_app: dict[str, dict[int, Any]]) -> tuple[str, Any]:
    """The first app, in notebook order, that executed the shared cell ``index``."""
    for app in apps:
        cell = by_app.get(app, {}).get(index)
        if cell is not None and cell.get("execution_count") is not None:
            return app, cell
    return "", None


def _take_outputs(cell: Any, ran: Any) -> None:
    cell.outputs = copy.deepcopy(ran.get("outputs", []))
    cell.execution_count = ran.get("execution_count")


_DONE = (AppStatus.COMPLETED.value, AppStatus.CACHED.value)


def _cell_timing(ran: Any) -> dict[str, Any]:
    pm = ran.get("metadata", {}).get("papermill", {})
    return {k: pm[k] for k in ("start_time", "end_time", "duration") if pm.get(k) is not None}


def _cell_status(ran: Any, result: AppResult | ItemResult) -> str:
    pm = ran.get("metadata", {}).get("papermill", {}).get("status")
    if result.status is AppStatus.TIMED_OUT and pm in ("running", "failed"):
        return AppStatus.TIMED_OUT.value
    if pm == "failed" or any(o.get("output_type") == "error" for o in ran.get("outputs", [])):
        return AppStatus.FAILED.value
    if pm == "running":  # stopped mid-cell: timed out or interrupted
        return result.status.value
    return AppStatus.CACHED.value if result.status is AppStatus.CACHED else AppStatus.COMPLETED.value


def _unran_status(record: ItemResult) -> str:
    """An item that did not run this cell: failed before it (its process died), or never reached it."""
    failed = record.status in (AppStatus.FAILED, AppStatus.TIMED_OUT)
    return record.status.value if failed else AppStatus.SKIPPED.value


def _host(result: AppResult) -> dict[str, Any]:
    out: dict[str, Any] = {"attempts": result.attempts}
    if result.host:
        out["host"] = result.host
    if result.job_id:
        out["job_id"] = result.job_id
    if result.status is AppStatus.CACHED and result.cache:
        out["cached_from"] = {k: v for k, v in result.cache.items() if k in ("run", "created")}
    return out


def _not_reached(result: AppResult) -> str:
    if result.status is AppStatus.SKIPPED:
        return "skipped"
    if result.error:
        return f"not reached: app {result.app!r} stopped earlier ({result.error.get('ename')})"
    return "not reached"


def _attach_app_errors(pipeline: Pipeline, merged: Any, results: dict[str, AppResult]) -> None:
    """Show errors no cell of the source shows (a value that cannot be shipped,
    a timeout, an interrupt) on the app's last cell that ran, or its first cell."""
    for name, result in results.items():
        if result.status.ok or result.status is AppStatus.SKIPPED or not result.error:
            continue
        cells = [merged.cells[i] for i in pipeline.apps[name].spec.cells]
        if result.status is AppStatus.FAILED and any(
                c.metadata["nbpipe"].get("status") == AppStatus.FAILED.value for c in cells):
            continue  # the failing cell already carries its traceback
        ran = [c for c in cells if c.execution_count is not None]
        stopped = [c for c in cells if c.metadata["nbpipe"].get("status") == result.status.value]
        target = stopped[0] if stopped else ran[-1] if ran else cells[0]
        ename, evalue = result.error.get("ename", "Error"), result.error.get("evalue", "")
        if result.status is AppStatus.TIMED_OUT:
            # The interrupt that enforced the limit is not the user's error: show one TimeoutError.
            target.outputs = [o for o in target.outputs if not (
                o.get("output_type") == "error" and o.get("ename") == "KeyboardInterrupt")]
        target.outputs.append(v4.new_output("error", ename=ename, evalue=evalue,
                                            traceback=[f"{ename}: {evalue}"]))
        target.metadata["nbpipe"]["status"] = result.status.value
        target.metadata["nbpipe"].pop("reason", None)
        if result.error.get("cell") is None:
            result.error["cell"] = next(c.index for c in pipeline.parsed.cells if c.id == target.id)


def _number(pipeline: Pipeline, merged: Any, counts: dict[int, int], injected: bool) -> None:
    """Give each executed cell papermill's execution count (before the injected cell is inserted)."""
    params = pipeline.parsed.cells_of("parameters")
    after = params[0].index if params else -1  # papermill injects below the first parameters cell
    for index, count in counts.items():
        cell = merged.cells[index]
        if cell.execution_count is None:
            continue
        cell.execution_count = count + (1 if injected and index > after else 0)
        for output in cell.outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = cell.execution_count


def _insert_injected_parameters(pipeline: Pipeline, merged: Any, counts: dict[int, int],
                                parameters: dict[str, Any]) -> None:
    """Papermill's ``injected-parameters`` cell after the parameters cell, user values only."""
    if not parameters:
        return
    from papermill.translators import translate_parameters

    parsed = pipeline.parsed
    cell = v4.new_code_cell(translate_parameters(parsed.kernel_name, parsed.language, parameters,
                                                 "Parameters"))
    cell.metadata["tags"] = [INJECTED_TAG]
    # metadata.nbpipe marks it as nbpipe's: a merged notebook fed back drops it (shape.py)
    cell.metadata["nbpipe"] = {"app": "parameters", "status": "completed"}
    params = parsed.cells_of("parameters")
    above = counts.get(params[0].index, 0) if params else 0
    cell.execution_count = above + 1  # papermill's count, as in _number
    merged.cells.insert(params[0].index + 1 if params else 0, cell)


def _insert_error_banner(pipeline: Pipeline, merged: Any, results: dict[str, AppResult]) -> None:
    """A banner at the top linking to the first failing cell, as papermill does."""
    failed = [r for r in results.values() if r.status in (AppStatus.FAILED, AppStatus.TIMED_OUT)]
    if not failed:
        return
    failed.sort(key=lambda r: pipeline.apps[r.app].spec.cells[0])
    lines = []
    anchors: list[tuple[str, str]] = []
    for r in failed:
        cell_index = (r.error or {}).get("cell")
        cell_id = pipeline.parsed.cells[cell_index].id if cell_index is not None else None
        what = f"`{(r.error or {}).get('ename', 'Error')}: {_one_line((r.error or {}).get('evalue', ''))}`"
        where = f"[{reader_label(merged, cell_id)}](#nbpipe-error-{r.app})" if cell_id else "its first cell"
        lines.append(f"- App **{r.app}** {r.status.value.replace('_', ' ')} at {where}: {what}")
        skipped = sorted(a for a, s in results.items() if s.status is AppStatus.SKIPPED
                         and s.reason and f"app {r.app!r}" in s.reason)
        if skipped:
            lines.append(f"  - skipped because of it: {', '.join(skipped)}")
        if cell_id:
            anchors.append((cell_id, r.app))
    for cell_id, app in anchors:
        at = next(i for i, c in enumerate(merged.cells) if c.get("id") == cell_id)
        anchor = v4.new_markdown_cell(f'<span id="nbpipe-error-{app}"></span>')
        anchor.metadata["tags"] = [ERROR_TAG]
        merged.cells.insert(at, anchor)
    banner = v4.new_markdown_cell(
        '<span style="color:red; font-size:1.5em">nbpipe: '
        f'{len(failed)} app(s) did not complete.</span>\n\n' + "\n".join(lines))
    banner.metadata["tags"] = [ERROR_TAG]
    banner.metadata["nbpipe"] = {"banner": True}  # the report's run header says it instead
    merged.cells.insert(0, banner)


def reader_label(nb: Any, cell_id: str) -> str:
    """A code cell as the reader of ``nb`` sees it: ``In [5]``, or ``the 3rd code cell``
    when it has no execution count (never the internal cell index)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    at = next(i for i, c in enumerate(code) if c.get("id") == cell_id)
    if code[at].get("execution_count") is not None:
        return f"In [{code[at].execution_count}]"
    n = at + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"the {n}{suffix} code cell"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
