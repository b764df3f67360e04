"""Which queued tasks run together in one forked process (the local pool's batches).

Forking the preloaded zygote costs milliseconds (about 8 ms for a 130 MB
zygote on a small VM), which is most of what a trivial ``map:`` item costs.
So the local pool runs short items of one map app several to a process: the
child forks once and runs them one after another, each from a clean
namespace and process state (:mod:`.fresh`), each with its own result,
output notebook and log, as if it had been forked alone.

Only what is known to be short is batched: the first items of an app run
one to a process, and an app's items are batched once those measured below
:data:`SHORT_SECONDS`, so that a batch takes about :data:`BATCH_SECONDS`.
Batches shrink as the queue drains (guided self-scheduling: at most the
queue's share of each worker), so the last items spread over every worker.
Items of apps with a ``timeout:`` (enforced per item by the driver) and
split steps never batch.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from .base import TaskResult, TaskSpec

__all__ = ["BATCH_SECONDS", "Batcher", "MAX_BATCH", "SHORT_SECONDS"]

#: Items measured shorter than this (mean of an app's items so far) are batched.
SHORT_SECONDS = 0.25
#: What a batch aims to take: long enough to hide a fork, short enough that
#: progress and results come often.
BATCH_SECONDS = 0.5
#: The most items one process runs.
MAX_BATCH = 64
#: How many items of an app run alone before its items are measured short.
MEASURED = 4


@dataclass
class _Durations:
    count: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.inf


@dataclass
class Batcher:
    """The pool's queue of submitted tasks, and the rule that takes the next batch."""

    workers: int
    #: whether batches are formed at all (only where tasks fork from a zygote)
    enabled: bool = True
    _queue: deque[tuple[TaskSpec, Future[TaskResult]]] = field(default_factory=deque)
    _durations: dict[str, _Durations] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, spec: TaskSpec, future: Future[TaskResult]) -> None:
        with self._lock:
            self._queue.append((spec, future))

    def take(self) -> list[tuple[TaskSpec, Future[TaskResult]]]:
        """The next task, with the queued items that may run in its process (or nothing)."""
        with self._lock:
            if not self._queue:
                return []
            first = self._queue.popleft()
            size = self._size(first[0])
            if size == 1:
                return [first]
            batch, rest = [first], deque()
            while self._queue and len(batch) < size:
                entry = self._queue.popleft()
                (batch if _together(first[0], entry[0]) else rest).append(entry)
            self._queue.extendleft(reversed(rest))
            return batch

    def pending(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def drain(self) -> list[Future[TaskResult]]:
        """Empty the queue (the pool is stopping): the futures nobody will run."""
        with self._lock:
            futures = [future for _, future in self._queue]
            self._queue.clear()
            return futures

    def ended(self, result: TaskResult, item: int | None) -> None:
        """Learn how long an item of ``result.app`` took."""
        if item is None or result.end_time < result.start_time:
            return
        with self._lock:
            seen = self._durations.setdefault(result.app, _Durations())
            seen.count += 1
            seen.total += result.end_time - result.start_time

    def _size(self, spec: TaskSpec) -> int:
        """How many items run in the process that runs ``spec`` (1: alone)."""
        if not self.enabled or not batchable(spec):
            return 1
        seen = self._durations.get(spec.app)
        if seen is None or seen.count < MEASURED or seen.mean > SHORT_SECONDS:
            return 1
        queued = 1 + sum(1 for other, _ in self._queue if _together(spec, other))
        share = math.ceil(queued / (2 * self.workers))
        return max(1, min(MAX_BATCH, share, int(BATCH_SECONDS / max(seen.mean, 1e-4))))


def batchable(spec: TaskSpec) -> bool:
    """An item of a map app without a ``timeout:`` (the driver times a task, not an item)."""
    return spec.item is not None and not spec.split and not spec.timeout


def _together(first: TaskSpec, other: TaskSpec) -> bool:
    return (batchable(other) and other.app == first.app and other.notebook == first.notebook
            and other.container == first.container and other.engine == first.engine)
