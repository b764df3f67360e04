"""Splitting a notebook without tags: ``--split cells|auto`` and ``nbpipe tag`` (SPEC §3).

A split writes tags, nothing more: :func:`split_notebook` returns a copy of
the notebook whose every code cell carries ``app:NAME`` (or ``setup``), and
the stages after it (parse, graph, compile, ...) run that copy as if a user
had tagged it. ``nbpipe tag`` writes the same copy to a file.

- ``cells``: every code cell is its own app, ``cellN`` for the cell at index N
  (cells are counted from 0, markdown too, as ``nbpipe check`` counts them).
- ``auto``: the cells are grouped from the dataflow that ``cells`` gives
  (:func:`nbpipe.graph.build_pipeline` over one app per cell), aiming at the
  shortest critical path with the fewest shipped values:

  * a cell that only imports or defines functions and classes (line magics
    of :data:`SETUP_MAGICS`, such as ``%matplotlib inline``, allowed), reads only
    what such cells define, now and when its functions are called later, and
    defines nothing another cell defines, becomes ``setup`` (it runs at the
    start of every app);
  * a value that cannot ship (a generator, an open file, a lock: what the
    defining expression shows, a generator function's call included wherever
    the function is defined; a class or function whose calls change its own
    state, as ``Particle.count += 1`` or ``def seen(x, memo={})``, whose every
    app would have its own count) keeps its producer and its readers, and
    every cell between them in the graph, in one app; such a definition is
    never ``setup`` either;
  * a file that a cell writes (``open(p, "w")``, ``df.to_csv(p)``,
    ``Path(p).write_text(...)``, ``p`` a string literal) keeps every cell that
    names it, and every cell between them, in one app: the analysis follows
    names, not files, and apart the reader could run before the writer; a
    merge that would make an app read one name from two apps takes in the
    later of them (it redefines the name between the app's cells);
  * a cell whose only input is one app joins that app when nothing else
    would wait for it there (a chain stays one app);
  * a light cell with nothing downstream (a display, a plot, a print) joins
    the one app it reads from, and light cells with nothing downstream that
    wait for the same apps join each other; a light cell with nothing
    upstream joins the one app that reads it, and one that shares nothing
    joins the app above it. Light means no loop, comprehension or call of a
    function the notebook defines (in any cell, one tagged
    ``setup`` too), in at most :data:`LIGHT_STATEMENTS`
    statements, unless a previous run measured it at :data:`LIGHT_SECONDS` or
    more (the cache records each cell's duration). A measurement only ever
    makes a cell heavy: were a cell measured lighter than it looks to join
    another app, that app's cache key would change and it would run again.

  Independent branches stay apart, so they run in parallel. Should the apps
  chosen not build, the split drops its moves step by step, down to one app
  per cell, and its explanation says so. The facts read from a cell's source
  are :mod:`nbpipe.cellsource`'s; the graph being merged is
  :class:`nbpipe.grouping.Groups`.

Under both splits, two cells that use the same file (a string such as
``"data/hist.npy"`` given to a call) where either writes it are ordered: the
later cell's app gets ``after:`` the earlier one's, as serial execution
orders them (``auto`` has put them in one app already).

``parameters``, ``setup``, ``skip`` and ``metrics`` keep their meaning (the
``metrics`` cells stay their own block, which ``auto`` groups around); every
other nbpipe tag is dropped (:attr:`Split.dropped`, which the CLI warns
about); tags nbpipe does not know (``remove-input``, ...) are kept.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import nbformat

from .cellsource import (LIGHT_SECONDS, LIGHT_STATEMENTS, cell_digest, file_order, file_uses, functions,
                         generator_functions, late_reads, light, only_definitions, stateful_definitions, unshippable)
from .errors import NbpipeError, NotebookError, UsageError
from .graph import Pipeline, build_pipeline
from .grouping import Group, Groups
from .names import analyse_cell
from .parse import PREFIX_ALIASES, ROLE_ALIASES, parse_notebook, runs_nbpipe
from .shape import regular

__all__ = ["LIGHT_SECONDS", "LIGHT_STATEMENTS", "MODES", "Group", "Split", "cell_digest", "cell_durations", "restore_tags",
           "split_notebook"]

MODES = ("cells", "auto")
#: Roles a split keeps (canonical names; their Kale aliases count too).
KEPT_ROLES = frozenset({"parameters", "setup", "skip", "metrics"})

@dataclass(frozen=True)
class Split:
    """What :func:`split_notebook` chose: the tagged notebook, its apps and setup cells."""

    mode: str
    nb: Any
    groups: tuple[Group, ...]
    #: cells made ``setup`` by the split, with the reason
    setup: tuple[tuple[int, str], ...] = ()
    #: (cell index, tag) of the nbpipe tags the split ignored
    dropped: tuple[tuple[int, str], ...] = ()
    #: code cell index -> the number ``cellN`` and the explanation name it by
    numbers: Mapping[int, int] = field(default_factory=dict)
    #: cell id -> the tags the cell had before the split (:func:`restore_tags`)
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """What the merged notebook records (``metadata.nbpipe.split``)."""
        cells = self.nb.cells
        return {"mode": self.mode, "apps": {g.app: [cells[i].id for i in g.cells] for g in self.groups},
                "setup": [cells[i].id for i, _ in self.setup],
                "ignored_tags": sorted({tag for _, tag in self.dropped})}

    def warning(self) -> str | None:
        """One line naming the tags the split ignored, or None."""
        if not self.dropped:
            return None
        tags = sorted({tag for _, tag in self.dropped})
        cells = sorted({self.numbers.get(i, i) for i, _ in self.dropped})
        return (f"--split {self.mode} ignores the notebook's own app tags ({', '.join(tags)}) on cell(s) "
                f"{', '.join(map(str, cells))}; only parameters, setup, skip and metrics keep their meaning")

    def explain(self) -> list[str]:
        """Lines saying which apps the split chose and what ties each app's cells together."""
        cells = sum(len(g.cells) for g in self.groups) + len(self.setup)
        lines = [f"--split {self.mode}: {len(self.groups)} app(s)"
                 + (f" and {len(self.setup)} setup cell(s)" if self.setup else "") + f" from {cells} code cell(s)"]
        for index, reason in self.setup:
            lines.append(f"  setup: cell {self.numbers[index]} ({reason})")
        for group in self.groups:
            numbers = ", ".join(str(self.numbers[i]) for i in group.cells)
            lines.append(f"  {group.app}: cell{'s' if len(group.cells) > 1 else ''} {numbers}")
            lines += [f"    {why}" for why in group.why]
            if group.beside:
                lines.append(f"    runs beside {', '.join(group.beside)}: no value flows between them")
        return lines


def split_notebook(nb: Any, mode: str, path: str | Path | None = None,
                   durations: Mapping[str, float] | None = None) -> Split:
    """Tag ``nb`` as ``--split mode`` would (``durations``: seconds by :func:`cell_digest`)."""
    if mode not in MODES:
        raise UsageError(f"unknown split {mode!r}; choose one of: {', '.join(MODES)}")
    base, dropped, kept, tags = _untagged(nb)
    numbers = _code_numbers(base)
    free = [i for i in numbers if i not in kept]
    if mode == "cells":
        groups = tuple(Group(f"cell{numbers[i]}", (i,)) for i in free)
        order = file_order({i: base.cells[i].source for i in free})
        split = Split(mode, _tagged(base, groups, (), order), groups, (), dropped, numbers)
    else:
        split = _auto(base, path, free, numbers, dropped, durations or {})
    return replace(split, tags=tags)


def restore_tags(merged: Any, split: Split) -> None:
    """Give the merged notebook's cells the tags they had before the split (by cell id)."""
    for cell in merged.cells:
        tags = split.tags.get(cell.get("id"))
        if tags:
            cell.metadata["tags"] = list(tags)
        elif tags is not None:
            cell.metadata.pop("tags", None)


# ---------------------------------------------------------------- tags


def _untagged(nb: Any) -> tuple[Any, tuple[tuple[int, str], ...], dict[int, str], dict[str, tuple[str, ...]]]:
    """A regular copy of ``nb`` without nbpipe's app tags; the dropped tags; the kept roles;
    every cell's tags as they were, by cell id."""
    nb = regular(nbformat.from_dict(copy.deepcopy(nb)))
    before = {cell.id: tuple(cell.metadata.get("tags", [])) for cell in nb.cells}
    dropped: list[tuple[int, str]] = []
    kept: dict[int, str] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = []
        for tag in cell.metadata.get("tags", []):
            role = ROLE_ALIASES.get(tag)
            if role in KEPT_ROLES:
                kept.setdefault(index, role)
                tags.append(tag)
            elif role is None and (":" not in tag or tag.partition(":")[0] not in PREFIX_ALIASES):
                tags.append(tag)  # not ours: remove-input, hide-output, ...
            else:
                dropped.append((index, tag))
        cell.metadata["tags"] = tags
        if runs_nbpipe(cell.source):
            kept.setdefault(index, "skip")  # parse skips it: no app of the split may hold it
    return nb, tuple(dropped), kept, before


def _code_numbers(nb: Any) -> dict[int, int]:
    """Code cell -> the number nbpipe names it by: its index in the notebook, as
    ``nbpipe check`` and every error message count cells."""
    return {index: index for index, cell in enumerate(nb.cells) if cell.cell_type == "code"}


def _tagged(base: Any, groups: Iterable[Group], setup: Iterable[int],
            order: Iterable[tuple[int, int, str]] = ()) -> Any:
    """``base`` with each group's ``app:`` tags, ``setup`` tags, and an ``after:`` for each
    (earlier cell, later cell) pair of ``order`` that falls in two apps."""
    nb = copy.deepcopy(base)
    groups = list(groups)
    app_of = {i: g.app for g in groups for i in g.cells}
    for group in groups:
        for index in group.cells:
            nb.cells[index].metadata["tags"] = [f"app:{group.app}", *nb.cells[index].metadata.get("tags", [])]
    for i, j, _ in order:
        if i in app_of and j in app_of and app_of[i] != app_of[j]:
            after = f"after:{app_of[i]}"
            first = min(c for c in app_of if app_of[c] == app_of[j])
            if after not in nb.cells[first].metadata["tags"]:
                nb.cells[first].metadata["tags"].append(after)
    for index in setup:
        nb.cells[index].metadata["tags"] = ["setup", *nb.cells[index].metadata.get("tags", [])]
    for cell in nb.cells:
        if not cell.metadata.get("tags"):
            cell.metadata.pop("tags", None)
    return nb


def _pipeline(base: Any, path: str | Path | None, free: list[int], setup: Iterable[int],
              numbers: Mapping[int, int], order: Iterable[tuple[int, int, str]] = ()) -> Pipeline:
    """The pipeline of one app per cell (but ``setup``), with the file ``order`` as ``after:``."""
    setup = set(setup)
    groups = [Group(f"cell{numbers[i]}", (i,)) for i in free if i not in setup]
    return build_pipeline(parse_notebook(_tagged(base, groups, setup, order), path))


# ---------------------------------------------------------------- auto


def _auto(base: Any, path: str | Path | None, free: list[int], numbers: dict[int, int],
          dropped: tuple[tuple[int, str], ...], durations: Mapping[str, float]) -> Split:
    """The grouping of the module's docstring; should its apps not build (an app would read a
    name from two apps), the same without the setup cells' and the unshippable values' moves,
    then one app per cell, each saying so in the explanation."""
    sources = {i: base.cells[i].source for i in free}
    order = file_order(sources)
    setup = _setup_cells(base, path, free, numbers, order)
    tries = [(setup, True, ""), (setup, False, "without keeping unshippable values together"),
             ({}, False, "one app per cell, as --split cells")]
    problem = ""
    for setup, keep_unshippable, fallback in tries:
        try:
            pipeline = _pipeline(base, path, free, setup, numbers, order)
            groups = _grouping(pipeline, free, numbers, sources, order, setup, durations, keep_unshippable,
                               contract=bool(setup) or keep_unshippable or not fallback)
            split = Split("auto", _tagged(base, groups, setup, order), groups, tuple(sorted(setup.items())),
                          dropped, numbers)
            build_pipeline(parse_notebook(split.nb, path))
        except NbpipeError as exc:
            problem = str(exc).splitlines()[0]
            continue
        if fallback:
            return replace(split, groups=tuple(replace(g, why=(f"fell back to {fallback}: {problem}", *g.why))
                                               for g in split.groups[:1]) + split.groups[1:])
        return split
    raise NotebookError(f"--split auto found no grouping that builds: {problem}")


def _grouping(pipeline: Pipeline, free: list[int], numbers: Mapping[int, int], sources: Mapping[int, str],
              order: list[tuple[int, int, str]], setup: Mapping[int, str], durations: Mapping[str, float],
              keep_unshippable: bool, contract: bool) -> tuple[Group, ...]:
    """Group the one-app-per-cell ``pipeline`` (the module's docstring says how)."""
    cell_of = {f"cell{numbers[i]}": i for i in free if i not in setup}
    groups = Groups(_cell_graph(pipeline.graph, cell_of), cell_of, numbers, sources)
    for i, j, file in order:
        if i not in setup and j not in setup and groups.q.has_edge(f"cell{numbers[i]}", f"cell{numbers[j]}"):
            groups.q.edges[f"cell{numbers[i]}", f"cell{numbers[j]}"]["names"].add(f"file {file}")
    every = [cell.source for cell in pipeline.parsed.nb.cells if cell.cell_type == "code"]  # tagged setup too
    defined = functions(every)
    for name, index in cell_of.items():
        groups.light[name] = groups.cell_light[index] = light(sources[index], durations, defined)
    if keep_unshippable:
        _keep_unshippable(groups, pipeline, cell_of, sources, generator_functions(every))
        _keep_shared_files(groups, cell_of, sources)
    if contract:
        groups.contract()
    return groups.result()


def _cell_graph(graph: nx.DiGraph, cell_of: Mapping[str, int]) -> nx.DiGraph:
    """The graph of the cell apps alone: a block the split keeps as tagged (``metrics``)
    is left out, an edge through it kept as an edge around it, so that no merge makes
    a cycle through it."""
    out = graph.subgraph(cell_of).copy()
    for block in set(graph.nodes) - set(cell_of):
        for u in graph.predecessors(block):
            for v in graph.successors(block):
                if u in cell_of and v in cell_of and not out.has_edge(u, v):
                    out.add_edge(u, v, names=set(graph.edges[block, v].get("names", ())))
    return out


def _setup_cells(base: Any, path: str | Path | None, free: list[int], numbers: dict[int, int],
                 order: Iterable[tuple[int, int, str]]) -> dict[int, str]:
    """The cells that only import and define, read only what such cells define (a function's
    globals too: the graph cannot see what a setup function reads when an app calls it), and
    define nothing another cell defines: cell index -> why it is setup."""
    candidates = {i for i in free if only_definitions(base.cells[i].source)
                  and not stateful_definitions(base.cells[i].source)}
    if not candidates:
        return {}
    try:
        pipeline = _pipeline(base, path, free, (), numbers, order)
    except NbpipeError:
        return {}
    app_of = {i: f"cell{numbers[i]}" for i in free}
    definers: dict[str, int] = {}
    for i in free:
        for name in pipeline.apps[app_of[i]].defines:
            definers[name] = definers.get(name, 0) + 1
    chosen: dict[int, str] = {}
    for i in sorted(candidates):
        upstream = set(pipeline.graph.predecessors(app_of[i]))
        elsewhere = {n for c in free if c != i and c not in chosen for n in pipeline.apps[app_of[c]].defines}
        setup_names = {n for c in chosen for n in pipeline.apps[app_of[c]].defines}
        reads = analyse_cell(base.cells[i].source).reads
        if all(definers[n] == 1 for n in pipeline.apps[app_of[i]].defines) \
                and upstream <= {app_of[c] for c in chosen} and not late_reads(base.cells[i].source) & elsewhere \
                and not reads & (definers.keys() - setup_names):
            chosen[i] = "only imports and definitions"
    return chosen


def _keep_unshippable(groups: Groups, pipeline: Pipeline, cell_of: dict[str, int], sources: dict[int, str],
                      generators: frozenset[str]) -> None:
    """Merge each unshippable value's producer, its readers and every cell between them."""
    known: dict[str, str] = {}
    for name, index in sorted(cell_of.items(), key=lambda item: item[1]):
        found = unshippable(sources[index], generators, known)
        known.update(found)
        for value, what in found.items():
            readers = [r for r in pipeline.apps[name].ships.get(value, ()) if r in cell_of]
            if readers:
                groups.merge_between(name, readers, f"{value} is {what}, which cannot ship: "
                                                    f"its readers run in the app that makes it")


def _keep_shared_files(groups: Groups, cell_of: dict[str, int], sources: dict[int, str]) -> None:
    """Merge the cells that use a file one of them writes (the analysis sees names, not files:
    apart, the reader could run before the writer)."""
    uses: dict[str, list[str]] = {}
    written: set[str] = set()
    for name, index in sorted(cell_of.items(), key=lambda item: item[1]):
        reads, writes = file_uses(sources[index])
        written |= writes
        for path in reads | writes:
            uses.setdefault(path, []).append(name)
    for path in sorted(written):
        first, *others = uses[path]
        groups.merge_between(first, others, f"file {path} is written here and used by another cell: "
                                            "they run in one app, in order")


def cell_durations(merged: Any) -> dict[str, float]:
    """What each code cell of a merged notebook took (its source's digest -> seconds),
    from the cells whose app completed; a map app's cell counts all its items."""
    out: dict[str, float] = {}
    for cell in merged.cells:
        meta = cell.metadata.get("nbpipe", {})
        if cell.cell_type != "code" or meta.get("status") != "completed":
            continue
        seconds = meta.get("duration", cell.metadata.get("papermill", {}).get("duration"))
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            out[cell_digest(cell.source)] = float(seconds)
    return out
