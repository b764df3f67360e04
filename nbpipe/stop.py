"""One stop path: how a signal stops a run, and how long stopping may wait.

The first SIGINT, SIGTERM or SIGHUP raises :class:`Stopped` (a
``KeyboardInterrupt`` that carries the signal) in the main thread, so the run
unwinds through its one cleanup: pending apps are cancelled, running tasks
get SIGTERM (they save what they printed so far), then after a grace period
whatever is left gets SIGKILL. The partial merged notebook is written, the
run directory removed, and the command exits 128 + the signal's number
(130 for Ctrl-C).

A signal that comes while nbpipe cleans up, merges or writes raises nothing:
it is recorded (the run still ends as stopped), and a second signal only
ends the grace period, so that what is left is killed at once.

Handlers are installed only in the main thread (``nbpipe.execute()`` called
from another thread runs without them) and never replace a signal that is
ignored (``nohup`` keeps SIGHUP ignored).
"""

from __future__ import annotations

import functools
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["GRACE_SECONDS", "Stopped", "handled", "handling", "hold", "hurried", "requested", "shielded", "wait",
           "wait_process"]

T = TypeVar("T")

#: How long a stopped task may take to save its notebook and stop its kernel.
GRACE_SECONDS = 5.0

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """The run was stopped by ``signum``; ``exit_code`` is 128 + ``signum``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.depth = 0  # nested handled() blocks: the CLI's and execute()'s
        self.shield = 0
        self.signum: int | None = None
        self.hurry = threading.Event()

    def on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.hurry.set()  # a second signal: kill what is left now
            return
        self.signum = signum
        if not self.shield:
            raise Stopped(signum)


_state = _State()


@contextmanager
def handled() -> Iterator[None]:
    """Within this block a stop signal raises :class:`Stopped` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _state.on_signal)
    if _state.depth == 0:
        _state.signum, _state.shield = None, 0
        _state.hurry.clear()
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0:
            _state.shield = 0
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def handling(function: Callable[..., T]) -> Callable[..., T]:
    """Run ``function`` within :func:`handled`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with handled():
            return function(*args, **kwargs)

    return wrapper


def hold() -> None:
    """Until the outermost :func:`handled` block ends, a signal is recorded, not raised."""
    if threading.current_thread() is threading.main_thread():
        _state.shield += 1


@contextmanager
def shielded() -> Iterator[None]:
    """Within this block (cleanup, merge, write) a signal is recorded, not raised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.shield += 1
    try:
        yield
    finally:
        _state.shield -= 1


def requested() -> int | None:
    """The signal that asked the run to stop, if one did."""
    return _state.signum


def hurried() -> bool:
    """Whether a second signal asked to skip the grace period."""
    return _state.hurry.is_set()


def wait(event: threading.Event, seconds: float = GRACE_SECONDS) -> bool:
    """Wait for ``event`` for the grace period, or less once a second signal came."""
    return _until(event.is_set, seconds, pause=event.wait)


def wait_process(proc: subprocess.Popen[Any], seconds: float = GRACE_SECONDS) -> bool:
    """Wait for ``proc`` to end for the grace period, or less once a second signal came."""
    return _until(lambda: proc.poll() is not None, seconds)


def _until(done: Callable[[], bool], seconds: float, pause: Callable[[float], Any] = time.sleep) -> bool:
    """Poll ``done`` until it is true (True) or the time is up or a second signal came (False)."""
    deadline = time.monotonic() + seconds
    while not done():
        left = deadline - time.monotonic()
        if left <= 0 or _state.hurry.is_set():
            return False
        pause(min(left, 0.05))
    return True
