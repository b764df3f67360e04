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
    the one app it reads from; a light cell with nothing upstream joins the
    one app that reads it. Light means no loop, comprehension or call of a
    function the notebook defines (in any cell, one tagged
    ``setup`` too), in at most :data:`LIGHT_STATEMENTS`
    statements, unless a previous run measured it at :data:`LIGHT_SECONDS` or
    more (the cache records each cell's duration). A measurement only ever
    makes a cell heavy: were a cell measured lighter than it looks to join
    another app, that app's cache key would change and it would run again.

  Independent branches stay apart, so they run in parallel.

Both splits order cells that name the same file (a string such as
``"data/hist.npy"``) when either of them writes files (``np.save``,
``df.to_csv``, ``open(path, "w")``, a shell command): the later cell's app
gets ``after:`` the earlier one's, as serial execution orders them.

``parameters``, ``setup``, ``skip`` and ``metrics`` keep their meaning (the
``metrics`` cells stay their own block, which ``auto`` groups around); every
other nbpipe tag is dropped (:attr:`Split.dropped`, which the CLI warns
about); tags nbpipe does not know (``remove-input``, ...) are kept.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import nbformat

from .errors import NbpipeError, NotebookError, UsageError
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
LIGHT_STATEMENTS = 10
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
    #: the apps that share nothing with this one, up- or downstream: they may run beside it
    beside: tuple[str, ...] = ()


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
            if group.beside:
                lines.append(f"    runs beside {', '.join(group.beside)}: no value flows between them")
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
        order = _file_order({i: base.cells[i].source for i in free})
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
    order = _file_order(sources)
    setup = _setup_cells(base, path, free, numbers, order)
    tries = [(setup, True, ""), (setup, False, "without keeping unshippable values together"),
             ({}, False, "one app per cell, as --split cells")]
    problem = ""
    for setup, unshippable, fallback in tries:
        try:
            pipeline = _pipeline(base, path, free, setup, numbers, order)
            groups = _grouping(pipeline, free, numbers, sources, order, setup, durations, unshippable,
                               contract=bool(setup) or unshippable or not fallback)
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
              unshippable: bool, contract: bool) -> tuple[Group, ...]:
    """Group the one-app-per-cell ``pipeline`` (the module's docstring says how)."""
    cell_of = {f"cell{numbers[i]}": i for i in free if i not in setup}
    groups = _Groups(_cell_graph(pipeline.graph, cell_of), cell_of, numbers, sources)
    for i, j, file in order:
        if i not in setup and j not in setup and groups.q.has_edge(f"cell{numbers[i]}", f"cell{numbers[j]}"):
            groups.q.edges[f"cell{numbers[i]}", f"cell{numbers[j]}"]["names"].add(f"file {file}")
    every = [cell.source for cell in pipeline.parsed.nb.cells if cell.cell_type == "code"]  # tagged setup too
    functions = _functions(every)
    for name, index in cell_of.items():
        groups.light[name] = groups.cell_light[index] = _light(sources[index], durations, functions)
    if unshippable:
        _keep_unshippable(groups, pipeline, cell_of, sources, _generator_functions(every))
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
    candidates = {i for i in free if _only_definitions(base.cells[i].source)
                  and not _stateful_definitions(base.cells[i].source)}
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
    from_apps = set().union(*(pipeline.apps[app_of[i]].defines for i in free if i not in candidates))
    chosen: dict[int, str] = {}
    for i in sorted(candidates):
        upstream = set(pipeline.graph.predecessors(app_of[i]))
        elsewhere = {n for c in free if c != i and c not in chosen for n in pipeline.apps[app_of[c]].defines}
        setup_names = {n for c in chosen for n in pipeline.apps[app_of[c]].defines}
        reads = analyse_cell(base.cells[i].source).reads
        if all(definers[n] == 1 for n in pipeline.apps[app_of[i]].defines) \
                and upstream <= {app_of[c] for c in chosen} and not _late_reads(base.cells[i].source) & elsewhere \
                and not reads & (definers.keys() - setup_names):
            chosen[i] = "only imports and definitions"
    return chosen


def _late_reads(source: str) -> frozenset[str]:
    """The globals the functions and classes a cell defines read when they are called
    (a setup cell's function finds in its app only what setup cells define)."""
    return frozenset().union(*(reads for _, reads in analyse_cell(source).callables))


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
    """Whether ``stmt`` is a line magic of :data:`SETUP_MAGICS` (as IPython transforms it:
    ``get_ipython().run_line_magic('matplotlib', 'inline')``)."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and stmt.value.args):
        return False
    func, name = stmt.value.func, stmt.value.args[0]
    return isinstance(func, ast.Attribute) and func.attr == "run_line_magic" \
        and isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name) \
        and func.value.func.id == "get_ipython" and isinstance(name, ast.Constant) and name.value in SETUP_MAGICS


def _file_order(sources: Mapping[int, str]) -> list[tuple[int, int, str]]:
    """(earlier cell, later cell, path) for two cells using a file either of them writes
    (:func:`_file_uses`): serial execution orders them, so must the apps (``after:``)."""
    uses: dict[str, list[tuple[int, bool]]] = {}
    for index in sorted(sources):
        reads, writes = _file_uses(sources[index])
        for path in sorted(reads | writes):
            uses.setdefault(path, []).append((index, path in writes))
    out = []
    for path, cells in uses.items():
        for n, (j, j_writes) in enumerate(cells):
            out += [(i, j, path) for i, i_writes in cells[:n] if i_writes or j_writes]
    return out


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
    return out | _stateful_definitions(source)


def _stateful_definitions(source: str) -> dict[str, str]:
    """The classes and functions a cell defines that keep state their calls change: a
    class whose methods change its own attributes (``Particle.count += 1``,
    ``cls.seen.append(x)``, ``type(self).n = 0``), a function with a mutable default
    (``memo={}``) or one that changes its own attributes (``f.calls += 1``). Every app
    has its own copy, so what one app's calls count, another's do not see."""
    tree = _tree(source)
    out: dict[str, str] = {}
    for stmt in tree.body if tree is not None else ():
        if isinstance(stmt, ast.ClassDef) and _changes_itself(stmt, {stmt.name, "cls"}):
            out[stmt.name] = "a class whose methods change its own attributes"
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(isinstance(d, _MUTABLE) for d in stmt.args.defaults + stmt.args.kw_defaults):
                out[stmt.name] = "a function that keeps state in a mutable default"
            elif _changes_itself(stmt, {stmt.name}):
                out[stmt.name] = "a function that changes its own attributes"
    return out


_MUTABLE = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp, ast.Call)


def _changes_itself(definition: ast.stmt, selves: set[str]) -> bool:
    """Whether a class's (or function's) body changes an attribute of ``selves``."""
    for node in ast.walk(definition):
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            targets = [node.func.value]  # Particle.seen.append(...): a method of an attribute
        else:
            continue
        if any(_of_class(t, selves) for t in targets):
            return True
    return False


def _of_class(node: ast.expr, selves: set[str]) -> bool:
    """Whether ``node`` is an attribute (or item of one) of the class itself: ``C.x``,
    ``cls.x[0]``, ``type(self).x``, ``self.__class__.x``."""
    if not isinstance(node, (ast.Attribute, ast.Subscript)):
        return False
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute) and node.attr == "__class__":
            return True
        node = node.value
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "type"
    return isinstance(node, ast.Name) and node.id in selves


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


def _keep_shared_files(groups: _Groups, cell_of: dict[str, int], sources: dict[int, str]) -> None:
    """Merge the cells that use a file one of them writes (the analysis sees names, not files:
    apart, the reader could run before the writer)."""
    uses: dict[str, list[str]] = {}
    written: set[str] = set()
    for name, index in sorted(cell_of.items(), key=lambda item: item[1]):
        reads, writes = _file_uses(sources[index])
        written |= writes
        for path in reads | writes:
            uses.setdefault(path, []).append(name)
    for path in sorted(written):
        first, *others = uses[path]
        groups.merge_between(first, others, f"file {path} is written here and used by another cell: "
                                            "they run in one app, in order")


#: A string that names a file: a relative or absolute path with an extension, or with a folder.
_PATH = re.compile(r"^[\w.~/-]*(?:\.[A-Za-z0-9]{1,6}|/[\w.-]+)$")
#: Calls that write the file they are given (``df.to_csv(p)``, ``np.save(p, a)``, ``Path(p).write_text(s)``).
_WRITES = re.compile(r"^(?:to_\w+|save\w*|savefig|dump|write\w*|mkdir|touch|copy\w*|move|rename|unlink|remove)$")


def _file_uses(source: str) -> tuple[set[str], set[str]]:
    """The file paths a cell's calls are given as string literals: (read, written)."""
    tree = _tree(source)
    reads: set[str] = set()
    writes: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if not isinstance(node, ast.Call):
            continue
        paths = {a.value for a in [*node.args, *(k.value for k in node.keywords)]
                 if isinstance(a, ast.Constant) and isinstance(a.value, str) and _PATH.match(a.value)}
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Attribute) and _WRITES.match(called) and isinstance(func.value, ast.Call):
            inner = func.value  # Path('out.txt').write_text(...)
            writes |= {a.value for a in inner.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                       and _PATH.match(a.value)}
        if called == "open":
            mode = node.args[1] if len(node.args) > 1 else \
                next((k.value for k in node.keywords if k.arg == "mode"), None)
            writing = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+")
            (writes if writing else reads).update(paths)
        else:
            (writes if _WRITES.match(called) else reads).update(paths)
    return reads, writes


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
        self.cell_light: dict[int, bool] = {}
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
        """Merge ``producer``, ``readers`` and every app on a path between them, either
        way (a group holds cells from both sides of another), into one."""
        head = self.owner[producer]
        for reader in readers:
            tail = self.owner[reader]
            if tail == head:
                continue
            between = (nx.descendants(self.q, head) & nx.ancestors(self.q, tail)) \
                | (nx.descendants(self.q, tail) & nx.ancestors(self.q, head)) | {tail}
            for other in sorted(between, key=self._first):
                self.merge(head, other, why)
        self._one_value_each(head, why)

    def _one_value_each(self, group: str, why: str) -> None:
        """An app receives one value of each name: when ``group`` now reads a name from two
        apps, the later one (a redefinition between its cells) joins it too."""
        producers: dict[str, list[str]] = {}
        for p, _, data in self.q.in_edges(group, data=True):
            for n in data["names"]:
                producers.setdefault(n, []).append(p)
        later = sorted({p for ps in producers.values() if len(ps) > 1 for p in sorted(ps, key=self._first)[1:]},
                       key=self._first)
        if later:
            self.merge_between(group, later[:1], why)

    def _first(self, group: str) -> int:
        return min(self.members[group])

    def contract(self) -> None:
        """Join chains, light sinks and light sources until nothing changes. Each rule sweeps
        the apps in notebook order, merging as it goes; a rule that merged anything runs again
        before the next one (a chain is joined whole before light cells are looked at)."""
        while self._chain() or self._light_sink() or self._light_source() or self._light_alone():
            pass

    def _sweep(self) -> list[str]:
        return sorted(self.q.nodes, key=self._first)

    def _direct(self, v: str) -> list[str]:
        """``v``'s predecessors but those it waits for anyway, through another of them."""
        preds = set(self.q.predecessors(v))
        implied = set().union(*(nx.ancestors(self.q, p) for p in preds)) if len(preds) > 1 else set()
        return sorted(preds - implied, key=self._first)

    def _chain(self) -> bool:
        merged = False
        for v in self._sweep():
            direct = self._direct(v) if v in self.q else []
            if len(direct) != 1:
                continue
            u = direct[0]
            if self.q.out_degree(u) > 1 and not self.q.out_degree(v):
                continue  # u feeds others that v cannot reach (the cheap case of the test below)
            if set(self.q.successors(u)) - {v} <= nx.descendants(self.q, v):
                self.merge(u, v, self._tie(u, v, "reads {names} from this app alone, and nothing waits for it"))
                merged = True
        return merged

    def _light_sink(self) -> bool:
        """A light app nothing reads joins the one app it waits for; light apps nothing reads
        that wait for the same apps join each other."""
        merged = False
        sinks: dict[frozenset[str], str] = {}
        for v in self._sweep():
            if v not in self.q or self.q.out_degree(v) or not self.light.get(v):
                continue
            direct = self._direct(v)
            if len(direct) == 1:
                self.merge(direct[0], v, self._tie(direct[0], v, "light, reads {names}, and nothing reads it"))
                merged = True
                continue
            waits = frozenset(self.q.predecessors(v))
            if waits and sinks.get(waits) in self.q:
                self.merge(sinks[waits], v, f"cell{'s' if len(self.members[v]) > 1 else ''} {self._cells(v)}: "
                                            f"light, nothing reads it, and it waits for the same apps")
                merged = True
                continue
            sinks[waits] = v
        return merged

    def _cells(self, group: str) -> str:
        return ", ".join(str(self.numbers[i]) for i in sorted(self.members[group]))

    def _light_source(self) -> bool:
        merged = False
        for u in self._sweep():
            succs = list(self.q.successors(u)) if u in self.q else []
            if len(succs) == 1 and not self.q.in_degree(u) and self.light.get(u):
                self.merge(succs[0], u, self._tie(u, succs[0], "light, and defines {names} for this app alone",
                                                  who=u))
                merged = True
        return merged

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
        names: dict[str, str] = {}
        for group in sorted(self.members, key=self._first):
            cells = sorted(self.members[group])
            # named by the first cell that does the work, not by a constant set before it
            first = next((i for i in cells if not self.cell_light.get(i, True)), cells[0])
            names[group] = _app_name(first, self.sources, self.numbers, taken)
        out = []
        for group in sorted(self.members, key=self._first):
            linked = nx.ancestors(self.q, group) | nx.descendants(self.q, group) | {group}
            beside = tuple(names[g] for g in sorted(set(self.members) - linked, key=self._first))
            out.append(Group(names[group], tuple(sorted(self.members[group])), tuple(self.why[group]), beside))
        return tuple(out)


def _app_name(first: int, sources: Mapping[int, str], numbers: Mapping[int, int], taken: set[str]) -> str:
    """A name cell ``first`` assigns, else ``cellN``; never twice. A name computed
    (``pi = estimate(n)``) is preferred to a constant (``n = 10``)."""
    tree = _tree(sources[first])
    assigned: list[tuple[bool, str]] = []
    for stmt in tree.body if tree is not None else ():
        targets = stmt.targets if isinstance(stmt, ast.Assign) else \
            [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
        constant = isinstance(getattr(stmt, "value", None), (ast.Constant, ast.UnaryOp))
        assigned += [(constant, n.id) for t in targets for n in ast.walk(t)
                     if isinstance(n, ast.Name) and not n.id.startswith("_")]
    name = min(assigned, key=lambda a: a[0])[1] if assigned else f"cell{numbers[first]}"
    if name in RESERVED_NAMES or name in taken or not APP_NAME.match(name):
        name = f"{name}-{numbers[first]}" if APP_NAME.match(name) and name not in RESERVED_NAMES \
            else f"cell{numbers[first]}"
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
