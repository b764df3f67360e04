"""What ``nbpipe cache list|clear|prune`` does to a cache directory.

Entries are listed from their manifests (:class:`~nbpipe.store.Store`); a
notebook's entries are those its runs stored (the notebook's resolved path
is recorded in each). Pruning removes entries not used for a while, then the
least recently used until the cache fits a size, and what killed runs left
half-written.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .store import Entry, Store

__all__ = ["Removed", "clear", "entries", "parse_age", "parse_size", "prune", "show_size"]

_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Removed:
    entries: int
    bytes: int


def entries(cache_dir: Path, notebook: Path | None = None) -> list[Entry]:
    """The entries in ``cache_dir`` (of ``notebook``'s runs only, if given), by notebook, app, item."""
    found = list(Store.of_cache(cache_dir).entries()) if cache_dir.is_dir() else []
    if notebook is not None:
        wanted = str(notebook.resolve())
        found = [e for e in found if e.meta.get("notebook") == wanted]
    return sorted(found, key=lambda e: (str(e.meta.get("notebook")), str(e.meta.get("app")),
                                        e.meta.get("item") is not None, e.meta.get("item") or 0))


def clear(cache_dir: Path, notebook: Path | None = None) -> Removed:
    """Remove every entry and the record of cell durations (``notebook``'s entries only, if given)."""
    if notebook is None and cache_dir.is_dir():
        Store.of_cache(cache_dir).forget_durations()
    return _remove(cache_dir, entries(cache_dir, notebook))


def prune(cache_dir: Path, *, older_than: float | None = None, max_size: int | None = None) -> Removed:
    """Remove entries unused for ``older_than`` seconds, then the least recently used ones
    until the rest holds at most ``max_size`` bytes."""
    if older_than is None and max_size is None:
        raise UsageError("cache prune: say --older-than AGE (e.g. 30d) and/or --max-size SIZE (e.g. 5GB)")
    if not cache_dir.is_dir():
        return Removed(0, 0)
    Store.of_cache(cache_dir).clean_tmp()
    kept = sorted(entries(cache_dir), key=lambda e: e.used, reverse=True)  # most recently used first
    gone: list[Entry] = []
    if older_than is not None:
        now = time.time()
        gone = [e for e in kept if now - e.used > older_than]
        kept = [e for e in kept if now - e.used <= older_than]
    if max_size is not None:
        total = 0
        for entry in list(kept):
            total += entry.size
            if total > max_size:
                gone.append(entry)
                kept.remove(entry)
                total -= entry.size
    return _remove(cache_dir, gone)


def _remove(cache_dir: Path, gone: list[Entry]) -> Removed:
    store = Store.of_cache(cache_dir)
    for entry in gone:
        store.remove(entry)
    return Removed(len(gone), sum(e.size for e in gone))


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` (a bare number is days) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match:
        raise UsageError(f"--older-than {text!r}: give a number with a unit, e.g. 30d, 12h, 90m, 2w")
    return float(match.group(1)) * _AGE_UNITS[match.group(2) or "d"]


def parse_size(text: str) -> int:
    """``5GB``, ``500MB``, ``2GiB``, ``1000`` (bytes) -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise UsageError(f"--max-size {text!r}: give a number with a unit, e.g. 5GB, 500MB, 2GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def show_size(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
