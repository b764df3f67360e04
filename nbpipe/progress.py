"""What a run shows on stderr while it runs: the views of ``nbpipe execute``.

Every view is an ``on_event`` listener: it reads the frozen events of
:mod:`.events` in the driver's main thread and never sees the scheduler's
state.

- :class:`PlainView`: one timestamped line per event, when stderr is not a
  terminal (logs, CI; scripts and tests read these lines) and with
  ``--debug``. ``-q`` keeps only what went wrong.
- :class:`LiveView`: on a terminal, a live region drawn with rich: one line
  per running app with its elapsed time, a progress bar per map app, the
  apps counted by state and a spinner. Its refresh thread redraws it four
  times a second, so it moves while an app computes and no event comes
  (the main thread waits in ``concurrent.futures.wait`` meanwhile); it reads
  only a snapshot of the events, taken under a lock. Finished apps scroll
  above it as the plain view's lines.
- ``-v`` (either view): what the apps print appears as they print it. Each
  task appends its cells' text to its log in the run directory
  (``TaskSpec.verbose``, :meth:`~nbpipe.store.Store.output_log`), and an
  :class:`~nbpipe.tail.OutputTail` reads the logs of the running tasks from
  the refresh thread, each line prefixed with its app (and item).

A view is a context manager: leaving it, however the run ends (an error,
Ctrl-C, SIGTERM, which :mod:`.stop` raises in the main thread), stops its
thread and the live region and shows the cursor again.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .events import Error, Event, Kind
from .tail import OutputTail, Printed

__all__ = ["Line", "Lines", "LiveView", "PlainView", "View", "format_frame", "view_for"]

#: How often the live region is redrawn and the output logs are read (seconds).
REFRESH = 0.25


def view_for(total: int, *, quiet: bool = False, plain: bool = False) -> View:
    """The view for a run of ``total`` apps: live on a terminal, else plain lines.

    ``plain`` (``--debug``) and ``quiet`` always give plain lines. To make the
    view show what the apps print, pass its :meth:`View.watch` as
    ``execute(on_output=...)``.
    """
    if not (quiet or plain) and _terminal():
        return LiveView(total)
    return PlainView(total, quiet=quiet)


def _terminal() -> bool:
    """Whether stderr is a terminal that understands cursor movement."""
    return _isatty(sys.stderr) and os.environ.get("TERM", "") not in ("dumb", "unknown")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------- the lines


@dataclass(frozen=True)
class Line:
    """One progress line: ``stamp`` (when, how many apps are final), ``body``
    (``failed    fit in 0.3s: ...``), and the failing cell's frame, if known."""

    stamp: str
    body: str
    frame: str | None = None
    #: what kind of news it is, for a view that colours: completed, cached, failed, skipped, warning, None
    tone: str | None = None

    def text(self) -> str:
        if not self.frame:
            return self.stamp + self.body
        return f"{self.stamp}{self.body}\n{' ' * (len(self.stamp) + 10)}{self.frame}"

    @property
    def alarming(self) -> bool:
        """Whether ``-q`` still shows it: a failure, a retry, an unpredicted change."""
        return self.tone in ("failed", "warning")


class Lines:
    """Turns events into :class:`Line` s, counting the apps that reached a final state."""

    def __init__(self, total: int, start: float | None = None) -> None:
        self.total, self.done = total, 0
        self.start = time.time() if start is None else start
        self.finished: set[str] = set()

    def line(self, event: Event) -> Line | None:
        made = self._body(event)
        if made is None:
            return None
        body, frame, tone = made
        return Line(f"nbpipe [{event.time - self.start:7.1f}s] ({self.done}/{self.total}) ", body, frame, tone)

    def _body(self, event: Event) -> tuple[str, str | None, str | None] | None:
        app = event.app
        if event.kind is Kind.START:
            return f"started   {app}", None, None
        if event.kind is Kind.RETRY:
            return f"retrying  {app} (attempt {event.attempt})", None, "warning"
        if event.kind is Kind.SPLIT:
            return f"mapping   {app} over {event.items.total if event.items else 0} item(s)", None, None
        if event.kind is Kind.CACHED:
            return None  # the "done" line that follows says cached
        if event.kind is Kind.ITEM:
            return _items_line(event)
        if event.kind is Kind.RERUN:
            return self._rerun_line(event), None, "warning"
        self.done += app not in self.finished  # an app that ran again (or ran, below a SystemExit) counts once
        self.finished.add(app)
        if event.kind is Kind.SKIP:
            return f"skipped   {app}: {event.reason}", None, "skipped"
        status = event.status.value.replace("_", " ")
        ran = event.duration is not None and event.status.value != "cached"
        line = f"{status:<9} {app}" + (f" in {event.duration:.1f}s" if ran else "")
        if event.error:
            line += f": {event.error.ename}: {_first_line(event.error.evalue)}"
        tone = event.status.value if event.status.ok else "failed"
        return line, format_frame(event.error), tone

    def _rerun_line(self, event: Event) -> str:
        change = event.rerun
        assert change is not None
        if event.app in self.finished:
            self.finished.discard(event.app)
            self.done -= 1
        what = "re-runs" if change.reran else f"reads {change.variable} from {change.changed_by}"
        return (f"app {event.app} {what}: app {change.changed_by} changed {change.variable}, "
                "which nbpipe did not predict")


def _items_line(event: Event) -> tuple[str, str | None, str | None] | None:
    """About ten lines per map app, and every failed item's."""
    items = event.items
    assert items is not None
    failed_now = event.item_status is not None and not event.item_status.ok
    if items.done != items.total and items.done % max(1, items.total // 10) and not failed_now:
        return None
    extra = [f"{n} {what}" for n, what in ((items.failed, "failed"), (items.cached, "cached")) if n]
    line = f"items     {event.app}: {items.done}/{items.total} finished" + (f" ({', '.join(extra)})" if extra else "")
    if failed_now and event.error:
        line += f"; item {event.item} ({event.label}): {event.error.ename}: {_first_line(event.error.evalue)}"
        return line, format_frame(event.error), "failed"
    return line, None, "failed" if failed_now else None


def format_frame(error: Error | None) -> str | None:
    """``cell 5, line 3: y = 1 / n``: where in the failing cell the error was raised,
    numbered as the reader sees the cell (``In [5]``), when the task found it."""
    if error is None or error.line is None:
        return None
    cell = f"cell {error.count}" if error.count is not None else f"the cell at index {error.cell}"
    return f"{cell}, line {error.line}: {error.source or ''}".rstrip()


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0][:300] if lines else ""


# ---------------------------------------------------------------- the views


class _Ticker:
    """A daemon thread calling ``tick`` every :data:`REFRESH` seconds until stopped."""

    def __init__(self, tick: Callable[[], None], name: str) -> None:
        self._tick, self._stopping = tick, threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(REFRESH):
            self._tick()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)


class View(ABC):
    """An ``on_event`` listener and a context manager; :meth:`watch`
    (``execute(on_output=view.watch)``) makes it show what the apps print."""

    def __init__(self, total: int) -> None:
        self.lines = Lines(total)
        self.tail: OutputTail | None = None
        self._ticker: _Ticker | None = None
        # The main thread (events) and the refresh thread (output, redraws) print in turn,
        # so an app's last printed lines come before the line that says it ended.
        self._turn = threading.RLock()

    def watch(self, run_dir: Path) -> None:
        self.tail = OutputTail(run_dir)

    def __call__(self, event: Event) -> None:
        with self._turn:
            if self.tail is not None:
                self.output(self.tail.follow(event))
            line = self.lines.line(event)
            if line is not None:
                self.show(event, line)

    @abstractmethod
    def show(self, event: Event, line: Line) -> None:
        """Show the line of ``event``."""

    @abstractmethod
    def output(self, lines: list[Printed]) -> None:
        """Show lines the apps printed."""

    def tick(self) -> None:
        with self._turn:
            if self.tail is not None:
                self.output(self.tail.poll())

    def __enter__(self) -> View:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        with self._turn:
            if self.tail is not None:
                self.output(self.tail.close())


class PlainView(View):
    """One timestamped line per event on stderr (``quiet``: only what went wrong)."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        super().__init__(total)
        self.quiet = quiet
        # This stderr, not the one of the moment: with --debug a cell runs in this process,
        # and what it writes to sys.stderr meanwhile becomes its output.
        self.stream = sys.stderr

    def watch(self, run_dir: Path) -> None:
        super().watch(run_dir)
        if self._ticker is None:
            self._ticker = _Ticker(self.tick, "nbpipe-output")

    def show(self, event: Event, line: Line) -> None:
        if not self.quiet or line.alarming:
            self._print(line.text())

    def output(self, lines: list[Printed]) -> None:
        for printed in lines:
            self._print(str(printed))

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


#: rich styles of the lines that scroll above the live region, by :attr:`Line.tone`
_TONES = {"completed": "green", "cached": "cyan", "failed": "bold red", "skipped": "yellow", "warning": "yellow"}


class LiveView(View):
    """The live region on a terminal (rich), redrawn by a refresh thread."""

    def __init__(self, total: int, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__(total)
        self.board = _Board(total)
        self.console = console or Console(file=sys.stderr, highlight=False)
        # What the driver prints meanwhile goes above the region; stdout only when it is the
        # terminal too (``--json | jq`` must get its JSON, and nothing else, on the pipe).
        self.live = Live(console=self.console, get_renderable=self.board.render, auto_refresh=False,
                         transient=False, redirect_stdout=_isatty(sys.stdout), redirect_stderr=True)

    def __enter__(self) -> View:
        try:
            self.live.start(refresh=True)
            self._ticker = _Ticker(self.tick, "nbpipe-live")
        except BaseException:
            self.live.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            super().__exit__(kind, exc, tb)
        finally:
            self.board.over = True
            # The last state stays on the screen, unless the run never started (bad input:
            # the error line says it all); the cursor is shown again.
            self.live.transient = not self.board.started
            self.live.stop()

    def __call__(self, event: Event) -> None:
        self.board.update(event)
        with self._turn:
            super().__call__(event)
            self.live.refresh()

    def show(self, event: Event, line: Line) -> None:
        # The region shows what runs and how far map apps are; what ended scrolls above it.
        if event.kind in (Kind.DONE, Kind.SKIP, Kind.RETRY, Kind.RERUN) or line.tone == "failed":
            from rich.text import Text

            text = Text()
            text.append(line.stamp, style="dim")
            text.append(line.body, style=_TONES.get(line.tone or "", ""))
            if line.frame:
                text.append("\n" + " " * (len(line.stamp) + 10) + line.frame)
            self.console.print(text)

    def output(self, lines: list[Printed]) -> None:
        from rich.text import Text

        for printed in lines:
            self.console.print(Text(f"{printed.who} | ", style="dim") + Text.from_ansi(printed.text))

    def tick(self) -> None:
        with self._turn:
            super().tick()
            self.live.refresh()


class _Board:
    """What the live region shows: the latest event of each app that is not pending,
    kept by the main thread, drawn by the refresh thread from a copy."""

    def __init__(self, total: int) -> None:
        self.total, self.start = total, time.time()
        self._lock = threading.Lock()
        self._latest: dict[str, Event] = {}
        self._since: dict[str, float] = {}
        self._spinner: Any = None  # one spinner, whose frame follows the clock: the heartbeat
        #: the run has ended: the last drawing shows the counts, without the spinner
        self.over = False
        self.started = False  # an event came

    def update(self, event: Event) -> None:
        self.started = True
        with self._lock:
            if event.kind is Kind.RERUN:  # back to pending: it starts again when it may
                self._latest.pop(event.app, None)
                self._since.pop(event.app, None)
                return
            self._latest[event.app] = event
            self._since.setdefault(event.app, event.time)

    def render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.spinner import Spinner
        from rich.table import Table

        with self._lock:
            latest, since = dict(self._latest), dict(self._since)
        now = time.time()
        running = {app: e for app, e in latest.items() if e.kind not in (Kind.DONE, Kind.SKIP)}
        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column(no_wrap=True)
        for app, event in running.items():
            name = app + (f" (attempt {event.attempt})" if event.attempt > 1 and event.items is None else "")
            bar, count = "", ""
            if event.items is not None:
                items = event.items
                bar = ProgressBar(total=max(items.total, 1), completed=items.done, width=30)
                count = f"{items.done}/{items.total}" + (f" · {items.failed} failed" if items.failed else "")
            table.add_row(name, bar, count, _clock(now - since[app]))
        counts = self._counts(latest, len(running), now - self.start)
        if self.over:
            return Group(table, f"nbpipe: {counts}") if running else f"nbpipe: {counts}"
        if self._spinner is None:
            self._spinner = Spinner("dots", style="cyan")
        self._spinner.update(text=counts)
        return Group(table, self._spinner) if running else self._spinner

    def _counts(self, latest: dict[str, Event], running: int, elapsed: float) -> str:
        ended = [e for e in latest.values() if e.kind in (Kind.DONE, Kind.SKIP)]
        by = {status: sum(1 for e in ended if _state(e) == status)
              for status in ("completed", "cached", "failed", "skipped")}
        by["running"] = running
        parts = [f"{n} {status}" for status, n in by.items() if n]
        return " · ".join([f"{len(ended)}/{self.total} apps", *parts, _clock(elapsed)])


def _state(event: Event) -> str:
    if event.kind is Kind.SKIP:
        return "skipped"
    return event.status.value if event.status.ok else "failed"


def _clock(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
