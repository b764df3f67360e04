"""What the apps print, read while they run (``nbpipe execute -v``).

With ``TaskSpec.verbose`` each task appends its cells' printed text to its
own log in the run directory as it is printed
(:meth:`~nbpipe.store.Store.output_log`: papermill's ``stdout_file`` and
``stderr_file``, which the in-process engine's recorder honours too). An
:class:`OutputTail` in the driver follows the logs of the tasks under way and
hands out their new lines, each marked with its app (and item). It reads only
files, so it works wherever the driver sees the run directory: on the local
site, and on Parsl or Dask sites whose workers share it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from .events import Event, Kind
from .store import Store

__all__ = ["OutputTail", "Printed"]


@dataclass(frozen=True)
class Printed:
    """A line an app printed; ``who``: the app, or ``app[item]`` for an item of a map app."""

    who: str
    text: str

    def __str__(self) -> str:
        return f"{self.who} | {self.text}"


class _Log:
    """One task's output log, read from where the last read stopped."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path, self.prefix = path, prefix
        self.offset = 0
        self.partial = b""

    def skip(self) -> None:
        """Read on from the log's end: what an earlier run of the task left is not news."""
        try:
            self.offset = self.path.stat().st_size
        except OSError:
            pass
        self.partial = b""

    def read(self, final: bool = False) -> list[Printed]:
        """The lines written since the last read (``final``: also an unfinished last line)."""
        try:
            size = self.path.stat().st_size
        except OSError:
            size = self.offset
        data = b""
        if size > self.offset:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
            self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return [Printed(self.prefix, line.decode("utf-8", "replace").rstrip()) for line in lines]


class OutputTail:
    """Follows the output logs of the tasks under way in one run directory.

    The main thread tells it the events (:meth:`follow`): a task's log is
    followed from its start, and read to its end when the task ends; the
    refresh thread reads what the followed logs gained (:meth:`poll`). An app
    that runs again (a retry, a re-run) appends to its log, and only what it
    prints then is shown.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.store = Store(run_dir)
        self._lock = threading.Lock()
        self._logs: dict[tuple[str, int | None, bool], _Log] = {}
        self._followed: set[tuple[str, int | None, bool]] = set()

    def follow(self, event: Event) -> list[Printed]:
        """Follow or finish the logs ``event`` starts or ends; the last lines of those it ends."""
        app, kind = event.app, event.kind
        with self._lock:
            if kind is Kind.START:  # also again, when a re-wired app runs again
                for key in ((app, None, False), (app, None, True)):
                    self._log(key).skip()
                    self._followed.add(key)
            elif kind is Kind.SPLIT:
                lines = self._finish((app, None, True))
                self._followed |= {(app, i, False) for i in range(event.items.total if event.items else 0)}
                return lines
            elif kind is Kind.ITEM:
                return self._finish((app, event.item, False))
            elif kind in (Kind.DONE, Kind.SKIP):
                return [line for key in sorted(self._followed, key=str) if key[0] == app
                        for line in self._finish(key)]
            return []

    def poll(self) -> list[Printed]:
        """The new lines of every followed log."""
        with self._lock:
            return [line for key in list(self._followed) for line in self._log(key).read()]

    def close(self) -> list[Printed]:
        """Stop following; what is left unread in every followed log."""
        with self._lock:
            return [line for key in list(self._followed) for line in self._finish(key)]

    def _finish(self, key: tuple[str, int | None, bool]) -> list[Printed]:
        if key not in self._followed:
            return []
        self._followed.discard(key)
        return self._log(key).read(final=True)

    def _log(self, key: tuple[str, int | None, bool]) -> _Log:
        log = self._logs.get(key)
        if log is None:
            app, item, split = key
            log = self._logs[key] = _Log(self.store.output_log(app, item, split),
                                         app if item is None else f"{app}[{item}]")
        return log
