"""Blocks -> a networkx DiGraph of apps: dataflow, ``after:`` and files (pure).

An app receives each name it reads that an earlier app defines from the
*nearest* such app above the reading cell (SPEC §3); that is a data edge.
``after:NAME`` adds an edge with no data, and ``outputs:X`` -> ``inputs:X`` a
file edge. Names from ``parameters`` and ``setup`` are available everywhere.
A ``%%writefile F`` cell declares ``outputs:F`` for its app, and importing a
module some cell writes declares ``inputs:`` for it, so the import waits.
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from dataclasses import dataclass, field, replace
from collections.abc import Mapping
from typing import Any

import networkx as nx

from .errors import CycleError, GraphError, TagError
from .imports import module_files, normalise_path, notebook_context
from .names import CellNames, analyse_cell, loaded_modules, shows_result
from .parse import AppSpec, ParsedNotebook

__all__ = ["AppNode", "Pipeline", "build_pipeline", "execution_counts"]

#: IPython's names for the last three results
_UNDERS = frozenset({"_", "__", "___"})
_GLOB = re.compile(r"[*?[]")
_METRIC_LINE = re.compile(r"\s*(?:print\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)|([A-Za-z_][A-Za-z0-9_]*))\s*\Z")


@dataclass(frozen=True)
class AppNode:
    """An app with its dataflow: where each input comes from, who reads its outputs."""

    spec: AppSpec
    #: name read -> app that provides it (the nearest definer above the reading cell)
    reads: dict[str, str]
    defines: frozenset[str]
    #: name defined here -> apps that take it from here; these values are shipped
    ships: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: for the metrics block: the names its lines print
    metric_names: tuple[str, ...] = ()
    #: for a map: app, what each item task loads (the iterable only if its cells read it)
    item_reads: dict[str, str] | None = None
    #: parameters its cells, the setup cells and the functions they define read (its cache key)
    parameters_read: frozenset[str] = frozenset()
    #: modules its cells, the setup and the parameters cells may load, function bodies too
    #: (their versions or digests enter its cache key; the worker preloads them)
    modules: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Pipeline:
    """The parsed notebook with its app graph, ready to compile."""

    parsed: ParsedNotebook
    graph: Any  # networkx.DiGraph; nodes are app names, edges carry names/kinds
    apps: dict[str, AppNode]
    order: tuple[str, ...]  # a topological order, ties broken by notebook order
    parameter_names: frozenset[str]
    setup_names: frozenset[str]
    #: what the analysis cannot see, one line per cell and call (``nbpipe check`` prints them)
    warnings: tuple[str, ...] = ()
    #: name -> the app of the last cell defining it: its value is the one a serial run ends with
    last_definer: dict[str, str] = field(default_factory=dict)
    #: the ``nbpipe.split.Split`` that tagged the notebook (``--split cells|auto``), else None
    split: Any = None

    def __repr__(self) -> str:
        name = self.parsed.path.name if self.parsed.path else "notebook"
        return (f"<Pipeline {name}: {len(self.apps)} app(s), {self.graph.number_of_edges()} edge(s): "
                f"{_shorten(', '.join(self.order), 120)}>")

    def _repr_html_(self) -> str:
        from .status import pipeline_html

        return pipeline_html(self)

    def upstream(self, app: str) -> set[str]:
        return set(nx.ancestors(self.graph, app))

    def downstream(self, app: str) -> set[str]:
        return set(nx.descendants(self.graph, app))

    def edges(self) -> list[dict[str, Any]]:
        rank = {name: i for i, name in enumerate(self.order)}
        return [
            {"from": u, "to": v, "kinds": sorted(d["kinds"]), "names": sorted(d["names"]),
             "files": sorted(d["files"])}
            for u, v, d in sorted(self.graph.edges(data=True), key=lambda e: (rank[e[0]], rank[e[1]]))
        ]

    def to_json_options(self, app: str) -> dict[str, Any]:
        return _options(self.apps[app].spec)

    def to_json(self) -> dict[str, Any]:
        """The graph as plain data (``nbpipe graph --format json``, merged metadata)."""
        cells = self.parsed.cells
        apps = []
        for name in self.order:
            node = self.apps[name]
            spec = node.spec
            apps.append({
                "name": name,
                "cells": [cells[i].id for i in spec.cells],
                "reads": dict(sorted(node.reads.items())),
                "ships": {k: list(v) for k, v in sorted(node.ships.items())},
                "after": list(spec.after),
                "options": _options(spec),
            })
        return {"apps": apps, "edges": self.edges()}


def _options(spec: AppSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.map:
        out["map"] = f"{spec.map.item}={spec.map.iterable}"
    for key in ("executor", "container", "timeout"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    if spec.retries:
        out["retries"] = spec.retries
    if spec.resources.as_dict():
        out["resources"] = spec.resources.as_dict()
    if spec.inputs:
        out["inputs"] = list(spec.inputs)
    if spec.outputs:
        out["outputs"] = list(spec.outputs)
    if not spec.cache:
        out["cache"] = "off"
    return out


def build_pipeline(parsed: ParsedNotebook) -> Pipeline:
    """Work out the dataflow of ``parsed`` and build its app graph.

    Raises :class:`TagError` for an ``after:`` naming no app and
    :class:`CycleError` when the apps depend on each other in a loop.
    """
    cells = parsed.cells
    names = _with_global_writes(_analyse(parsed), cells)
    names = _with_output_history(names, parsed)
    specs = _with_files(parsed, names)
    parameter_names = frozenset().union(*(names[c.index].defines for c in parsed.cells_of("parameters")))
    setup_names = frozenset().union(*(names[c.index].defines for c in parsed.cells_of("setup")))

    # name -> sorted cell indices of app cells defining it, and the app of each
    definers: dict[str, list[int]] = {}
    for c in cells:
        if c.role in ("app", "metrics"):
            for n in names[c.index].defines:
                definers.setdefault(n, []).append(c.index)
    app_of = {c.index: c.app for c in cells if c.app}

    # app -> callable it defines -> the globals its body reads when called
    callables: dict[str, dict[str, frozenset[str]]] = {}
    for c in cells:
        if c.app and c.index in names:
            callables.setdefault(c.app, {}).update(names[c.index].callables)
    reads: dict[str, dict[str, str]] = {}
    defines: dict[str, set[str]] = {}
    map_sources: dict[str, str | None] = {}
    items_skip: dict[str, str] = {}  # map app -> iterable its items need not load
    for name, spec in specs.items():
        # In a map: app the item name is bound per task, never read from upstream.
        own: set[str] = {spec.map.item} if spec.map else set()
        got: dict[str, str] = {}
        if spec.map:
            map_sources[name] = _map_source(spec, cells, definers, app_of,
                                            parameter_names | setup_names)
        first_read: dict[str, int] = {}
        for index in spec.cells:
            for n in sorted(names[index].reads - own):
                producer = _nearest_definer(definers.get(n, []), index, name, app_of)
                if n in got:
                    if producer is not None and producer != got[n]:
                        # Serial execution would see two values; an app gets one.
                        raise GraphError(
                            f"app {name!r} reads {n!r} from app {got[n]!r} at cell {first_read[n]} "
                            f"and from app {producer!r} at cell {index} (id {cells[index].id}); "
                            f"an app receives one value of each name: start a new app at cell {index}")
                    continue
                if producer is not None:
                    got[n], first_read[n] = producer, index
                    _late_bound(n, producer, index, name, own, got, first_read, callables,
                                definers, app_of)
            for n in sorted(names[index].reads & own & callables.get(name, {}).keys()):
                # a function of this app, called here: its globals may come from another app
                _late_bound(n, name, index, name, own, got, first_read, callables, definers, app_of)
            own |= names[index].defines
        if spec.map and map_sources[name] is not None:
            if spec.map.iterable not in got:
                items_skip[name] = spec.map.iterable
            got[spec.map.iterable] = map_sources[name]  # type: ignore[assignment]
        reads[name], defines[name] = got, own

    ships: dict[str, dict[str, list[str]]] = {name: {} for name in specs}
    for consumer, got in reads.items():
        for n, producer in got.items():
            ships[producer].setdefault(n, []).append(consumer)

    graph = nx.DiGraph()
    for name, spec in specs.items():
        graph.add_node(name, first_cell=spec.cells[0])

    def edge(u: str, v: str, kind: str, name: str | None = None, file: str | None = None) -> None:
        if not graph.has_edge(u, v):
            graph.add_edge(u, v, kinds=set(), names=set(), files=set())
        data = graph.edges[u, v]
        data["kinds"].add(kind)
        if name:
            data["names"].add(name)
        if file:
            data["files"].add(file)

    for consumer, got in reads.items():
        for n, producer in got.items():
            edge(producer, consumer, "data", name=n)
    for name, spec in specs.items():
        for target in spec.after:
            if target not in specs:
                index = spec.origin.get(f"after={target}", spec.cells[0])
                close = _did_you_mean(target, specs)
                # name the tag as the user wrote it: after:X or its Kale alias prev:X
                tag = next((t for t in cells[index].tags if t.partition(":")[0] in ("after", "prev")
                            and t.partition(":")[2].strip() == target), f"after:{target}")
                raise TagError(f"after: names no app {target!r}{close}", cell_index=index,
                               cell_id=cells[index].id, tag=tag)
            edge(target, name, "after")
    for producer, consumer, pattern in _file_edges(specs):
        edge(producer, consumer, "file", file=pattern)

    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        cycle = []
    if cycle:
        raise CycleError([(u, v, _why(graph, u, v)) for u, v in cycle])

    setup_cells = [c.index for c in parsed.cells_of("setup")]
    parameter_cells = [c.index for c in parsed.cells_of("parameters")]
    order = tuple(nx.lexicographical_topological_sort(graph, key=lambda n: graph.nodes[n]["first_cell"]))
    apps = {}
    for name in sorted(specs, key=lambda n: specs[n].cells[0]):
        spec = specs[name]
        metric_names: tuple[str, ...] = ()
        if spec.metrics:
            metric_names = tuple(dict.fromkeys(
                m for i in spec.cells for m in _metric_names(cells[i].source)))
        item_reads = {k: v for k, v in reads[name].items() if k != items_skip.get(name)}
        used = _parameters_read([*setup_cells, *spec.cells], names, parameter_names, parameter_cells)
        modules = tuple(dict.fromkeys(m for i in [*parameter_cells, *setup_cells, *spec.cells]
                                      for m in loaded_modules(cells[i].source)))
        apps[name] = AppNode(spec, reads[name], frozenset(defines[name]),
                             {k: tuple(v) for k, v in ships[name].items()}, metric_names,
                             item_reads if spec.map else None, used, modules)
    last = {n: str(app_of[indices[-1]]) for n, indices in definers.items()}
    return Pipeline(parsed, graph, apps, order, parameter_names, setup_names, _warnings(parsed, names), last)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _parameters_read(indices: list[int], names: Mapping[int, CellNames], parameters: frozenset[str],
                     parameter_cells: list[int]) -> frozenset[str]:
    """The parameters ``indices``' cells read (their functions too, when called; and the
    functions of the parameters cells, which read the injected values)."""
    read: set[str] = {n for i in parameter_cells if i in names for _, found in names[i].callables for n in found}
    for index in indices:
        found = names.get(index)
        if found is None:
            continue
        read |= found.reads
        for _, globals_read in found.callables:
            read |= globals_read
    return frozenset(read & parameters)


def _analyse(parsed: ParsedNotebook) -> dict[int, CellNames]:
    """What each code cell reads and defines, in the context of the whole notebook
    (its imports, ``defaultdict`` names, star imports and written modules)."""
    cells = [c for c in parsed.cells if c.role in ("app", "setup", "parameters", "metrics")]
    first = {c.index: analyse_cell(c.source) for c in cells}
    root = parsed.path.resolve().parent if parsed.path else None
    context = notebook_context(first.values(), root, _written(cells, first))
    return {c.index: analyse_cell(c.source, context) for c in cells}


def _written(cells: Any, names: Mapping[int, CellNames]) -> dict[str, str]:
    """File -> text, for the files ``%%writefile`` cells write (appends joined)."""
    out: dict[str, str] = {}
    for c in cells:
        for path in names[c.index].writes:
            body = c.source.partition("\n")[2]
            out[normalise_path(path)] = out.get(normalise_path(path), "") + body
    return out


def _with_files(parsed: ParsedNotebook, names: Mapping[int, CellNames]) -> dict[str, AppSpec]:
    """The apps with the files their cells write (``%%writefile F``: ``outputs:F``) and
    the written modules they import (``inputs:``, so the import waits for the writer)."""
    cells = parsed.cells
    writers: dict[str, list[int]] = {}
    for index, found in sorted(names.items()):
        for path in found.writes:
            writers.setdefault(normalise_path(path), []).append(index)
    outputs: dict[str, list[str]] = {}
    inputs: dict[str, list[str]] = {}
    for path, indices in writers.items():
        for app in filter(None, (cells[i].app for i in indices)):
            outputs.setdefault(app, []).append(path)
    for index, found in sorted(names.items()):
        for path in _imported_files(found, writers):
            if cells[index].role == "setup" and any(cells[i].role != "setup" for i in writers[path]):
                _setup_imports_written(cells, index, path, writers[path])
            app = cells[index].app
            if app and any(cells[i].app != app for i in writers[path]):
                inputs.setdefault(app, []).append(path)
    specs = dict(parsed.apps)
    for app in set(outputs) | set(inputs):
        spec = specs[app]
        specs[app] = replace(spec, inputs=tuple(dict.fromkeys([*spec.inputs, *inputs.get(app, [])])),
                             outputs=tuple(dict.fromkeys([*spec.outputs, *outputs.get(app, [])])))
    return specs


def _imported_files(found: CellNames, writers: Mapping[str, list[int]]) -> list[str]:
    """The written files that the modules ``found`` imports are (``a.b``: a, a.b)."""
    out = []
    for module in found.imported_modules:
        parts = module.split(".")
        for n in range(1, len(parts) + 1):
            out += [f for f in module_files(".".join(parts[:n])) if f in writers]
    return list(dict.fromkeys(out))


def _setup_imports_written(cells: Any, index: int, path: str, writers: list[int]) -> None:
    writer = next(i for i in writers if cells[i].role != "setup")
    raise GraphError(
        f"setup cell {index} (id {cells[index].id}) imports the module in {path}, which cell "
        f"{writer} (id {cells[writer].id}, app {cells[writer].app!r}) writes: setup cells run at "
        f"the start of every app, before that file exists. Move the import into the apps that "
        f"use the module, or the cell that writes it into setup")


def _warnings(parsed: ParsedNotebook, names: Mapping[int, CellNames]) -> tuple[str, ...]:
    """One line per call whose names the analysis cannot see."""
    out = []
    for index, found in sorted(names.items()):
        cell = parsed.cells[index]
        for call in found.hidden:
            fix = ("import the names it uses by name" if call.startswith("from ") else
                   "use a literal string, or keep the code that sets and uses them in one app")
            out.append(f"cell {index} (id {cell.id}): {call} reaches names nbpipe cannot see, "
                       f"so they do not flow between apps; {fix}")
    return tuple(out)


def execution_counts(parsed: ParsedNotebook) -> dict[int, int]:
    """Cell index -> the execution count papermill gives that cell in a serial run.

    Every code cell with a non-blank source counts, as nbclient sends it to the
    kernel (``skip`` cells included: they keep their place in the numbering).
    Without injected parameters; papermill's ``injected-parameters`` cell,
    when there is one, shifts the cells after the parameters cell by one.
    """
    counts: dict[int, int] = {}
    for info in parsed.cells:
        if info.cell_type == "code" and info.source.strip():
            counts[info.index] = len(counts) + 1
    return counts


def _with_output_history(names: dict[int, CellNames], parsed: ParsedNotebook) -> dict[int, CellNames]:
    """A cell that shows a result defines ``_N`` (``Out[N]``), N its execution count,
    so an app reading ``Out[N]`` or ``_N`` gets it from the app of that cell.
    ``_``, ``__`` and ``___`` read the last three results above the cell, until a
    cell assigns one of them (``for _ in …``): IPython then stops updating them."""
    out = dict(names)
    results: list[int] = []  # counts of the cells above that show a result
    assigned = False
    for index, count in sorted(execution_counts(parsed).items()):
        if index not in out:
            continue
        assigned = assigned or bool(_UNDERS & out[index].defines)
        unders = _UNDERS & out[index].reads
        if unders and not assigned:
            recent = {f"_{k}" for k in results[-max(map(len, unders)):]}
            out[index] = replace(out[index], reads=(out[index].reads - unders) | recent)
        if parsed.cells[index].role != "parameters" and shows_result(parsed.cells[index].source):
            out[index] = replace(out[index], defines=out[index].defines | {f"_{count}"})
            results.append(count)
    return out


def _with_global_writes(names: dict[int, CellNames], cells: Any) -> dict[int, CellNames]:
    """A cell that calls a function assigning globals (``global count``) defines them."""
    writes: dict[str, set[str]] = {}
    for found in names.values():
        for function, assigned in found.global_writes:
            writes.setdefault(function, set()).update(assigned)
    if not writes:
        return names
    out = dict(names)
    for c in cells:
        if c.role not in ("app", "metrics"):
            continue
        found = names[c.index]
        # a function defined in this same cell assigns its globals as part of the
        # cell's own analysis; one from another app is among the cell's reads
        called = {f for f in writes if f in found.reads}
        extra = set().union(*(writes[f] for f in called)) if called else set()
        if extra - found.defines or extra - found.reads:
            # it reads them too: ``count += 1``, a draw continues the generator's state
            out[c.index] = replace(found, reads=found.reads | extra, defines=found.defines | extra)
    return out


def _late_bound(name: str, producer: str, index: int, app: str, own: set[str], got: dict[str, str],
                first_read: dict[str, int], callables: dict[str, dict[str, frozenset[str]]],
                definers: dict[str, list[int]], app_of: Mapping[int, str | None]) -> None:
    """A function read from another app (or defined in this one) looks its globals up
    when it is called, in serial execution the values above the calling cell: read those too."""
    todo = [(name, producer)]
    while todo:
        function, source = todo.pop()
        for g in sorted(callables.get(source, {}).get(function, ())):
            if g in own or g in got:
                continue
            provider = _nearest_definer(definers.get(g, []), index, app, app_of)
            if provider is not None:
                got[g], first_read[g] = provider, index
                todo.append((g, provider))


def _map_source(spec: AppSpec, cells: Any, definers: dict[str, list[int]],
                app_of: Mapping[int, str | None], everywhere: frozenset[str]) -> str | None:
    """The app that defines a map: app's iterable (None: parameters or setup define it)."""
    assert spec.map is not None
    first = spec.cells[0]
    producer = _nearest_definer(definers.get(spec.map.iterable, []), first, spec.name, app_of)
    if producer is None and spec.map.iterable not in everywhere:
        index = spec.origin.get("map", first)
        raise TagError(f"map: iterates over {spec.map.iterable!r}, which no app above this cell, "
                       "no parameters cell and no setup cell defines",
                       cell_index=index, cell_id=cells[index].id,
                       tag=f"map:{spec.map.item}={spec.map.iterable}")
    return producer


def _nearest_definer(indices: list[int], before: int, app: str, app_of: Mapping[int, str | None]) -> str | None:
    """The app of the nearest cell above ``before`` that defines the name, other than ``app``."""
    pos = bisect.bisect_left(indices, before) - 1
    while pos >= 0:
        owner = app_of[indices[pos]]
        if owner != app:
            return owner
        pos -= 1
    return None


def _file_edges(specs: Mapping[str, AppSpec]) -> list[tuple[str, str, str]]:
    """(producer, consumer, pattern) for each ``inputs:`` pattern another app's
    ``outputs:`` match. A plain path is looked up; only a glob scans the outputs
    (comparing every input with every output took 14 s for 10,000 of each)."""
    producers: dict[str, list[str]] = {}
    for name, spec in specs.items():
        for output in spec.outputs:
            producers.setdefault(output, []).append(name)
    found = []
    for name, spec in specs.items():
        for pattern in spec.inputs:
            if _GLOB.search(pattern):
                outputs = fnmatch.filter(producers, pattern)
            else:
                outputs = [pattern] if pattern in producers else []
            for other in dict.fromkeys(p for out in outputs for p in producers[out]):
                if other != name:
                    found.append((other, name, pattern))
    return found


def _why(graph: Any, u: str, v: str) -> str:
    data = graph.edges[u, v]
    parts = []
    if data["names"]:
        parts.append("reads " + ", ".join(sorted(data["names"])))
    if "after" in data["kinds"]:
        parts.append(f"after:{u}")
    if data["files"]:
        parts.append("inputs:" + ", ".join(sorted(data["files"])))
    return "; ".join(parts)


def _did_you_mean(name: str, choices: Any) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _metric_names(source: str) -> list[str]:
    out = []
    for line in source.splitlines():
        m = _METRIC_LINE.match(line)
        if m:
            out.append(m.group(1) or m.group(2))
    return out
