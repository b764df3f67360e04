"""The apps ``--split auto`` forms: a quotient of the one-app-per-cell graph
(:class:`Groups`), kept acyclic while chains, light cells and the cells an
unshippable value ties together are merged (:mod:`nbpipe.split` says when)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from .cellsource import app_name

__all__ = ["Group", "Groups"]


@dataclass(frozen=True)
class Group:
    """An app a split made: its cells (indices into the notebook) and why they are together."""

    app: str
    cells: tuple[int, ...]
    why: tuple[str, ...] = ()
    #: the apps that share nothing with this one, up- or downstream: they may run beside it
    beside: tuple[str, ...] = ()


class Groups:
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
            names[group] = app_name(first, self.sources, self.numbers, taken)
        out = []
        for group in sorted(self.members, key=self._first):
            linked = nx.ancestors(self.q, group) | nx.descendants(self.q, group) | {group}
            beside = tuple(names[g] for g in sorted(set(self.members) - linked, key=self._first))
            out.append(Group(names[group], tuple(sorted(self.members[group])), tuple(self.why[group]), beside))
        return tuple(out)
