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

  * a cell that only imports or defines functions and classes (``%matplotlib``,
    ``%config`` and ``%load_ext`` lines allowed), reads only
    what such cells define, and defines nothing another cell defines, becomes
    ``setup`` (it runs at the start of every app);
  * a value that cannot ship (a generator, an open file, a lock: what the
    defining expression shows) keeps its producer and its readers, and
    every cell between them in the graph, in one app;
  * a cell whose only input is one app joins that app when nothing else
    would wait for it there (a chain stays one app);
  * a light cell with nothing downstream (a display, a plot, a print) joins
    the one app it reads from; a light cell with nothing upstream joins the
    one app that reads it. Light means no loop, comprehension or call of a
    function the notebook defines, in at most :data:`LIGHT_STATEMENTS`
    statements, unless a previous run measured it at :data:`LIGHT_SECONDS` or
    more (the cache records each cell's duration). A measurement only ever
    makes a cell heavy: were a cell measured lighter than it looks to join
    another app, that app's cache key would change and it would run again.

  Independent branches stay apart, so they run in parallel.

``parameters``, ``setup``, ``skip`` and ``metrics`` keep their meaning; every
other nbpipe tag is dropped (:attr:`Split.dropped`, which the CLI warns
about); tags nbpipe does not know (``remove-input``, ...) are kept.
"""

from __future__ import annotations

import ast
import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import nbformat

from .errors import NbpipeError, UsageError
from .graph import Pipeline, build_pipeline
from .names import analyse_cell, transformed_source
from .parse import APP_NAME, PREFIX_ALIASES, RESERVED_NAMES, ROLE_ALIASES, parse_notebook, runs_nbpipe
from .shape import regular

__all__ = ["LIGHT_SECONDS", "LIGHT_STATEMENTS", "MODES", "Group", "Split", "cell_digest", "cell_durations", "restore_tags",
           "split_notebook"]

MODES = ("cells", "auto")
#: Roles a split keeps (canonical names; their Kale aliases count too).
KEPT_ROLES = frozenset({"parameters", "setup", "skip", "metrics"})
#: A cell measured to take less than this joins its neighbour's app.
LIGHT_SECONDS = 0.25
#: A cell never measured counts as light up to this many statements.
LIGHT_STATEMENTS = 5
#: Line magics that only configure the session: a cell of imports that runs them can still be setup.
SETUP_MAGICS = frozenset({"matplotlib", "config", "load_ext", "autoreload", "aimport"})
#: Calls whose result cannot ship (module, function); a generator expression cannot either.
UNSHIPPABLE_CALLS = frozenset({
    ("", "open"), ("io", "open"), ("threading", "Lock"), ("threading", "RLock"), ("threading", "Thread"),
    ("threading", "Condition"), ("threading", "Semaphore"), ("threading", "Event"),
    ("socket", "socket"), ("sqlite3", "connect"), ("multiprocessing", "Pool"),
    ("csv", "reader"), ("csv", "writer"), ("csv", "DictReader"), ("csv", "DictWriter"),
})
#: Calls whose result stays lazy over its arguments (so cannot ship when one of them cannot);
#: every ``itertools.`` function too.
LAZY_CALLS = frozenset({("", "enumerate"), ("", "zip"), ("", "map"), ("", "filter"), ("", "iter"), ("", "reversed")})


@dataclass(frozen=True)
class Group:
    """An app a split made: its cells (indices into the notebook) and why they are together."""

    app: str
    cells: tuple[int, ...]
    why: tuple[str, ...] = ()


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
        lines = [f"--split {self.mode}: {len(self.groups)} app(s) from "
                 f"{sum(len(g.cells) for g in self.groups)} code cell(s)"]
        for index, reason in self.setup:
            lines.append(f"  setup: cell {self.numbers[index]} ({reason})")
        for group in self.groups:
            numbers = ", ".join(str(self.numbers[i]) for i in group.cells)
            lines.append(f"  {group.app}: cell{'s' if len(group.cells) > 1 else ''} {numbers}")
            lines += [f"    {why}" for why in group.why]
        return lines


def cell_digest(source: str) -> str:
    """The key under which a cell's measured duration is kept (its source, stripped)."""
    return hashlib.sha256(source.strip().encode()).hexdigest()[:32]


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
        split = Split(mode, _tagged(base, groups, ()), groups, (), dropped, numbers)
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


def _tagged(base: Any, groups: Iterable[Group], setup: Iterable[int]) -> Any:
    nb = copy.deepcopy(base)
    for group in groups:
        for index in group.cells:
            nb.cells[index].metadata["tags"] = [f"app:{group.app}", *nb.cells[index].metadata.get("tags", [])]
    for index in setup:
        nb.cells[index].metadata["tags"] = ["setup", *nb.cells[index].metadata.get("tags", [])]
    for cell in nb.cells:
        if not cell.metadata.get("tags"):
            cell.metadata.pop("tags", None)
    return nb


def _pipeline(base: Any, path: str | Path | None, free: list[int], setup: Iterable[int],
              numbers: Mapping[int, int]) -> Pipeline:
    setup = set(setup)
    groups = [Group(f"cell{numbers[i]}", (i,)) for i in free if i not in setup]
    return build_pipeline(parse_notebook(_tagged(base, groups, setup), path))


# ---------------------------------------------------------------- auto


def _auto(base: Any, path: str | Path | None, free: list[int], numbers: dict[int, int],
          dropped: tuple[tuple[int, str], ...], durations: Mapping[str, float]) -> Split:
    sources = {i: base.cells[i].source for i in free}
    setup = _setup_cells(base, path, free, numbers)
    try:
        pipeline = _pipeline(base, path, free, setup, numbers)
    except NbpipeError:
        setup = {}
        pipeline = _pipeline(base, path, free, (), numbers)
    cell_of = {f"cell{numbers[i]}": i for i in free if i not in setup}
    groups = _Groups(pipeline.graph.subgraph(cell_of), cell_of, numbers, sources)  # not a metrics app
    functions = _functions(sources.values())
    generators = _generator_functions(c.source for c in base.cells if c.cell_type == "code")
    for name, index in cell_of.items():
        groups.light[name] = _light(sources[index], durations, functions)
    _keep_unshippable(groups, pipeline, cell_of, sources, generators)
    groups.contract()
    chosen = groups.result()
    return Split("auto", _tagged(base, chosen, setup), chosen, tuple(sorted(setup.items())), dropped, numbers)


def _setup_cells(base: Any, path: str | Path | None, free: list[int], numbers: dict[int, int]) -> dict[int, str]:
    """The cells that only import and define, read only what such cells define (a function's
    globals too: the graph cannot see what a setup function reads when an app calls it), and
    define nothing another cell defines: cell index -> why it is setup."""
    candidates = {i for i in free if _only_definitions(base.cells[i].source)}
    if not candidates:
        return {}
    try:
        pipeline = _pipeline(base, path, free, (), numbers)
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
        setup_names = {n for c in chosen for n in pipeline.apps[app_of[c]].defines}
        reads = analyse_cell(base.cells[i].source).reads
        if all(definers[n] == 1 for n in pipeline.apps[app_of[i]].defines) \
                and upstream <= {app_of[c] for c in chosen} and not reads & (definers.keys() - setup_names):
            chosen[i] = "only imports and definitions"
    return chosen


def _only_definitions(source: str) -> bool:
    tree = _tree(source)
    if tree is None or not tree.body:
        return False
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)
    for stmt in tree.body:
        docstring = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        if not (isinstance(stmt, allowed) or docstring or _setup_magic(stmt)):
            return False
    return True


def _setup_magic(stmt: ast.stmt) -> bool:
    """``%matplotlib inline``, ``%load_ext autoreload``, ...: a line magic that only configures the session."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
        and call.func.attr == "run_line_magic" and bool(call.args) and isinstance(call.args[0], ast.Constant) \
        and call.args[0].value in SETUP_MAGICS


def _tree(source: str) -> ast.Module | None:
    try:
        return ast.parse(transformed_source(source))
    except (SyntaxError, ValueError, RecursionError):
        return None


def _functions(sources: Iterable[str]) -> frozenset[str]:
    """The names of the functions the notebook's cells define."""
    out: set[str] = set()
    for source in sources:
        tree = _tree(source)
        if tree is not None:
            out |= {s.name for s in ast.walk(tree) if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return frozenset(out)


def _generator_functions(sources: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for source in sources:
        tree = _tree(source)
        for stmt in ast.walk(tree) if tree is not None else ():
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(stmt)):
                out.add(stmt.name)
    return frozenset(out)


_HEAVY = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _light(source: str, durations: Mapping[str, float], functions: frozenset[str]) -> bool:
    """Whether a cell is cheap enough to join a neighbour's app (see the module's docstring)."""
    measured = durations.get(cell_digest(source))
    if measured is not None and measured >= LIGHT_SECONDS:
        return False  # measured light, it is judged by its look: the next run keeps its apps, and their cache
    tree = _tree(source)
    if tree is None or len(tree.body) > LIGHT_STATEMENTS:
        return False
    for node in ast.walk(tree):
        if isinstance(node, _HEAVY):
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            return False
    return True


def _unshippable(source: str, generators: frozenset[str], known: Mapping[str, str]) -> dict[str, str]:
    """Names a cell binds to a value that cannot ship, with what the value is (``known``: such
    names of the cells above)."""
    tree = _tree(source)
    out: dict[str, str] = {}
    for stmt in tree.body if tree is not None else ():
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        what = _unshippable_value(stmt.value, generators, {**known, **out})
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if what:
            out.update({t.id: what for t in targets if isinstance(t, ast.Name)})
    return out


def _unshippable_value(value: ast.expr, generators: frozenset[str], known: Mapping[str, str]) -> str | None:
    if isinstance(value, ast.GeneratorExp):
        return "a generator"
    if isinstance(value, ast.Name):
        return known.get(value.id)
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    if isinstance(func, ast.Name):
        if func.id in generators:
            return f"a generator ({func.id}() yields)"
        called = ("", func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        called = (func.value.id, func.attr)
    else:
        return None
    if called in UNSHIPPABLE_CALLS:
        return f"{'.'.join(filter(None, called))}(...)"
    if called in LAZY_CALLS or called[0] == "itertools":
        for arg in (*value.args, *(k.value for k in value.keywords)):
            inner = _unshippable_value(arg, generators, known)
            if inner:
                return f"{'.'.join(filter(None, called))}(...) over {inner}"
    return None


def _keep_unshippable(groups: _Groups, pipeline: Pipeline, cell_of: dict[str, int], sources: dict[int, str],
                      generators: frozenset[str]) -> None:
    """Merge each unshippable value's producer, its readers and every cell between them."""
    known: dict[str, str] = {}
    for name, index in sorted(cell_of.items(), key=lambda item: item[1]):
        found = _unshippable(sources[index], generators, known)
        known.update(found)
        for value, what in found.items():
            readers = [r for r in pipeline.apps[name].ships.get(value, ()) if r in cell_of]
            if readers:
                groups.merge_between(name, readers, f"{value} is {what}, which cannot ship: "
                                                    f"its readers run in the app that makes it")


class _Groups:
    """The apps being formed: a quotient of the one-app-per-cell graph, kept acyclic.

    A group is named by the first cell app it took in; ``owner`` maps every
    cell app to its group."""

    def __init__(self, graph: nx.DiGraph, cell_of: dict[str, int], numbers: Mapping[int, int],
                 sources: Mapping[int, str]) -> None:
        self.q = nx.DiGraph()
        self.q.add_nodes_from(graph.nodes)
        for u, v, data in graph.edges(data=True):
            self.q.add_edge(u, v, names=set(data.get("names", ())) | set(data.get("files", ())))
        self.members = {n: [cell_of[n]] for n in graph.nodes}
        self.owner = {n: n for n in graph.nodes}
        self.why: dict[str, list[str]] = {n: [] for n in graph.nodes}
        self.light: dict[str, bool] = {}
        self.numbers, self.sources = numbers, sources

    def merge(self, keep: str, other: str, why: str) -> None:
        """Put ``other``'s cells into ``keep``'s app."""
        for p, _, data in list(self.q.in_edges(other, data=True)):
            if p != keep:
                self._edge(p, keep, data["names"])
        for _, s, data in list(self.q.out_edges(other, data=True)):
            if s != keep:
                self._edge(keep, s, data["names"])
        self.q.remove_node(other)
        for cell_app, group in self.owner.items():
            if group == other:
                self.owner[cell_app] = keep
        self.members[keep] += self.members.pop(other)
        self.why[keep] += [why, *self.why.pop(other)]
        self.light[keep] = self.light.get(keep, False) and self.light.pop(other, False)

    def _edge(self, u: str, v: str, names: set[str]) -> None:
        if self.q.has_edge(u, v):
            self.q.edges[u, v]["names"] |= names
        else:
            self.q.add_edge(u, v, names=set(names))

    def merge_between(self, producer: str, readers: Iterable[str], why: str) -> None:
        """Merge ``producer``, ``readers`` and every app on a path between them into one."""
        head = self.owner[producer]
        for reader in readers:
            tail = self.owner[reader]
            if tail == head:
                continue
            between = (nx.descendants(self.q, head) & nx.ancestors(self.q, tail)) | {tail}
            for other in sorted(between, key=self._first):
                self.merge(head, other, why)

    def _first(self, group: str) -> int:
        return min(self.members[group])

    def contract(self) -> None:
        """Join chains, light sinks and light sources until nothing changes."""
        while self._chain() or self._light_sink() or self._light_source() or self._light_alone():
            pass

    def _chain(self) -> bool:
        for v in sorted(self.q.nodes, key=self._first):
            preds = list(self.q.predecessors(v))
            if len(preds) != 1:
                continue
            u = preds[0]
            if self.q.out_degree(u) > 1 and not self.q.out_degree(v):
                continue  # u feeds others that v cannot reach (the cheap case of the test below)
            if set(self.q.successors(u)) - {v} <= nx.descendants(self.q, v):
                self.merge(u, v, self._tie(u, v, "reads {names} from this app alone, and nothing waits for it"))
                return True
        return False

    def _light_sink(self) -> bool:
        for v in sorted(self.q.nodes, key=self._first):
            preds = list(self.q.predecessors(v))
            if len(preds) == 1 and not self.q.out_degree(v) and self.light.get(v):
                self.merge(preds[0], v, self._tie(preds[0], v, "light, reads {names}, and nothing reads it"))
                return True
        return False

    def _light_source(self) -> bool:
        for u in sorted(self.q.nodes, key=self._first):
            succs = list(self.q.successors(u))
            if len(succs) == 1 and not self.q.in_degree(u) and self.light.get(u):
                self.merge(succs[0], u, self._tie(u, succs[0], "light, and defines {names} for this app alone",
                                                  who=u))
                return True
        return False

    def _light_alone(self) -> bool:
        """A light app that reads nothing and is read by nothing joins the app of the cell above it."""
        order = sorted(self.q.nodes, key=self._first)
        for n, u in enumerate(order):
            if self.light.get(u) and not self.q.degree(u) and len(order) > 1:
                into = order[n - 1] if n else order[1]
                self.merge(into, u, f"cell{'s' if len(self.members[u]) > 1 else ''} "
                                    f"{', '.join(str(self.numbers[i]) for i in sorted(self.members[u]))}: "
                                    "light, and shares nothing with another cell")
                return True
        return False

    def _tie(self, u: str, v: str, text: str, who: str | None = None) -> str:
        names = ", ".join(sorted(self.q.edges[u, v]["names"])) or "nothing"
        cells = sorted(self.members[who or v])
        return f"cell{'s' if len(cells) > 1 else ''} {', '.join(str(self.numbers[i]) for i in cells)}: " \
               + text.format(names=names)

    def result(self) -> tuple[Group, ...]:
        taken: set[str] = set()
        out = []
        for group in sorted(self.members, key=self._first):
            cells = tuple(sorted(self.members[group]))
            name = _app_name(cells, self.sources, self.numbers, taken)
            out.append(Group(name, cells, tuple(self.why[group])))
        return tuple(out)


def _app_name(cells: tuple[int, ...], sources: Mapping[int, str], numbers: Mapping[int, int],
              taken: set[str]) -> str:
    """The first name the app's first cell assigns (``counts``), else ``cellN``; never twice."""
    name = f"cell{numbers[cells[0]]}"
    tree = _tree(sources[cells[0]])
    for stmt in tree.body if tree is not None else ():
        targets = stmt.targets if isinstance(stmt, ast.Assign) else \
            [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
        found = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)
                 and not n.id.startswith("_")]
        if found:
            name = found[0]
            break
    if name in RESERVED_NAMES or name in taken or not APP_NAME.match(name):
        name = f"{name}-{numbers[cells[0]]}" if APP_NAME.match(name) and name not in RESERVED_NAMES \
            else f"cell{numbers[cells[0]]}"
    taken.add(name)
    return name


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
