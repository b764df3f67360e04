"""Start each app as soon as the apps it depends on have completed.

The scheduler walks the pipeline's graph: it submits every app whose
predecessors completed, retries a failed attempt while ``retries:`` allows,
marks the apps downstream of a failure ``skipped`` with the reason, and lets
independent apps run to completion. When an app reports a value it changed
unpredicted, the apps that must read the change are re-wired to it
(:class:`~nbpipe.mutations.Dataflow`) and re-run if they already ran.

It is a small state machine. Each :class:`Task` (a plain app, a ``map:``
app's split step, or one of its items) ends with a :class:`TaskResult`, from
the executor or from the :class:`Memo`, and :meth:`Scheduler.transition`, the
one place that decides what follows, takes it from there: retry, submit the
items of a split, finish the app, start its successors or skip what lies
below. Every final state of an app is set by :meth:`Scheduler._settle`, which
tells the memo and emits the event, so progress, metadata and cache agree.
Before a task's first attempt is submitted the memo is asked whether its
result already exists (Parsl's ``Memoizer.check_memo`` is the model).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from queue import SimpleQueue
from dataclasses import dataclass, replace
from typing import Any, Protocol

import networkx as nx

from ..errors import MutationError
from ..events import Event, Items, Kind
from ..graph import Pipeline
from ..mutations import Dataflow, Rewire
from .base import AppResult, AppStatus, Executor, ItemResult, TaskResult, TaskSpec

__all__ = ["MapSize", "OnEvent", "Memo", "Scheduler", "SpecFactory", "Task", "schedule"]

#: Items of a split map submitted per turn of the main loop, between taking results.
FEED = 64

#: ``on_event(event)``: called with a frozen :class:`~nbpipe.events.Event` each time
#: an app (or an item of a map app) changes state, in the scheduler's thread.
OnEvent = Callable[[Event], None]


class SpecFactory(Protocol):
    def __call__(self, app: str, attempt: int, *, item: int | None = None, split: bool = False,
                 maps: dict[str, int], sources: dict[str, str], watch: list[str]) -> TaskSpec: ...


#: ``map_size(app)`` -> the labels of the elements a ``map:`` app's split step stored.
MapSize = Callable[[str], list[str]]


class Memo(Protocol):
    """Results of tasks that need not run again: the cache, seen from the scheduler."""

    def check(self, app: str, *, item: int | None, split: bool, preds: tuple[str, ...]) -> TaskResult | None:
        """Asked right before a task would be submitted (the app is ready; for items, after the split).
        ``preds``: the app's predecessors in the scheduler's graph (re-wired edges included), in pipeline order.
        A TaskResult (status CACHED) means: do not submit, the task ended with this result. Its
        ``start_time`` and ``end_time`` are the lookup's; ``error`` and ``mutations`` are replayed
        (a stored ``SystemExit`` stops the run there, stored mutations re-wire their readers again)."""

    def store(self, app: str, *, item: int | None, split: bool, task: TaskResult) -> None:
        """Told once per task whose result is final for that task (after retries; not for stale attempts,
        not for hits, not for tasks that end after a SystemExit above them was reported). ``task.status`` is the scheduler's
        verdict (an item that changed a received value is failed). The memo decides what it keeps
        (completed only)."""

    def finish(self, app: str, result: AppResult) -> None:
        """Told once when an app reaches a final state (any status, including skipped and cached).
        May be told again for the same app if it is reset and re-run after a mutation re-wire."""


@dataclass(eq=False)
class Task:
    """One task of the run: a plain app, a ``map:`` app's split step, or one of its items."""

    app: str
    item: int | None = None
    split: bool = False
    #: attempts since the app last started, counted against ``retries:``
    attempts: int = 0
    #: the app was reset while this attempt ran (a re-wire): its result is discarded
    stale: bool = False


def schedule(
    pipeline: Pipeline,
    executor: Executor,
    make_spec: SpecFactory,
    on_event: OnEvent | None = None,
    map_size: MapSize | None = None,
    memo: Memo | None = None,
) -> dict[str, AppResult]:
    """Run every app of ``pipeline`` on ``executor``; return the result of each.

    A ``map:`` app runs as a split task, which stores the elements of its
    iterable, then one task per element; it completes when every item has.
    With a ``memo``, a task the memo already has is not submitted: it ends
    ``cached`` with the memo's result (None: every task runs).

    On KeyboardInterrupt the executor is stopped, running apps are marked
    failed and pending ones skipped; the results are attached to the
    exception as ``exc.results`` and it is re-raised.
    """
    return Scheduler(pipeline, executor, make_spec, on_event, map_size, memo).run()


class Scheduler:
    """The state of one run: each app's result, the tasks under way, the re-wired graph."""

    def __init__(self, pipeline: Pipeline, executor: Executor, make_spec: SpecFactory,
                 on_event: OnEvent | None = None, map_size: MapSize | None = None,
                 memo: Memo | None = None) -> None:
        self.pipeline, self.executor, self.make_spec, self.memo = pipeline, executor, make_spec, memo
        self.on_event = on_event
        self.tally: dict[str, _Tally] = {}  # a map app's items in a final state, counted as they end
        self.map_size: MapSize = map_size or (lambda app: [])
        self.flow = Dataflow(pipeline)
        self.graph = self.flow.graph  # gains an edge for each reader re-wired to a changed value
        self.results = {name: AppResult(name) for name in pipeline.order}
        self.maps: dict[str, int] = {}  # map app -> number of items, once split
        self.running: dict[Future[TaskResult], Task] = {}
        self.resolved: SimpleQueue[Future[TaskResult]] = SimpleQueue()  # running futures, as each resolves
        self.backlog: deque[Task] = deque()  # items of split maps, not yet submitted (see _feed)
        self.hits: deque[tuple[Task, TaskResult]] = deque()  # tasks the memo ended, not yet taken
        self.unreached: set[str] = set()  # apps below a SystemExit: serial execution never gets there

    def run(self) -> dict[str, AppResult]:
        try:
            for app in self.pipeline.order:
                if self._ready(app):
                    self._start(app)
            while self.running or self.hits or self.backlog:
                self._feed()
                for task, ended in self._ended(wait=not self.backlog):
                    self.transition(task, ended)
            self._skip_unreached()
        except KeyboardInterrupt as exc:
            self.executor.shutdown(cancel=True)
            self._interrupted()
            exc.results = self.results  # type: ignore[attr-defined]
            raise
        return self.results

    def _feed(self) -> None:
        """Submit the next items waiting in the backlog, a few at a time, so that results
        are taken (and shown) while a large map is still being submitted."""
        for _ in range(min(FEED, len(self.backlog))):
            task = self.backlog.popleft()
            if task.app not in self.unreached:
                self._submit(task)

    def _ended(self, wait: bool = True) -> Iterator[tuple[Task, TaskResult]]:
        """The tasks that ended next: the memo's hits, else the attempts that resolved, in
        pipeline order (without ``wait``, only those resolved already)."""
        if self.hits:
            while self.hits:
                yield self.hits.popleft()
            return
        if not wait and self.resolved.empty():
            return
        # Resolved futures arrive on a queue (a callback puts each): waiting on every running
        # future at each turn would cost O(running) per task, quadratic in a map's items.
        done = [self.resolved.get()]
        while not self.resolved.empty():
            done.append(self.resolved.get())
        for future in sorted(done, key=lambda f: self.pipeline.order.index(self.running[f].app)):
            yield self.running.pop(future), future.result()

    # ------------------------------------------------------------ the transition

    def transition(self, task: Task, ended: TaskResult) -> None:
        """``task`` ended with ``ended`` (an attempt's result or the memo's): decide what follows."""
        app = task.app
        if app in self.unreached:
            return  # below a SystemExit: serial execution never got there
        if task.stale:
            self._discard(app)
            return
        if _exits(ended):
            self._stop_after(app, ended)
        self._record(task, ended)
        if _retry(ended, task.attempts, self.pipeline.apps[app].spec.retries):
            self._submit(task)
            return
        final = self._verdict(task, ended)
        if self.memo is not None and ended.status is not AppStatus.CACHED:
            self.memo.store(app, item=task.item, split=task.split, task=final)
        if task.item is not None:
            self._item_ended(app, task.item, final)
        elif task.split and final.status.ok:
            self._split_ended(app, final)
        else:
            self._finish(app, final.status)

    def _record(self, task: Task, ended: TaskResult) -> None:
        """Keep what the attempt gave in the app's (or the item's) result."""
        result = self.results[task.app]
        if result.start_time is None or task.item is None and result.attempts == 1:
            result.start_time = ended.start_time  # when it ran, not when it was queued
        if task.item is None:
            result.end_time, result.host, result.job_id = ended.end_time, ended.host, ended.job_id
            result.output, result.error, result.cache = ended.output, ended.error, ended.cache
            return
        record = result.items[task.item]  # type: ignore[index]
        record.start_time = record.start_time or ended.start_time
        record.end_time, record.host, record.output = ended.end_time, ended.host, ended.output
        record.job_id, record.cache = ended.job_id, ended.cache
        record.status, record.error = ended.status, ended.error

    def _verdict(self, task: Task, ended: TaskResult) -> TaskResult:
        """The task's final result: a completed one that changed received values is judged here."""
        if not (ended.status.ok and ended.mutations) or task.split:
            return ended
        if task.item is not None:
            error = {"ename": "MutationError", "evalue": str(self.flow.map_error(task.app, ended.mutations))}
            record = self.results[task.app].items[task.item]  # type: ignore[index]
            record.status, record.error = AppStatus.FAILED, error
            return replace(ended, status=AppStatus.FAILED, error=error)
        if self._on_mutations(task.app, ended.mutations):
            return ended  # completed, or cached: a hit replays the change
        return replace(ended, status=AppStatus.FAILED, error=self.results[task.app].error)

    def _split_ended(self, app: str, ended: TaskResult) -> None:
        """The split stored the elements: one task per item."""
        result = self.results[app]
        labels = self.map_size(app)
        self.maps[app] = len(labels)
        result.output = None
        result.items = [ItemResult(i, label) for i, label in enumerate(labels)]
        self.tally[app] = _Tally(len(labels))
        self._emit(Kind.SPLIT, app)
        if not labels:
            result.end_time = ended.end_time
            self._finish(app, AppStatus.CACHED if ended.status is AppStatus.CACHED else AppStatus.COMPLETED)
        self.backlog.extend(Task(app, item=i) for i in range(len(labels)))

    def _item_ended(self, app: str, item: int, ended: TaskResult) -> None:
        """One item is final: once every item is, so is the app (cached if every item was a hit)."""
        result = self.results[app]
        items: list[ItemResult] = result.items  # type: ignore[assignment]
        tally = self.tally[app]
        tally.count(items[item].status)
        self._emit(Kind.ITEM, app, item=item)
        if tally.done < tally.total:
            return
        result.end_time = max(r.end_time or 0.0 for r in items)
        result.host, result.job_id = ended.host, ended.job_id
        bad = [r for r in items if not r.status.ok]
        if bad:
            result.error = self._item_error(app, bad[0], len(items))
            timed_out = all(r.status is AppStatus.TIMED_OUT for r in bad)
            self._finish(app, AppStatus.TIMED_OUT if timed_out else AppStatus.FAILED)
        elif all(r.status is AppStatus.CACHED for r in items):
            self._finish(app, AppStatus.CACHED)
        else:
            self._finish(app, AppStatus.COMPLETED)

    def _item_error(self, app: str, first: ItemResult, count: int) -> dict[str, Any]:
        error = dict(first.error or {})
        item_name = self.pipeline.apps[app].spec.map.item  # type: ignore[union-attr]
        error["evalue"] = (f"item {first.index} ({item_name} = {first.label}) of {count}: "
                           f"{error.get('evalue', '')}")
        error["item"] = first.index
        return error

    def _emit(self, kind: Kind, app: str, *, item: int | None = None) -> None:
        if self.on_event is not None:
            tally = self.tally.get(app)
            self.on_event(Event.of(kind, self.results[app], item=item, items=tally.snapshot() if tally else None))

    # ------------------------------------------------------------ submitting

    def _ready(self, app: str) -> bool:
        return app not in self.unreached and self.results[app].status is AppStatus.PENDING and all(
            self.results[p].status.ok for p in self.graph.predecessors(app))

    def _start(self, app: str) -> None:
        self._submit(Task(app, split=self.pipeline.apps[app].spec.map is not None))

    def _submit(self, task: Task) -> None:
        """Start an attempt at ``task``, unless it is a first one the memo already has."""
        if task.attempts == 0 and self._hit(task):
            return
        app, result = task.app, self.results[task.app]
        result.status = AppStatus.RUNNING
        task.attempts += 1
        if task.item is None:
            result.attempts += 1
            attempt = result.attempts
            result.submit_time = time.time() if attempt == 1 else result.submit_time
        else:
            record = result.items[task.item]  # type: ignore[index]
            record.status, record.attempts = AppStatus.RUNNING, record.attempts + 1
            attempt = record.attempts
            record.submit_time = time.time() if attempt == 1 else record.submit_time
        split = task.split
        spec = self.make_spec(app, attempt, item=task.item, split=split, maps=dict(self.maps),
                              sources=self.flow.sources(app, split), watch=self.flow.watch(app, split))
        future = self.executor.submit(spec)
        self.running[future] = task
        future.add_done_callback(self.resolved.put)
        first = task.attempts == 1
        if task.item is None and not task.split or task.split and first:
            self._emit(Kind.START if first else Kind.RETRY, app)

    def _hit(self, task: Task) -> bool:
        """Ask the memo for ``task``; a hit ends it without running (taken by the main loop)."""
        if self.memo is None:
            return False
        preds = tuple(sorted(self.graph.predecessors(task.app), key=self.pipeline.order.index))
        hit = self.memo.check(task.app, item=task.item, split=task.split, preds=preds)
        if hit is None:
            return False
        result = self.results[task.app]
        result.status = AppStatus.RUNNING
        if task.item is not None:
            result.items[task.item].status = AppStatus.RUNNING  # type: ignore[index]
        self.hits.append((task, replace(hit, status=AppStatus.CACHED)))
        if task.item is None:
            self._emit(Kind.START if task.split else Kind.CACHED, task.app)
        return True

    # ------------------------------------------------------------ final states

    def _settle(self, app: str, status: AppStatus, event: Kind | None, **fields: Any) -> None:
        """Every final state of an app is set here: the memo is told, then the event emitted."""
        result = self.results[app]
        result.status = status
        for name, value in fields.items():
            setattr(result, name, value)
        if self.memo is not None:
            self.memo.finish(app, result)
        if event:
            self._emit(event, app)

    def _finish(self, app: str, status: AppStatus) -> None:
        self._settle(app, status, Kind.DONE)
        if not status.ok:
            self._skip_downstream(app)
            return
        for succ in sorted(self.graph.successors(app), key=self.pipeline.order.index):
            if self._ready(succ):
                self._start(succ)

    def _skip_downstream(self, failed: str) -> None:
        below = nx.descendants(self.graph, failed)
        for app in self.pipeline.order:
            if app in below and self.results[app].status is AppStatus.PENDING:
                reason = f"{_failed(failed, self.results)} ({_chain(self.graph, failed, app)})"
                self._settle(app, AppStatus.SKIPPED, Kind.SKIP, reason=reason)

    def _stop_after(self, app: str, ended: TaskResult) -> None:
        """A cell of ``app`` raised SystemExit: serial execution stops there, so every
        app whose first cell comes later is skipped, running or not, its result dropped."""
        error = ended.error or {}
        at = error.get("cell")
        at = self.pipeline.apps[app].spec.cells[-1] if at is None else at
        reason = _exit_reason(self.pipeline, app, at, error)
        for later in self.pipeline.order:
            if later != app and later not in self.unreached and self.pipeline.apps[later].spec.cells[0] > at:
                self.unreached.add(later)
                self._settle(later, AppStatus.SKIPPED, Kind.SKIP, reason=reason, stopped_by=app,
                             output=None, error=None, items=None)

    def _skip_unreached(self) -> None:
        """Skip the apps still pending when nothing runs: reset to run again after
        a change, they depend on an app that had failed."""
        for app, result in self.results.items():
            if result.status is AppStatus.PENDING:
                failed = next((p for p in self.graph.predecessors(app) if not self.results[p].status.ok),
                              None)
                reason = _failed(failed, self.results) if failed else "not reached"
                self._settle(app, AppStatus.SKIPPED, Kind.SKIP, reason=reason)

    def _interrupted(self) -> None:
        """Ctrl-C: running apps and items failed; pending apps, and items that never
        started (not submitted, or cancelled in the executor's queue), skipped. No
        events: the run is over."""
        unstarted = {(task.app, task.item) for future, task in self.running.items() if _never_started(future)}
        for app, result in self.results.items():
            if result.status is AppStatus.RUNNING:
                for record in result.items or []:
                    if not record.status.final:
                        never = record.status is AppStatus.PENDING or (app, record.index) in unstarted
                        record.status = AppStatus.SKIPPED if never else AppStatus.FAILED
                self._settle(app, AppStatus.FAILED, None, end_time=time.time(),
                             error={"ename": "KeyboardInterrupt", "evalue": "the run was interrupted"})
            elif result.status is AppStatus.PENDING:
                self._settle(app, AppStatus.SKIPPED, None, reason="the run was interrupted")

    # ------------------------------------------------------------ unpredicted mutations

    def _on_mutations(self, app: str, names: list[str]) -> bool:
        """``app`` changed received ``names`` unpredicted: re-wire and re-run their readers.
        False when that cannot give serial execution's result (``app`` fails)."""
        try:
            rewires = self.flow.resolve(app, names)
        except MutationError as exc:
            self.results[app].error = {"ename": "MutationError", "evalue": str(exc)}
            for reader in exc.readers:
                if self.results[reader].status is AppStatus.PENDING:
                    self._settle(reader, AppStatus.SKIPPED, Kind.SKIP, reason=str(exc))
            return False
        for rewire in rewires:
            self._rerun(rewire)
        return True

    def _rerun(self, rewire: Rewire) -> None:
        result = self.results[rewire.reader]
        change = {"app": rewire.mutator, "variable": rewire.variable,
                  "reran": result.status is not AppStatus.PENDING}
        result.reruns = [*(result.reruns or []), change]
        self._emit(Kind.RERUN, rewire.reader)
        below = nx.descendants(self.graph, rewire.reader)
        for app in [rewire.reader, *(a for a in self.pipeline.order if a in below)]:
            self._invalidate(app)

    def _invalidate(self, app: str) -> None:
        """``app`` runs again: a running attempt turns stale (discarded when it ends),
        a finished app goes back to pending; its items not yet submitted are dropped."""
        self.backlog = deque(t for t in self.backlog if t.app != app)
        active = self._active(app)
        for task in active:
            task.stale = True
        if not active and self.results[app].status is not AppStatus.PENDING:
            self._reset(app)

    def _discard(self, app: str) -> None:
        """A stale attempt of ``app`` ended: run it again once it may."""
        if self._active(app):
            return
        self._reset(app)
        if self._ready(app):
            self._start(app)

    def _active(self, app: str) -> list[Task]:
        """The tasks of ``app`` under way: submitted, or ended by the memo and not yet taken."""
        return [t for t in [*self.running.values(), *(t for t, _ in self.hits)] if t.app == app]

    def _reset(self, app: str) -> None:
        result = self.results[app]
        result.status, result.error, result.reason, result.output = AppStatus.PENDING, None, None, None
        result.cache = None
        if result.items is not None:
            result.items = None
            self.maps.pop(app, None)
            self.tally.pop(app, None)


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


class _Tally:
    """A map app's items in a final state, counted as each ends."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.failed, self.cached = total, 0, 0, 0

    def count(self, status: AppStatus) -> None:
        self.done += 1
        self.failed += status in (AppStatus.FAILED, AppStatus.TIMED_OUT)
        self.cached += status is AppStatus.CACHED

    def snapshot(self) -> Items:
        return Items(self.total, self.done, self.failed, self.cached)


def _never_started(future: Future[TaskResult]) -> bool:
    """Whether a stopped executor cancelled the task in its queue, or ended it unstarted."""
    if future.cancelled():
        return True
    return future.done() and future.exception() is None and bool((future.result().error or {}).get("unstarted"))
