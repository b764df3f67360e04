"""Start each app as soon as the apps it depends on have completed.

The scheduler walks the pipeline's graph: it submits every app whose
predecessors completed, retries a failed attempt while ``retries:`` allows,
marks the apps downstream of a failure ``skipped`` with the reason, and lets
independent apps run to completion. When an app reports a value it changed
unpredicted, the apps that must read the change are re-wired to it
(:class:`~nbpipe.mutations.Dataflow`) and re-run if they already ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Protocol

import networkx as nx

from ..errors import MutationError
from ..graph import Pipeline
from ..mutations import Dataflow, Rewire
from .base import AppResult, AppStatus, Executor, ItemResult, TaskResult, TaskSpec

__all__ = ["Event", "MapSize", "SpecFactory", "schedule"]

#: ``on_event(kind, app, result)``: kind is "start", "retry", "split" (a map app
#: knows its items), "item" (one item finished), "done", "skip" or "rerun" (the
#: app reads a value another app changed unpredicted: ``result.reruns[-1]``).
Event = Callable[[str, str, AppResult], None]


class SpecFactory(Protocol):
    def __call__(self, app: str, attempt: int, *, item: int | None = None, split: bool = False,
                 maps: dict[str, int], sources: dict[str, str], watch: list[str]) -> TaskSpec: ...


#: ``map_size(app)`` -> the labels of the elements a ``map:`` app's split step stored.
MapSize = Callable[[str], list[str]]


def schedule(
    pipeline: Pipeline,
    executor: Executor,
    make_spec: SpecFactory,
    on_event: Event | None = None,
    map_size: MapSize | None = None,
    memo: Any = None,
) -> dict[str, AppResult]:
    """Run every app of ``pipeline`` on ``executor``; return the result of each.

    A ``map:`` app runs as a split task, which stores the elements of its
    iterable, then one task per element; it completes when every item has.

    On KeyboardInterrupt the executor is stopped, running apps are marked
    failed and pending ones skipped; the results are attached to the
    exception as ``exc.results`` and it is re-raised.
    """
    flow = Dataflow(pipeline)
    graph = flow.graph  # gains an edge for each reader re-wired to a changed value
    results = {name: AppResult(name) for name in pipeline.order}
    maps: dict[str, int] = {}  # map app -> number of items, once split
    again = _Reruns(results, maps)
    running: dict[Future[TaskResult], tuple[str, int | None, bool]] = {}
    emit = on_event or (lambda kind, app, result: None)
    unreached: set[str] = set()  # apps below a SystemExit: serial execution never gets there

    def submit(app: str, item: int | None = None, split: bool = False) -> None:
        result = results[app]
        result.status = AppStatus.RUNNING
        if item is None:
            result.attempts += 1
            attempt = result.attempts
        else:
            record = result.items[item]
            record.attempts += 1
            attempt = record.attempts
        if memo is not None and attempt == 1:
            preds = tuple(p for p in pipeline.order if graph.has_edge(p, app))
            hit = memo.check(app, item=item, split=split, preds=preds)
            if hit is not None:
                done: Future[TaskResult] = Future()
                done.set_result(hit)
                running[done] = (app, item, split)
                return
        spec = make_spec(app, attempt, item=item, split=split, maps=dict(maps),
                         sources=flow.sources(app, split), watch=flow.watch(app, split))
        running[executor.submit(spec)] = (app, item, split)
        first = (again.attempts(app) if item is None else attempt) == 1
        if item is None and not split or split and first:
            emit("start" if first else "retry", app, result)

    def start(app: str) -> None:
        submit(app, split=pipeline.apps[app].spec.map is not None)

    def ready(app: str) -> bool:
        return app not in unreached and results[app].status is AppStatus.PENDING and all(
            results[p].status.ok for p in graph.predecessors(app))

    def skip_downstream(failed: str) -> None:
        below = nx.descendants(graph, failed)
        for app in pipeline.order:
            if app in below and results[app].status is AppStatus.PENDING:
                chain = _chain(graph, failed, app)
                results[app].status = AppStatus.SKIPPED
                results[app].reason = f"{_failed(failed, results)} ({chain})"
                emit("skip", app, results[app])

    def finish(app: str, status: AppStatus) -> None:
        result = results[app]
        result.status = status
        if memo is not None:
            memo.finish(app, result)
        emit("done", app, result)
        if status.ok:
            for succ in sorted(graph.successors(app), key=pipeline.order.index):
                if ready(succ):
                    start(succ)
        else:
            skip_downstream(app)

    def stop_after(app: str, task: TaskResult) -> None:
        """A cell of ``app`` raised SystemExit: serial execution stops there, so every
        app whose first cell comes later is skipped, running or not, its result dropped."""
        error = task.error or {}
        at = error.get("cell")
        at = pipeline.apps[app].spec.cells[-1] if at is None else at
        reason = _exit_reason(pipeline, app, at, error)
        for later in pipeline.order:
            if later != app and later not in unreached and pipeline.apps[later].spec.cells[0] > at:
                unreached.add(later)
                result = results[later]
                result.status, result.reason, result.stopped_by = AppStatus.SKIPPED, reason, app
                result.output = result.error = result.items = None
                emit("skip", later, result)

    def on_mutations(app: str, names: list[str]) -> AppStatus:
        """``app`` changed received ``names`` unpredicted: re-wire and re-run their readers."""
        try:
            rewires = flow.resolve(app, names)
        except MutationError as exc:
            results[app].error = {"ename": "MutationError", "evalue": str(exc)}
            for reader in exc.readers:
                if results[reader].status is AppStatus.PENDING:
                    results[reader].status, results[reader].reason = AppStatus.SKIPPED, str(exc)
                    emit("skip", reader, results[reader])
            return AppStatus.FAILED
        for rewire in rewires:
            rerun(rewire)
        return AppStatus.COMPLETED

    def rerun(rewire: Rewire) -> None:
        again.record(rewire)
        emit("rerun", rewire.reader, results[rewire.reader])
        below = nx.descendants(graph, rewire.reader)
        again.invalidate([rewire.reader, *(a for a in pipeline.order if a in below)])

    def discard(app: str) -> None:
        """A stale attempt of ``app`` ended: run it again once it may."""
        if any(a == app for a, _, _ in running.values()):
            return
        again.stale.discard(app)
        again.reset(app)
        if ready(app):
            start(app)

    def on_split(app: str, task: TaskResult) -> None:
        result = results[app]
        labels = map_size(app) if map_size else []
        maps[app] = len(labels)
        result.items = [ItemResult(i, label) for i, label in enumerate(labels)]
        emit("split", app, result)
        if not labels:
            result.end_time = task.end_time
            finish(app, AppStatus.COMPLETED)
        for i in range(len(labels)):
            submit(app, item=i)

    def on_item(app: str, item: int, task: TaskResult) -> None:
        result = results[app]
        record = result.items[item]
        record.start_time = record.start_time or task.start_time
        record.end_time, record.host, record.output = task.end_time, task.host, task.output
        record.job_id = task.job_id
        record.status, record.error, record.cache = task.status, task.error, task.cache
        if task.status.ok and task.mutations:
            record.status = AppStatus.FAILED
            record.error = {"ename": "MutationError", "evalue": str(flow.map_error(app, task.mutations))}
        elif _retry(task, record.attempts, pipeline.apps[app].spec.retries):
            record.status = AppStatus.RUNNING  # not final: the app waits for the retry
            submit(app, item=item)
            return
        if memo is not None:
            memo.store(app, item=item, split=False, task=task)
        emit("item", app, result)
        if any(not r.status.final for r in result.items):
            return
        result.end_time = max(r.end_time or 0.0 for r in result.items)
        result.host, result.job_id = task.host, task.job_id
        bad = [r for r in result.items if not r.status.ok]
        if bad:
            first = bad[0]
            error = dict(first.error or {})
            item_name = pipeline.apps[app].spec.map.item  # type: ignore[union-attr]
            error["evalue"] = (f"item {first.index} ({item_name} = {first.label}) of {len(result.items)}: "
                               f"{error.get('evalue', '')}")
            error["item"] = first.index
            result.error = error
            timed_out = all(r.status is AppStatus.TIMED_OUT for r in bad)
            finish(app, AppStatus.TIMED_OUT if timed_out else AppStatus.FAILED)
        else:
            hits = all(r.status is AppStatus.CACHED for r in result.items)
            finish(app, AppStatus.CACHED if hits else AppStatus.COMPLETED)

    try:
        for app in pipeline.order:
            if ready(app):
                start(app)
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pipeline.order.index(running[f][0])):
                app, item, split = running.pop(future)
                task = future.result()
                if app in unreached:
                    continue
                if app in again.stale:
                    discard(app)
                    continue
                if _exits(task):
                    stop_after(app, task)
                result = results[app]
                if result.start_time is None or item is None and result.attempts == 1:
                    result.start_time = task.start_time  # when it ran, not when it was queued
                if item is not None:
                    on_item(app, item, task)
                    continue
                result.end_time, result.host, result.job_id = task.end_time, task.host, task.job_id
                result.output, result.error, result.cache = task.output, task.error, task.cache
                if _retry(task, again.attempts(app), pipeline.apps[app].spec.retries):
                    submit(app, split=split)
                    continue
                if memo is not None:
                    memo.store(app, item=None, split=split, task=task)
                if split and task.status.ok:
                    result.output = None
                    on_split(app, task)
                    continue
                result.end_time = task.end_time
                status = task.status
                if status.ok and task.mutations:
                    status = on_mutations(app, task.mutations)
                finish(app, status)
        _skip_unreached(graph, results, emit)
    except KeyboardInterrupt as exc:
        executor.shutdown(cancel=True)
        for app, result in results.items():
            if result.status is AppStatus.RUNNING:
                result.status, result.end_time = AppStatus.FAILED, time.time()
                result.error = {"ename": "KeyboardInterrupt", "evalue": "the run was interrupted"}
                for record in result.items or []:
                    if not record.status.final:
                        record.status = AppStatus.FAILED
            elif result.status is AppStatus.PENDING:
                result.status, result.reason = AppStatus.SKIPPED, "the run was interrupted"
        exc.results = results  # type: ignore[attr-defined]
        raise
    return results


class _Reruns:
    """Apps that run again because they read a value another app changed
    unpredicted. A running attempt turns stale (its result is discarded when
    it ends); a finished app goes back to pending, and counts its attempts
    (for ``retries:``) from there."""

    def __init__(self, results: dict[str, AppResult], maps: dict[str, int]) -> None:
        self.results, self.maps = results, maps
        self.stale: set[str] = set()
        self._base: dict[str, int] = {}

    def attempts(self, app: str) -> int:
        return self.results[app].attempts - self._base.get(app, 0)

    def record(self, rewire: Rewire) -> None:
        result = self.results[rewire.reader]
        change = {"app": rewire.mutator, "variable": rewire.variable,
                  "reran": result.status is not AppStatus.PENDING}
        result.reruns = [*(result.reruns or []), change]

    def invalidate(self, apps: list[str]) -> None:
        for app in apps:
            if self.results[app].status is AppStatus.RUNNING:
                self.stale.add(app)
            elif self.results[app].status is not AppStatus.PENDING:
                self.reset(app)

    def reset(self, app: str) -> None:
        result = self.results[app]
        result.status, result.error, result.reason, result.output = AppStatus.PENDING, None, None, None
        if result.items is not None:
            result.items = None
            self.maps.pop(app, None)
        self._base[app] = result.attempts


def _skip_unreached(graph: Any, results: dict[str, AppResult], emit: Event) -> None:
    """Skip the apps still pending when nothing runs: reset to run again after
    a change, they depend on an app that had failed."""
    for app, result in results.items():
        if result.status is AppStatus.PENDING:
            failed = next((p for p in graph.predecessors(app) if not results[p].status.ok), None)
            result.status = AppStatus.SKIPPED
            result.reason = _failed(failed, results) if failed else "not reached"
            emit("skip", app, result)


def _exits(task: TaskResult) -> bool:
    """Whether a cell of the task raised SystemExit (``sys.exit()``, ``raise SystemExit``)."""
    return bool(task.error) and task.error.get("ename") == "SystemExit"  # type: ignore[union-attr]


def _retry(task: TaskResult, attempts: int, retries: int) -> bool:
    """Whether a task that did not complete runs again (``retries:``); one that
    raised SystemExit never does, as its exit stops serial execution there."""
    return not task.status.ok and not _exits(task) and attempts <= retries


def _exit_reason(pipeline: Pipeline, app: str, cell: int, error: dict[str, Any]) -> str:
    """Why the apps below a SystemExit are skipped: the app and the cell that exited."""
    cell_id = next((c.id for c in pipeline.parsed.cells if c.index == cell), None)
    named = f"cell {cell}" + (f" (id {cell_id})" if cell_id else "")
    code = f": {error['evalue']}" if error.get("evalue") else ""
    return f"app {app!r} exited in {named} with SystemExit{code}; serial execution stops there"


def _failed(app: str, results: dict[str, AppResult]) -> str:
    """``app 'load' failed`` / ``app 'load' timed out``: why apps below it are skipped."""
    return f"app {app!r} {results[app].status.value.replace('_', ' ')}"


def _chain(graph: Any, failed: str, app: str) -> str:
    """Explain why ``app`` depends on ``failed``: the path and what flows along it."""
    path = nx.shortest_path(graph, failed, app)
    steps: list[Any] = []
    for u, v in zip(path, path[1:]):
        names = sorted(graph.edges[u, v]["names"])
        steps.append(f"{v} reads {', '.join(names)} from {u}" if names else f"{v} runs after {u}")
    return "; ".join(steps)
