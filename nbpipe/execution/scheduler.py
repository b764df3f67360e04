"""Start each app as soon as the apps it depends on have completed.

The scheduler walks the pipeline's graph: it submits every app whose
predecessors completed, retries a failed attempt while ``retries:`` allows,
marks the apps downstream of a failure ``skipped`` with the reason, and lets
independent apps run to completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Protocol

from ..graph import Pipeline
from .base import AppResult, AppStatus, Executor, ItemResult, TaskResult, TaskSpec

__all__ = ["Event", "MapSize", "SpecFactory", "schedule"]

#: ``on_event(kind, app, result)``: kind is "start", "retry", "split" (a map app
#: knows its items), "item" (one item finished), "done" or "skip".
Event = Callable[[str, str, AppResult], None]


class SpecFactory(Protocol):
    def __call__(self, app: str, attempt: int, *, item: int | None = None, split: bool = False,
                 maps: dict[str, int]) -> TaskSpec: ...


#: ``map_size(app)`` -> the labels of the elements a ``map:`` app's split step stored.
MapSize = Callable[[str], list[str]]


def schedule(
    pipeline: Pipeline,
    executor: Executor,
    make_spec: SpecFactory,
    on_event: Event | None = None,
    map_size: MapSize | None = None,
) -> dict[str, AppResult]:
    """Run every app of ``pipeline`` on ``executor``; return the result of each.

    A ``map:`` app runs as a split task, which stores the elements of its
    iterable, then one task per element; it completes when every item has.

    On KeyboardInterrupt the executor is stopped, running apps are marked
    failed and pending ones skipped; the results are attached to the
    exception as ``exc.results`` and it is re-raised.
    """
    graph = pipeline.graph
    results = {name: AppResult(name) for name in pipeline.order}
    maps: dict[str, int] = {}  # map app -> number of items, once split
    running: dict[Future[TaskResult], tuple[str, int | None, bool]] = {}
    emit = on_event or (lambda kind, app, result: None)

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
        spec = make_spec(app, attempt, item=item, split=split, maps=dict(maps))
        running[executor.submit(spec)] = (app, item, split)
        if item is None and not split or split and attempt == 1:
            emit("start" if attempt == 1 else "retry", app, result)

    def start(app: str) -> None:
        submit(app, split=pipeline.apps[app].spec.map is not None)

    def ready(app: str) -> bool:
        return results[app].status is AppStatus.PENDING and all(
            results[p].status.ok for p in graph.predecessors(app))

    def skip_downstream(failed: str) -> None:
        below = pipeline.downstream(failed)
        for app in pipeline.order:
            if app in below and results[app].status is AppStatus.PENDING:
                chain = _chain(pipeline, failed, app)
                results[app].status = AppStatus.SKIPPED
                results[app].reason = (f"app {failed!r} {results[failed].status.value.replace('_', ' ')}"
                                       f" ({chain})")
                emit("skip", app, results[app])

    def finish(app: str, status: AppStatus) -> None:
        result = results[app]
        result.status = status
        emit("done", app, result)
        if status.ok:
            for succ in sorted(graph.successors(app), key=pipeline.order.index):
                if ready(succ):
                    start(succ)
        else:
            skip_downstream(app)

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
        record.status, record.error = task.status, task.error
        if not task.status.ok and record.attempts <= pipeline.apps[app].spec.retries:
            submit(app, item=item)
            return
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
            finish(app, AppStatus.COMPLETED)

    try:
        for app in pipeline.order:
            if ready(app):
                start(app)
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pipeline.order.index(running[f][0])):
                app, item, split = running.pop(future)
                task = future.result()
                result = results[app]
                if result.start_time is None or item is None and result.attempts == 1:
                    result.start_time = task.start_time  # when it ran, not when it was queued
                if item is not None:
                    on_item(app, item, task)
                    continue
                result.end_time, result.host, result.job_id = task.end_time, task.host, task.job_id
                result.output, result.error = task.output, task.error
                if task.status is not AppStatus.COMPLETED and result.attempts <= pipeline.apps[app].spec.retries:
                    submit(app, split=split)
                    continue
                if split and task.status.ok:
                    result.output = None
                    on_split(app, task)
                    continue
                result.end_time = task.end_time
                finish(app, task.status)
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


def _chain(pipeline: Pipeline, failed: str, app: str) -> str:
    """Explain why ``app`` depends on ``failed``: the path and what flows along it."""
    import networkx as nx

    path = nx.shortest_path(pipeline.graph, failed, app)
    steps: list[Any] = []
    for u, v in zip(path, path[1:]):
        names = sorted(pipeline.graph.edges[u, v]["names"])
        steps.append(f"{v} reads {', '.join(names)} from {u}" if names else f"{v} runs after {u}")
    return "; ".join(steps)
