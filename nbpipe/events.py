"""Typed progress events: what the scheduler tells whoever watches a run.

The scheduler emits one frozen :class:`Event` each time an app (or one item
of a ``map:`` app) changes state. The terminal view, the Jupyter status view
and the API's ``on_event`` callback all read these records; none of them sees
the scheduler's live, mutable results. An event is a snapshot: its fields are
plain values copied when it was made, so a view may keep it, queue it for
another thread or compare two of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .execution.base import AppResult, AppStatus

__all__ = ["Error", "Event", "Items", "Kind", "Rerun"]


class Kind(str, Enum):
    """What happened to an app."""

    START = "start"  # its first attempt was submitted (a map app: its split step)
    CACHED = "cached"  # in place of START: its result came from the cache; DONE follows
    RETRY = "retry"  # a failed attempt is tried again (``retries:``)
    SPLIT = "split"  # a map app knows its items
    ITEM = "item"  # one item of a map app reached a final state
    DONE = "done"  # the app reached a final state other than skipped
    SKIP = "skip"  # the app will not run: ``reason`` says why
    RERUN = "rerun"  # the app reads a value another app changed unpredicted: ``rerun`` says which

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Items:
    """How far a ``map:`` app's items are."""

    total: int
    done: int  # in a final state, whatever it is
    failed: int  # failed or timed out
    cached: int

    @property
    def running(self) -> int:
        return self.total - self.done


@dataclass(frozen=True)
class Error:
    """The error an app (or an item) ended with."""

    ename: str
    evalue: str
    #: the source notebook's index of the cell that raised, when it came from a cell
    cell: int | None = None
    #: the failing line of that cell, as its traceback shows it (``line``: 1-based), when known
    line: int | None = None
    source: str | None = None
    #: that cell's execution count: the ``In [N]`` the reader sees, when it has one
    count: int | None = None

    @classmethod
    def of(cls, error: dict[str, Any] | None) -> Error | None:
        if not error:
            return None
        return cls(str(error.get("ename", "Error")), str(error.get("evalue", "")), error.get("cell"),
                   error.get("line"), error.get("source"), error.get("count"))


@dataclass(frozen=True)
class Rerun:
    """An app re-wired to read ``variable`` from ``changed_by``, which changed it unpredicted."""

    changed_by: str
    variable: str
    #: the app had already run (it runs again), rather than being pending
    reran: bool


@dataclass(frozen=True)
class Event:
    """One change of state of one app, as it was when it happened."""

    kind: Kind
    app: str
    status: AppStatus
    #: when it happened (seconds since the epoch)
    time: float
    attempt: int = 0
    #: ITEM: which item reached a final state, its label and its own status
    item: int | None = None
    label: str | None = None
    item_status: AppStatus | None = None
    #: a map app's items, once it knows them (from SPLIT on)
    items: Items | None = None
    #: the app's (ITEM: the item's) start, end, duration, host and batch job, once known
    start_time: float | None = None
    end_time: float | None = None
    host: str | None = None
    job_id: str | None = None
    #: SKIP: why the app will not run
    reason: str | None = None
    error: Error | None = None
    rerun: Rerun | None = None

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    @classmethod
    def of(cls, kind: Kind, result: AppResult, *, item: int | None = None, items: Items | None = None,
           now: float | None = None) -> Event:
        """A snapshot of ``result`` for ``kind`` (ITEM: of item ``item``); ``items``: the map app's
        counts, which the scheduler keeps as items end (counting them here would cost O(items))."""
        source: Any = result if item is None else result.items[item]  # type: ignore[index]
        change = (result.reruns or [None])[-1] if kind is Kind.RERUN else None
        return cls(
            kind=kind, app=result.app, status=result.status, time=time.time() if now is None else now,
            attempt=source.attempts, item=item, label=source.label if item is not None else None,
            item_status=source.status if item is not None else None, items=items,
            start_time=source.start_time, end_time=source.end_time, host=source.host, job_id=source.job_id,
            reason=result.reason, error=Error.of(source.error),
            rerun=Rerun(change["app"], change["variable"], change["reran"]) if change else None,
        )

