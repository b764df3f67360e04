"""The driver's side of a batch site (Parsl, Dask): which tasks travel to a worker together.

A task on a batch site costs the driver, the interchange or scheduler and
the worker a few milliseconds each, and the worker a fork of its zygote.
So short items of a map app travel several to a site task, with the local
pool's rule (:mod:`.batch`) and the site's worker count: the first items of
an app go alone; once its items are measured short, batches of about half a
second, at most the queue's share of each worker (``ceil(queued / (2 x
workers))``), so that the last items still spread over every worker. The
worker runs a batch's items one after another in one forked process
(:func:`.remote.run_batch`), each with its own result, output notebook and
log, as if it had been sent alone.

Items wait here, where they can still be batched, while twice as many site
tasks as the site has workers are under way; everything else (apps, split
steps, items of an app with a ``timeout:``) goes to the site at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .base import TaskResult, TaskSpec
from .batch import Batcher, batchable
from .remote import failed, worker_fix

__all__ = ["Dispatch"]

#: Site tasks under way per worker before items wait in the driver.
AHEAD = 2


class Dispatch:
    """Sends tasks to a site through ``send`` (a list of specs -> a future of their
    result dicts, in order); ``workers`` says how many the site has now."""

    def __init__(self, send: Callable[[list[TaskSpec]], Any], workers: Callable[[], int], site: str,
                 batch: bool = True) -> None:
        self._send, self._workers, self._site = send, workers, site
        self._queue = Batcher(1, enabled=batch)
        self._under_way = 0  # site tasks of queued items, sent and not yet ended
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="nbpipe-dispatch", daemon=True)
        self._thread.start()

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        if not batchable(spec):
            self._go([(spec, future)], queued=False)
            return future
        with self._wake:
            self._queue.put(spec, future)
            self._wake.notify()
        return future

    def close(self) -> list[Future[TaskResult]]:
        """Stop sending; return the futures of the items never sent (cancelled)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        futures = self._queue.drain()
        for future in futures:
            future.cancel()
        return futures

    def _loop(self) -> None:
        """Send the next batch whenever fewer site tasks than AHEAD x workers are under way."""
        while True:
            with self._wake:
                while not self._closed and not self._room():
                    self._wake.wait()
                if self._closed:
                    return
                self._queue.workers = max(1, self._workers())
                batch = [(spec, future) for spec, future in self._queue.take()
                         if future.set_running_or_notify_cancel()]
                self._under_way += 1
            if batch:
                self._go(batch, queued=True)
            else:
                self._ended_one()

    def _room(self) -> bool:
        return self._queue.pending() and self._under_way < AHEAD * max(1, self._workers())

    def _go(self, batch: list[tuple[TaskSpec, Future[TaskResult]]], queued: bool) -> None:
        specs = [spec for spec, _ in batch]
        try:
            remote = self._send(specs)
        except Exception as exc:
            self._settle(batch, exc, queued)
            return
        remote.add_done_callback(lambda f: self._settle(batch, f, queued))

    def _settle(self, batch: list[tuple[TaskSpec, Future[TaskResult]]], remote: Any, queued: bool) -> None:
        """Resolve each item's future from the site task's answer; a task that broke fails them all."""
        try:
            if isinstance(remote, BaseException):
                raise remote
            results = [TaskResult.from_dict(data) for data in remote.result()]
        except Exception as exc:
            message = worker_fix(self._site, exc)
            results = [failed(spec, message) for spec, _ in batch]
        for (spec, future), result in zip(batch, results):
            self._queue.ended(result, spec.item)
            if not future.done():
                future.set_result(result)
        if queued:
            self._ended_one()

    def _ended_one(self) -> None:
        with self._wake:
            self._under_way -= 1
            self._wake.notify()
