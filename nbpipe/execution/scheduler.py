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
from typing import Any

from ..graph import Pipeline
from .base import AppResult, AppStatus, Executor, TaskResult, TaskSpec

__all__ = ["Event", "schedule"]

#: ``on_event(kind, app, result)``: kind is "start", "retry", "done" or "skip".
Event = Callable[[str, str, AppResult], None]


def schedule(
    pipeline: Pipeline,
    executor: Executor,
    make_spec: Callable[[str, int], TaskSpec],
    on_event: Event | None = None,
) -> dict[str, AppResult]:
    """Run every app of ``pipeline`` on ``executor``; return the result of each.

    On KeyboardInterrupt the executor is stopped, running apps are marked
    failed and pending ones skipped; the results are attached to the
    exception as ``exc.results`` and it is re-raised.
    """
    graph = pipeline.graph
    results = {name: AppResult(name) for name in pipeline.order}
    running: dict[Future[TaskResult], str] = {}
    emit = on_event or (lambda kind, app, result: None)

    def submit(app: str) -> None:
        result = results[app]
        result.status = AppStatus.RUNNING
        result.attempts += 1
        if result.start_time is None:
            result.start_time = time.time()
        running[executor.submit(make_spec(app, result.attempts))] = app
        emit("start" if result.attempts == 1 else "retry", app, result)

    def ready(app: str) -> bool:
        return results[app].status is AppStatus.PENDING and all(
            results[p].status.ok for p in graph.predecessors(app))

    def skip_downstream(failed: str) -> None:
        for app in pipeline.order:
            if app in pipeline.downstream(failed) and results[app].status is AppStatus.PENDING:
                chain = _chain(pipeline, failed, app)
                results[app].status = AppStatus.SKIPPED
                results[app].reason = (f"app {failed!r} {results[failed].status.value.replace('_', ' ')}"
                                       f" ({chain})")
                emit("skip", app, results[app])

    try:
        for app in pipeline.order:
            if ready(app):
                submit(app)
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: pipeline.order.index(running[f])):
                app = running.pop(future)
                task = future.result()
                result = results[app]
                if result.attempts == 1:
                    result.start_time = task.start_time  # when it ran, not when it was queued
                result.end_time, result.host = task.end_time, task.host
                result.output, result.error = task.output, task.error
                spec = pipeline.apps[app].spec
                if task.status is not AppStatus.COMPLETED and result.attempts <= spec.retries:
                    submit(app)
                    continue
                result.status = task.status
                emit("done", app, result)
                if task.status.ok:
                    for succ in sorted(graph.successors(app), key=pipeline.order.index):
                        if ready(succ):
                            submit(succ)
                else:
                    skip_downstream(app)
    except KeyboardInterrupt as exc:
        executor.shutdown(cancel=True)
        for app, result in results.items():
            if result.status is AppStatus.RUNNING:
                result.status, result.end_time = AppStatus.FAILED, time.time()
                result.error = {"ename": "KeyboardInterrupt", "evalue": "the run was interrupted"}
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
