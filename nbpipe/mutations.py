"""Unpredicted mutations: which apps must read a changed value, re-wired how (pure).

An app reports a received name whose value it changed although the graph did
not predict it (:mod:`nbpipe.digest`). In serial execution every cell after
the change sees the changed value, so each app that reads the name from the
same source, in a cell below the changing app's cells, must read it from the
changing app instead: :meth:`Dataflow.resolve` adds that edge, and the
scheduler re-runs the reader if it already ran, like an optimistic
transaction retried on conflict. When that cannot give serial execution's
result (the edge would close a cycle, the reading cell sits between the
changing app's cells, the changing app is a ``map:`` app), it raises
:class:`~nbpipe.errors.MutationError` instead: never a silently wrong value.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx

from .errors import MutationError
from .graph import Pipeline
from .names import analyse_cell

__all__ = ["Dataflow", "Rewire"]


@dataclass(frozen=True)
class Rewire:
    """``reader`` now reads ``variable`` from ``mutator``, which changed it."""

    reader: str
    mutator: str
    variable: str


def _parse(entry: str) -> tuple[str, str | None]:
    """A reported name: ``x`` (received and changed) or ``x@app`` (shipped by
    ``app`` with a name the reporting app changed, and sharing objects with it:
    :mod:`nbpipe.sharing`)."""
    name, _, shipper = entry.partition("@")
    return name, shipper or None


class Dataflow:
    """Where each app reads each name from, as apps report unpredicted mutations.

    ``graph`` starts as a copy of the pipeline's graph and gains an edge for
    every re-wired reader; the scheduler walks it.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.graph = pipeline.graph.copy()
        self._sources: dict[str, dict[str, str]] = {}  # app -> name -> re-wired producer

    def sources(self, app: str, split: bool = False) -> dict[str, str]:
        """The re-wired names of ``app`` (for a map app's split task: of its iterable only)."""
        got = self._sources.get(app, {})
        spec = self.pipeline.apps[app].spec
        if split and spec.map is not None:
            return {k: v for k, v in got.items() if k == spec.map.iterable}
        return dict(got)

    def watch(self, app: str, split: bool = False) -> list[str]:
        """The received names ``app`` is not predicted to change: their digests are checked."""
        if split:
            return []
        return sorted(self._received(app) - self.pipeline.apps[app].defines)

    def source(self, app: str, name: str) -> str | None:
        """The app ``app`` reads ``name`` from; None: setup or parameters."""
        return self._sources.get(app, {}).get(name) or self.pipeline.apps[app].reads.get(name)

    def resolve(self, mutator: str, names: list[str]) -> list[Rewire]:
        """Re-wire the readers of ``names`` that must see ``mutator``'s change.

        Raises :class:`MutationError` (changing nothing) when that cannot give
        serial execution's result.
        """
        rewires = [r for entry in sorted(names) for r in self._readers(mutator, *_parse(entry))]
        for rewire in rewires:
            self._sources.setdefault(rewire.reader, {})[rewire.variable] = rewire.mutator
            self._add_edge(rewire.mutator, rewire.reader, rewire.variable)
        return rewires

    def map_error(self, app: str, names: list[str]) -> MutationError:
        """The error for an item of a ``map:`` app that changed a received value."""
        name = _parse(sorted(names)[0])[0]
        return MutationError(app=app, variable=name, source=self._describe(app, name), readers=[],
                             reason="the items of a map: app each change their own copy, where a "
                                    "loop would change one value item after item")

    def _readers(self, mutator: str, name: str, shipper: str | None = None) -> list[Rewire]:
        cells = self.pipeline.apps[mutator].spec.cells
        first, last = min(cells), max(cells)
        source = shipper or self.source(mutator, name)
        if self.pipeline.apps[mutator].spec.map is not None:
            raise self.map_error(mutator, [name])
        out = []
        for reader in self.pipeline.order:
            if reader == mutator or name not in self._received(reader) or self.source(reader, name) != source:
                continue
            low, high = self._read_span(reader, name)
            if high < first:
                continue  # it read the value before the change, as in serial execution
            if low <= last:
                raise self._error(mutator, name, reader, f"app {reader!r} reads it between the cells of "
                                  f"app {mutator!r}; start a new app at the cell that changes it")
            if nx.has_path(self.graph, reader, mutator):
                raise self._error(mutator, name, reader, f"app {reader!r}, which reads it further down "
                                  f"the notebook, runs before app {mutator!r} (it is upstream of it)")
            out.append(Rewire(reader, mutator, name))
        return out

    def _error(self, mutator: str, name: str, reader: str, reason: str) -> MutationError:
        return MutationError(app=mutator, variable=name, source=self._describe(mutator, name),
                             readers=[reader], reason=reason)

    def _describe(self, app: str, name: str) -> str:
        source = self.source(app, name)
        if source is not None:
            return f"app {source!r}"
        return "the parameters" if name in self.pipeline.parameter_names else "setup"

    def _add_edge(self, u: str, v: str, name: str) -> None:
        if not self.graph.has_edge(u, v):
            self.graph.add_edge(u, v, kinds=set(), names=set(), files=set())
        data = self.graph.edges[u, v]
        # the copied graph shares its attribute sets with the pipeline's: replace them
        data["kinds"], data["names"] = data["kinds"] | {"data"}, data["names"] | {name}

    def _received(self, app: str) -> frozenset[str]:
        node = self.pipeline.apps[app]
        return frozenset(node.reads) | self._everywhere_reads[app] | frozenset(self._sources.get(app, {}))

    @cached_property
    def _everywhere_reads(self) -> dict[str, frozenset[str]]:
        """For each app, the setup and parameter names it reads, also through the
        functions it calls (their globals are looked up when called)."""
        everywhere = self.pipeline.setup_names | self.pipeline.parameter_names
        callables: dict[str, set[str]] = {}
        for cell in self.pipeline.parsed.cells:
            if cell.role in ("app", "setup", "metrics"):
                for function, names in analyse_cell(cell.source).callables:
                    callables.setdefault(function, set()).update(names)
        out = {}
        for app in self.pipeline.apps:
            todo, seen = list(self._first_reads(app)), set()
            while todo:
                name = todo.pop()
                if name not in seen:
                    seen.add(name)
                    todo += callables.get(name, ())
            out[app] = frozenset(seen & everywhere)
        return out

    def _read_span(self, app: str, name: str) -> tuple[int, int]:
        """The cell where ``app`` first reads ``name``; when the analysis cannot
        tell (read by a function it calls), the span of the app's cells."""
        index = self._first_reads(app).get(name)
        if index is not None:
            return index, index
        cells = self.pipeline.apps[app].spec.cells
        return min(cells), max(cells)

    def _first_reads(self, app: str) -> dict[str, int]:
        cells = self.pipeline.parsed.cells
        own: set[str] = set()
        first: dict[str, int] = {}
        for index in self.pipeline.apps[app].spec.cells:
            found = analyse_cell(cells[index].source)
            for name in found.reads - own:
                first.setdefault(name, index)
            own |= found.defines
        return first
