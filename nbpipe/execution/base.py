"""The executor contract, task records and app states."""

from __future__ import annotations

import enum
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

__all__ = ["AppResult", "AppStatus", "Executor", "ItemResult", "TaskResult", "TaskSpec", "run_ok"]


class AppStatus(str, enum.Enum):
    """The states of an app during a run.

    ``pending`` -> ``running`` -> one of the final states ``completed``,
    ``failed``, ``timed_out`` or ``skipped`` (never ran because an app it
    depends on did not complete, or the run was interrupted). ``cached`` is
    final too: the app's outputs came from an earlier run.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"
    CACHED = "cached"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self in (AppStatus.COMPLETED, AppStatus.CACHED)


FINAL_STATES = frozenset({AppStatus.COMPLETED, AppStatus.FAILED, AppStatus.TIMED_OUT,
                          AppStatus.SKIPPED, AppStatus.CACHED})


@dataclass(frozen=True)
class TaskSpec:
    """One attempt at one app. Only paths and small values: it crosses processes."""

    app: str
    notebook: str  # the compiled task notebook
    output: str  # where the executed task notebook is written
    run_dir: str
    cwd: str
    parameters: dict[str, Any] = field(default_factory=dict)
    kernel_name: str | None = None
    timeout: float | None = None
    attempt: int = 1
    #: files the app declared with ``outputs:``; missing ones fail the app
    outputs: list[str] = field(default_factory=list)
    engine: str = "kernel"
    #: the element of a ``map:`` app's iterable this task runs, or None
    item: int | None = None
    #: the split step of a ``map:`` app
    split: bool = False
    #: number of items of each ``map:`` app whose values this task reads
    maps: dict[str, int] = field(default_factory=dict)
    #: the site executor to run on (``executor:LABEL``), None for the default
    executor: str | None = None
    #: name -> app to read it from instead of the compiled one: the scheduler
    #: re-wires a reader to an app that changed the name unpredicted
    sources: dict[str, str] = field(default_factory=dict)
    #: received names the app is not predicted to change; their digests are checked
    watch: list[str] = field(default_factory=list)
    #: the container the task runs in (:class:`nbpipe.containers.Container` as a dict), or None
    container: dict[str, Any] | None = None
    #: append what the cells print, as they print it, to the run directory's output log
    #: (:meth:`nbpipe.store.Store.output_log`), for the driver to show live (``-v``)
    verbose: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskResult:
    """What one attempt gave. ``error`` holds ``ename``, ``evalue`` and, when an
    error came from a cell, ``cell`` (the source notebook's cell index), ``count``
    (its execution count), ``line`` and ``source`` (the failing line of the cell)."""

    app: str
    status: AppStatus
    start_time: float
    end_time: float
    host: str
    attempt: int
    output: str | None = None
    error: dict[str, Any] | None = None
    #: the batch job (Slurm, PBS, LSF) the task ran in, if any
    job_id: str | None = None
    #: received names whose value the app changed although the graph did not
    #: predict it (an unpredicted mutation); their new values were shipped
    mutations: list[str] = field(default_factory=list)
    #: set by the memo on a hit (status ``cached``): the key and the run it came from
    cache: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        return cls(**{**data, "status": AppStatus(data["status"])})


@dataclass(kw_only=True)
class _Outcome:
    """What an app, or one item of a ``map:`` app, came to over its attempts."""

    status: AppStatus = AppStatus.PENDING
    attempts: int = 0
    #: when the first attempt was handed to the executor (on a batch site it may wait in a queue until start_time)
    submit_time: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    host: str | None = None
    job_id: str | None = None
    output: str | None = None
    error: dict[str, Any] | None = None
    #: from the memo's hit (status ``cached``): the key and the run it came from
    cache: dict[str, Any] | None = None

    @property
    def duration(self) -> float | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time


@dataclass
class ItemResult(_Outcome):
    """One item of a ``map:`` app."""

    index: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"index": self.index, "item": self.label, "status": self.status.value,
                                "attempts": self.attempts}
        if self.duration is not None:
            data["duration"] = round(self.duration, 6)
        for name in ("submit_time", "start_time", "end_time"):
            if getattr(self, name) is not None:
                data[name] = round(getattr(self, name), 6)
        if self.host:
            data["host"] = self.host
        if self.job_id:
            data["job_id"] = self.job_id
        if self.error:
            data["error"] = self.error
        if self.cache is not None:
            data["cache"] = self.cache
        return data


@dataclass
class AppResult(_Outcome):
    """The outcome of an app over all its attempts."""

    app: str
    reason: str | None = None  # why it was skipped
    #: for a ``map:`` app, one record per element of its iterable
    items: list[ItemResult] | None = None
    #: each time the app was re-wired to read a value another app changed
    #: unpredicted: ``{"app", "variable", "reran"}``
    reruns: list[dict[str, Any]] | None = None
    #: the app whose cell raised SystemExit above this one: serial execution
    #: stops there, so this app is skipped
    stopped_by: str | None = None

    def to_dict(self, items: bool = True) -> dict[str, Any]:
        """The app's record; without its items' records when ``items`` is False."""
        data = {"app": self.app, **{k: v for k, v in asdict(replace(self, items=None)).items()
                                    if v is not None and k not in ("app", "output", "items")}}
        data["status"] = self.status.value
        if self.items is not None and items:
            data["items"] = [item.to_dict() for item in self.items]
        if self.duration is not None:
            data["duration"] = round(self.duration, 6)
        return data


def run_ok(results: dict[str, AppResult]) -> bool:
    """Every app completed, or was skipped below a ``sys.exit(0)`` (papermill's success)."""
    return all(r.status.ok or bool(r.stopped_by) and results[r.stopped_by].status.ok  # type: ignore[index]
               for r in results.values())


class Executor(Protocol):
    """Runs task notebooks somewhere.

    ``submit`` starts one attempt and returns at once with a
    :class:`concurrent.futures.Future` that resolves to a :class:`TaskResult`
    (a failing notebook is a result with status ``failed``, not an exception;
    the future raises only when the executor itself broke). ``shutdown``
    releases the executor's resources; with ``cancel=True`` it stops running
    tasks first. After ``shutdown`` returns, no process the executor started
    is left running.
    """

    workers: int

    def submit(self, spec: TaskSpec) -> Future[TaskResult]: ...

    def shutdown(self, *, cancel: bool = False) -> None: ...
