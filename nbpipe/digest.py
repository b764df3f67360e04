"""Digests of the values an app received, to catch changes nbpipe did not predict.

Runs inside a task, in the same process before and after the app's cells: the
runtime takes :func:`digests` of every received name the graph does not
predict the app to define, right after loading, and again after the last
cell. A name whose digest changed was mutated through something the static
analysis cannot see (an alias, a function, ``exec``); the app reports it in
:func:`report_path` and the scheduler re-runs the apps that read the stale
value (:mod:`nbpipe.mutations`).

A digest is SHA-256 over the value's pickle (protocol 5); out-of-band buffers
(numpy and pandas data) are hashed where they lie, never copied. Both digests
are taken in one process, so pickles that differ between processes (sets of
strings) still compare equal. Functions, classes and modules stand for
themselves (their identity), and matplotlib artists are left out, because
drawing a figure rewrites its caches although its content did not change.
A value that cannot be pickled has no digest and is never reported.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["changed", "digest", "digests", "read_report", "report_path", "write_report"]

#: Values that are what they are by identity: a digest of them says nothing.
_IDENTITY = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)


def digest(value: Any) -> str | None:
    """The digest of ``value``, or None when it cannot be taken."""
    if isinstance(value, _IDENTITY):
        return None
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    try:
        _DigestPickler(out, protocol=5, buffer_callback=buffers.append).dump(value)
        h = hashlib.sha256(out.getbuffer())
        for buffer in buffers:
            h.update(buffer.raw())
    except Exception:
        return None
    return h.hexdigest()


def digests(namespace: dict[str, Any], names: list[str] | tuple[str, ...]) -> dict[str, str | None]:
    """The digest of each of ``names`` bound in ``namespace``."""
    return {name: digest(namespace[name]) for name in names if name in namespace}


def changed(namespace: dict[str, Any], before: dict[str, str | None]) -> list[str]:
    """The names whose value no longer has the digest it had in ``before``.

    A value that had no digest is never reported; one that had a digest and
    lost it (it now holds something unpicklable) has changed.
    """
    return [name for name, old in before.items()
            if old is not None and name in namespace and digest(namespace[name]) != old]


class _Placeholder(str):
    """What a digest pickles instead of an object that stands for itself."""


class _DigestPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if obj is _Placeholder:
            return NotImplemented  # by reference, as any class
        if isinstance(obj, _IDENTITY):
            return _Placeholder, (f"{type(obj).__name__} {id(obj)}",)
        if _is_artist(obj):
            return _Placeholder, ("matplotlib artist",)
        return NotImplemented


def _is_artist(obj: Any) -> bool:
    artist = sys.modules.get("matplotlib.artist")
    return artist is not None and isinstance(obj, artist.Artist)


def report_path(run_dir: str | Path, app: str, item: int | None = None) -> Path:
    """Where a task lists the received names it changed unpredicted."""
    which = app if item is None else f"{app}.{item}"
    return Path(run_dir) / "mutations" / f"{which}.json"


def write_report(path: Path, names: list[str]) -> None:
    if not names:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sorted(names)))


def read_report(path: Path) -> list[str]:
    """The names a finished task reported, and forget the report (a re-run writes its own)."""
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    path.unlink(missing_ok=True)
    return [str(n) for n in names]
