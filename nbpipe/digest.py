"""Digests of the values an app received, to catch changes nbpipe did not predict.

Runs inside a task, in the same process before and after the app's cells: the
runtime takes :func:`digests` of every received name the graph does not
predict the app to define, right after loading, and again after the last
cell. A name whose digest changed was mutated through something the static
analysis cannot see (an alias, a function, ``exec``); the app reports it in
:meth:`~nbpipe.store.Store.mutation_report` and the scheduler re-runs the apps that read the stale
value (:mod:`nbpipe.mutations`).

A digest is SHA-256 over the value's pickle (protocol 5); out-of-band buffers
(numpy and pandas data) are hashed where they lie, never copied. Both digests
are taken in one process, so pickles that differ between processes (sets of
strings) still compare equal. Functions, classes and modules stand for
themselves (their identity), and a matplotlib figure or axes stands for what
is drawn on it (how many lines, patches, texts; titles, labels, legend), not
for its pickle, because drawing rewrites its caches although its content did
not change.
A value that cannot be pickled has no digest and is never reported.

Large shipped buffers arrive as private copy-on-write mappings of their files
(:func:`nbpipe.runtime._read_buffer`). While none of a mapping's pages has been
written, the kernel still serves them from the file, so the buffer is
unchanged: the digest then stands for the mapping instead of reading it
(Linux's ``/proc/self/smaps`` counts the pages written), and an app that only
reads a 200 MB array pays a few milliseconds, not two passes over it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import pickle
import re
import sys
import types
import weakref
from pathlib import Path
from typing import Any

__all__ = ["changed", "digest", "digests", "read_report", "track_mapping", "write_report"]

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
            raw = buffer.raw()
            unwritten = _unwritten_mapping(raw)
            h.update(unwritten.encode() if unwritten else raw)
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
            return _Placeholder, (_drawn(obj),)
        return NotImplemented


def _drawn(artist: Any) -> str:
    """What of a figure or axes its content changes and drawing does not.

    Drawing rewrites ticks and caches; adding a line, a patch, a text, a title
    or a legend changes this. Other artists stand for themselves.
    """
    axes = sys.modules["matplotlib.axes"].Axes if "matplotlib.axes" in sys.modules else ()
    if isinstance(artist, axes):
        parts = [artist.lines, artist.collections, artist.patches, artist.images, artist.texts,
                 artist.tables, artist.artists]
        return (f"axes {[len(p) for p in parts]} {artist.get_title()!r} {artist.get_xlabel()!r} "
                f"{artist.get_ylabel()!r} {artist.get_legend() is not None}")
    if hasattr(artist, "axes") and isinstance(getattr(artist, "axes", None), list):
        return f"figure {[_drawn(a) for a in artist.axes]} {len(artist.texts)}"
    return "matplotlib artist"


def _is_artist(obj: Any) -> bool:
    artist = sys.modules.get("matplotlib.artist")
    return artist is not None and isinstance(obj, artist.Artist)


#: the copy-on-write mappings shipped buffers were loaded into, with their addresses
_mappings: list[tuple[weakref.ref[Any], int, int]] = []


def track_mapping(mapping: Any) -> None:
    """Remember a private copy-on-write mapping of a shipped buffer's file."""
    start = _address(memoryview(mapping))
    if start is not None:
        _mappings[:] = [m for m in _mappings if m[0]() is not None]  # unmapped ones may be reused
        _mappings.append((weakref.ref(mapping), start, start + len(mapping)))


def _unwritten_mapping(raw: memoryview) -> str | None:
    """A name for ``raw`` if it lies in a tracked mapping none of whose pages was written."""
    start = _address(raw) if _mappings else None
    if start is None:
        return None
    written: dict[int, int] | None = None  # /proc/self/smaps, read once and only if needed
    for alive, low, high in _mappings:
        if alive() is not None and low <= start and start + raw.nbytes <= high:
            written = _written_kb() if written is None else written
            if written.get(low) == 0:
                return f"unwritten mapping {start:x}+{raw.nbytes}"
    return None


def _address(view: memoryview) -> int | None:
    if view.readonly or not view.c_contiguous:
        return None
    cell = ctypes.c_char.from_buffer(view)
    try:
        return ctypes.addressof(cell)
    finally:
        del cell  # release the export at once: the mapping may be closed later


_SMAPS_ENTRY = re.compile(r"^([0-9a-f]+)-[0-9a-f]+ [^\n]*\n((?:[A-Z][^\n]*\n)*)", re.M)


def _written_kb() -> dict[int, int]:
    """Start address of each mapping -> how much of it was written (its private
    anonymous pages, in kB)."""
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for entry in _SMAPS_ENTRY.finditer(text):
        found = re.search(r"^Anonymous:\s+(\d+)", entry.group(2), re.M)
        if found:
            out[int(entry.group(1), 16)] = int(found.group(1))
    return out


def write_report(path: Path, names: list[str]) -> None:
    """List ``names`` (sorted) at ``path``; nothing when there are none (the task
    removed any earlier report before it ran)."""
    if not names:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(names))


def read_report(path: Path) -> list[str]:
    """The names a finished task reported, and forget the report (a re-run writes its own)."""
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    path.unlink(missing_ok=True)
    return [str(n) for n in names]
