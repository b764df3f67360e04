"""The status view of a run in Jupyter: one table of apps, drawn from events.

:class:`Board` keeps what the run's :class:`~nbpipe.events.Event` records say
about each app (status, items, times, why it failed or was skipped);
:class:`LiveView` shows it in a notebook cell and updates it in place
(``display(..., display_id=True)``, then ``update``). :func:`run_html` draws
the same table from a finished :class:`~nbpipe.api.RunResult`, and
:func:`pipeline_html` the app graph of a :class:`~nbpipe.graph.Pipeline`, both
with the report's drawing of the graph (:mod:`nbpipe.layout`). The markup is
``templates/nbpipe/status.html.j2`` and ``pipeline.html.j2`` (with ``figures.j2``).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layout
from .events import Event, Items, Kind
from .execution.base import AppResult, AppStatus

__all__ = ["Board", "LiveView", "pipeline_html", "run_html"]

#: How often the live view is redrawn at most, and at least while an app runs (seconds)
INTERVAL = 0.25
HEARTBEAT = 1.0


@dataclass
class Row:
    """One app as the view shows it."""

    app: str
    needs: list[str]
    status: AppStatus = AppStatus.PENDING
    items: Items | None = None
    started: float | None = None  # when the view learnt it started (its own clock)
    duration: float | None = None
    host: str | None = None
    attempt: int = 0
    note: str = ""

    def cells(self, now: float) -> dict[str, Any]:
        """What the template shows of this row: plain strings and numbers."""
        elapsed = self.duration if self.duration is not None else (
            now - self.started if self.started is not None and not self.status.final else None)
        items = self.items
        return {
            "app": self.app, "status": self.status.value, "status_text": self.status.value.replace("_", " "),
            "needs": ", ".join(self.needs), "elapsed": _seconds(elapsed), "host": self.host or "",
            "attempt": self.attempt if self.attempt > 1 else None, "note": self.note,
            "items": None if items is None else {
                "done": items.done, "total": items.total, "failed": items.failed, "cached": items.cached,
                "percent": round(100 * items.done / items.total) if items.total else 100},
        }


@dataclass
class Board:
    """What a run's events said so far, app by app, in the pipeline's order."""

    rows: dict[str, Row]
    title: str
    started: float = field(default_factory=time.time)
    ended: float | None = None
    #: the run's verdict once known (``RunResult.ok``: apps skipped below a ``sys.exit(0)`` are fine)
    ok: bool | None = None

    @classmethod
    def of(cls, pipeline: Any) -> Board:
        order = {name: i for i, name in enumerate(pipeline.order)}
        rows = {name: Row(name, sorted(pipeline.graph.predecessors(name), key=order.__getitem__))
                for name in pipeline.order}
        return cls(rows, pipeline.parsed.path.name if pipeline.parsed.path else "notebook")

    def update(self, event: Event) -> None:
        row = self.rows.setdefault(event.app, Row(event.app, []))
        row.status, row.attempt = event.status, max(row.attempt, event.attempt)
        row.items = event.items or row.items
        row.host = event.host or row.host
        if event.kind in (Kind.START, Kind.CACHED):  # a re-wired app that runs again starts again
            row.started, row.duration, row.note = event.time, None, ""
        elif event.kind is Kind.DONE:
            row.duration = 0.0 if event.status is AppStatus.CACHED else event.duration
            if row.duration is None and row.started is not None:
                row.duration = event.time - row.started
        row.note = _note(event) or row.note


    def html(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        statuses = [row.status for row in self.rows.values()]
        done = sum(s.final for s in statuses)
        if self.ended is None:
            state, text = "running", f"running: {done} of {len(statuses)} apps done"
        else:
            ok = self.ok if self.ok is not None else all(s.ok for s in statuses)
            state, text = ("completed", "completed") if ok else ("failed", "not every app completed")
        return _render("status.html.j2", title=self.title, state=state, state_text=text,
                       elapsed=_seconds((self.ended or now) - self.started),
                       rows=[row.cells(now) for row in self.rows.values()])

    @property
    def running(self) -> bool:
        return any(row.status is AppStatus.RUNNING for row in self.rows.values())


class LiveView:
    """A cell's status view of a run: pass it as ``on_event``, inside ``with``.

    The view appears with the first event (a run refused before it starts
    shows only its error). Events only change the :class:`Board`; a thread
    redraws the view at most every :data:`INTERVAL` seconds, and every
    :data:`HEARTBEAT` while an app runs (its elapsed time moves), so a burst
    of map items costs a few redraws and a long app still shows it is alive.
    The last redraw, when the block ends, shows the final state.
    """

    def __init__(self, pipeline: Any) -> None:
        self.board = Board.of(pipeline)
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._handle: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LiveView:
        self._thread = threading.Thread(target=self._redraw, name="nbpipe-status", daemon=True)
        self._thread.start()
        return self

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.board.update(event)
        if self._handle is None:
            self._show()
        self._changed.set()

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join()
        self.board.ended = time.time()
        if self._handle is not None or kind is None or issubclass(kind, KeyboardInterrupt):
            self._show()

    def _redraw(self) -> None:
        while not self._stop.is_set():
            if (self._changed.wait(HEARTBEAT) or self.board.running) and self._handle is not None:
                self._changed.clear()
                if self._stop.is_set():
                    return
                self._show()
                time.sleep(INTERVAL)

    def _show(self) -> None:
        from IPython.display import HTML, display

        with self._lock:
            markup = HTML(self.board.html())
            if self._handle is None:
                self._handle = display(markup, display_id=True)
                return
        self._handle.update(markup)


def _note(event: Event) -> str | None:
    """What the last column says after ``event``: why the app (an item) failed, was
    skipped, is tried again or re-wired; None: what it said before still holds."""
    error = f"{event.error.ename}: {_first_line(event.error.evalue)}" if event.error else ""
    if event.kind is Kind.RETRY:
        return f"retrying (attempt {event.attempt})"
    if event.kind is Kind.SKIP:
        return event.reason or ""
    if event.kind is Kind.RERUN and event.rerun:
        return f"re-wired: {event.rerun.changed_by} changed {event.rerun.variable}"
    if event.kind is Kind.ITEM and error and event.item_status is not None and not event.item_status.ok:
        return f"item {event.item} ({event.label}): {error}"
    if event.kind is Kind.DONE and error:
        return error
    return None


def run_html(run: Any) -> str:
    """A finished run: its status, duration, files and the table of apps."""
    rows = []
    for name, result in run.apps.items():
        row = Row(name, [], result.status, _items(result), None, result.duration, result.host, result.attempts)
        error = result.error or next((i.error for i in result.items or [] if i.error), None)
        row.note = result.reason or (f"{error.get('ename')}: {_first_line(error.get('evalue', ''))}" if error else "")
        rows.append(row.cells(time.time()))
    meta = (run.notebook.metadata.get("nbpipe", {}) if run.notebook is not None else {})
    return _render("status.html.j2", title=str(run.output), state="completed" if run.ok else "failed",
                   state_text="completed" if run.ok else "not every app completed",
                   elapsed=_seconds(run.duration), rows=rows, site=meta.get("site"),
                   html=str(run.html) if run.html else None, pulled=sorted(run.values),
                   dag=layout.dag(meta, cell_ids=()))


def _items(result: AppResult) -> Items | None:
    if result.items is None:
        return None
    statuses = [item.status for item in result.items]
    return Items(len(statuses), sum(s.final for s in statuses),
                 sum(s in (AppStatus.FAILED, AppStatus.TIMED_OUT) for s in statuses),
                 sum(s is AppStatus.CACHED for s in statuses))


def pipeline_html(pipeline: Any) -> str:
    """The app graph: each app with its cells, what it reads from where and its
    options; each edge with what flows along it."""
    data = pipeline.to_json()
    cells = pipeline.parsed.cells
    apps = [{"name": app["name"], "options": app["options"],
             "cells": [cells[i].index for i in pipeline.apps[app["name"]].spec.cells],
             "reads": app["reads"]} for app in data["apps"]]
    edges = [_edge(e) for e in data["edges"]]
    return _render("pipeline.html.j2", title=pipeline.parsed.path.name if pipeline.parsed.path else "notebook",
                   apps=apps, edges=edges, dag=layout.dag({"graph": data}, cell_ids=()))


def _edge(edge: dict[str, Any]) -> dict[str, Any]:
    flows = edge["names"] + [f"file {f}" for f in edge["files"]] + (["after"] if "after" in edge["kinds"] else [])
    return {**edge, "flows": ", ".join(flows)}


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:200] if lines else ""


def _render(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)


@functools.lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(_templates())), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)


def _templates() -> Path:
    """``templates/nbpipe`` of the source tree, else where ``pip install`` put it."""
    here = Path(__file__).resolve().parent.parent / "templates" / "nbpipe"
    if (here / "status.html.j2").exists():
        return here
    from jupyter_core.paths import jupyter_path

    for path in map(Path, jupyter_path("nbconvert", "templates", "nbpipe")):
        if (path / "status.html.j2").exists():
            return path
    return here
