"""Where a run's files and the cache's entries live, and how they are laid out.

A run directory (private, removed after the run) holds the task notebooks,
what the tasks print (with ``-v``), the values apps ship, the elements of
``map:`` iterables, the mutation reports and the metrics. The cache directory holds one entry per key, each a
directory with the files an app (a map item, a map split) produced and a
manifest that checksums every one of them. This module only knows paths,
files and checksums; what goes into an entry and what a key hashes are
:mod:`.memo`'s and :mod:`.cache`'s business. It imports only the standard
library: tasks use it to find the files they read and write.

Entries are written into ``tmp/`` and renamed into place whole, so a reader
(another run sharing the cache) sees an entry complete or not at all; an
entry that fails its checksums is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CACHE_DIR_NAME", "Entry", "Store", "file_sha256"]

#: The cache directory beside a notebook, unless ``NBPIPE_CACHE_DIR``,
#: ``--cache-dir`` or a site's ``cache_dir`` says otherwise.
CACHE_DIR_NAME = ".nbpipe-cache"
#: The cache's record of cell durations, and how many cells it remembers.
DURATIONS, MAX_DURATIONS = "durations.json", 20000
_FORMAT = 1
_TAG = ("Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by nbpipe.\n"
        "# For information about cache directory tags see https://bford.info/cachedir/\n")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    """A verified cache entry: its directory, what the memo recorded, its files."""

    key: str
    path: Path
    meta: dict[str, Any]
    files: tuple[str, ...]
    size: int
    used: float  # when a run last read it (or wrote it)

    def file(self, name: str) -> Path:
        return self.path / name


class Store:
    """The layout of one run directory and of the cache directory.

    ``Store(run_dir)`` is enough inside a task; the driver passes the cache
    directory too (None: nothing is cached); ``nbpipe cache`` only the cache
    (:meth:`of_cache`).
    """

    def __init__(self, run_dir: str | Path, cache_dir: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._warned = False  # a cache that cannot be written says so once per run

    @classmethod
    def of_cache(cls, cache_dir: str | Path) -> Store:
        """A store for the cache alone, with no run directory (``nbpipe cache``)."""
        store = cls.__new__(cls)
        store.cache_dir, store._warned = Path(cache_dir), False
        return store

    # -- the run directory -------------------------------------------------

    @property
    def tasks(self) -> Path:
        return self.run_dir / "tasks"

    def task_notebook(self, app: str, split: bool = False) -> Path:
        return self.tasks / f"{app}.split.ipynb" if split else self.tasks / f"{app}.ipynb"

    def executed(self, app: str, item: int | None = None, split: bool = False) -> Path:
        """The executed task notebook of an app, a map item or a map split."""
        which = f"{app}.{item}" if item is not None else f"{app}.split" if split else app
        return self.tasks / f"{which}.out.ipynb"

    def attempt(self, app: str, which: str, attempt: int, suffix: str) -> Path:
        """A file of one attempt (``.spec.json``, ``.result.json``, ``.log``)."""
        return self.tasks / f"{app}.{which}.{attempt}{suffix}"

    def output_log(self, app: str, item: int | None = None, split: bool = False) -> Path:
        """Where a task appends what its cells print, as they print it (``-v``; every attempt)."""
        which = f"{app}.{item}" if item is not None else f"{app}.split" if split else app
        return self.run_dir / "output" / f"{which}.log"

    def values(self, app: str, item: int | None = None) -> Path:
        """The directory of what ``app`` (item ``item`` of a map app) ships."""
        base = self.run_dir / "values" / app
        return base if item is None else base / "items" / str(item)

    def value(self, app: str, name: str, item: int | None = None) -> Path:
        """The file ``name`` an app ships: :data:`~nbpipe.runtime.BUNDLE` or a generator's state."""
        return self.values(app, item) / f"{name}.pkl"

    def split_dir(self, app: str) -> Path:
        return self.run_dir / "values" / app / "split"

    def element(self, app: str, index: int) -> Path:
        """Where the element ``index`` of a map app's iterable is stored."""
        return self.split_dir(app) / f"{index}.pkl"

    def split_count(self, app: str) -> Path:
        return self.split_dir(app) / "count.json"

    def mutation_report(self, app: str, item: int | None = None) -> Path:
        which = app if item is None else f"{app}.{item}"
        return self.run_dir / "mutations" / f"{which}.json"

    def metrics(self, app: str) -> Path:
        return self.run_dir / "metrics" / f"{app}.json"

    @property
    def parsl_logs(self) -> Path:
        return self.run_dir / "parsl"

    @property
    def container_home(self) -> Path:
        """HOME of container apps whose image has no writable home for the user."""
        return self.run_dir / "home"

    # -- the cache -----------------------------------------------------------

    def _cache(self) -> Path:
        if self.cache_dir is None:
            raise RuntimeError("this store has no cache directory")
        return self.cache_dir

    def entry_dir(self, key: str) -> Path:
        digest = key.split(":", 1)[-1]
        return self._cache() / "entries" / digest[:2] / digest

    def put(self, key: str, files: dict[str, Path], meta: dict[str, Any], replace: bool = False) -> bool:
        """Store ``files`` (name in the entry -> file now) under ``key``, whole or not at all.

        Returns False when the entry already exists (another run stored the same
        result first; ``replace``: a refreshed app's result replaces it) or the
        cache cannot be written; a cache is an optimisation, so a failure to
        write it only warns, once.
        """
        final = self.entry_dir(key)
        if final.exists() and not replace:
            return False
        try:
            building = Path(tempfile.mkdtemp(prefix="entry-", dir=self._prepare()))
        except OSError as exc:
            self._warn_once(f"cannot write the cache in {self._cache()}: {exc.strerror}; "
                            "results are not being stored")
            return False
        try:
            listed = {name: _place(source, building / name, name) for name, source in sorted(files.items())}
            _write_manifest(building, key, meta, listed)
            final.parent.mkdir(parents=True, exist_ok=True)
            if replace and final.exists():
                self._discard(final)
            os.rename(building, final)
            return True
        except OSError as exc:
            if not final.exists():
                self._warn_once(f"cannot write the cache entry {final}: {exc.strerror or exc}")
            return False
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            _warn(message)

    def get(self, key: str, what: str = "") -> Entry | None:
        """The entry under ``key`` if it is whole and every checksum matches; a corrupt
        one is removed with a one-line warning naming ``what`` it held."""
        path = self.entry_dir(key)
        if not path.is_dir():
            return None
        entry, problem = _verified(key, path)
        if entry is None:
            _warn(f"cache entry for {what or key} is corrupt ({problem}); running it again")
            self._discard(path)
            return None
        try:
            os.utime(path / "manifest.json")  # last used: what prune --older-than reads
        except OSError:
            pass
        return entry

    def entries(self) -> Iterator[Entry]:
        """Every entry whose manifest reads, without checking the files' checksums."""
        root = self._cache() / "entries"
        for path in sorted(root.glob("*/*")) if root.is_dir() else ():
            try:
                manifest = json.loads((path / "manifest.json").read_text())
                used = (path / "manifest.json").stat().st_mtime
            except (OSError, ValueError):
                continue
            files = manifest.get("files", {})
            yield Entry(manifest.get("key", path.name), path, manifest.get("meta", {}), tuple(files),
                        sum(int(size) for size, _ in files.values()), used)

    def remove(self, entry: Entry) -> None:
        self._discard(entry.path)

    def _discard(self, path: Path) -> None:
        """Move an entry aside first (a rename is atomic), then delete it."""
        try:
            aside = Path(tempfile.mkdtemp(prefix="gone-", dir=self._prepare()))
            os.rename(path, aside / "entry")
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _prepare(self) -> Path:
        root = self._cache()
        tmp = root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        tag = root / "CACHEDIR.TAG"  # backup tools skip a tagged directory
        if not tag.exists():
            try:
                tag.write_text(_TAG)
            except OSError:
                pass
        return tmp

    # -- measured cell durations (what ``--split auto`` weighs cells by) ---------

    def durations(self) -> dict[str, float]:
        """Seconds each cell took when it last ran, by its source's digest; {} if none."""
        try:
            data = json.loads((self._cache() / DURATIONS).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items()
                if isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}

    def record_durations(self, measured: dict[str, float]) -> None:
        """Add what a run measured (newest last; the oldest beyond :data:`MAX_DURATIONS` go);
        written whole, and only a warning if it cannot be."""
        if not measured:
            return
        known = self.durations()
        for key in measured:
            known.pop(key, None)
        known.update({k: round(v, 4) for k, v in measured.items()})
        kept = dict(list(known.items())[-MAX_DURATIONS:])
        try:
            tmp = self._prepare()
            with tempfile.NamedTemporaryFile("w", dir=tmp, suffix=".json", delete=False) as f:
                json.dump(kept, f)
            os.replace(f.name, self._cache() / DURATIONS)
        except OSError as exc:
            self._warn_once(f"cannot write the cache in {self._cache()}: {exc.strerror}; "
                            "cell durations are not being recorded")

    def forget_durations(self) -> None:
        try:
            (self._cache() / DURATIONS).unlink()
        except OSError:
            pass

    def clean_tmp(self, older_than: float = 24 * 3600) -> None:
        """Remove entries left half-built by a run that was killed (``nbpipe cache prune``)."""
        tmp = self._cache() / "tmp"
        now = time.time()
        for path in tmp.iterdir() if tmp.is_dir() else ():
            try:
                if now - path.stat().st_mtime > older_than:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                continue


def _place(source: Path, target: Path, name: str) -> list[Any]:
    """Put ``source`` in an entry as ``name``; return [size, sha256]."""
    target.parent.mkdir(parents=True, exist_ok=True)
    link_or_copy(source, target, name)
    return [target.stat().st_size, file_sha256(target)]


def linkable(name: str) -> bool:
    """Whether a file of an entry may be a hard link rather than a copy: a shipped
    pickle or buffer, which nbpipe never writes in place (each is written beside
    and renamed; large buffers are mapped copy-on-write). Anything else (a
    notebook, metrics, an output file) is copied, as a rerun may rewrite it."""
    head = name.partition("/")[0]
    return head in ("values", "split") and re.search(r"\.(pkl|buf\d+)$", name) is not None


def link_or_copy(source: Path, target: Path, name: str) -> None:
    """Hard-link when :func:`linkable` (copy across filesystems), else copy."""
    if linkable(name):
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


def _write_manifest(where: Path, key: str, meta: dict[str, Any], files: dict[str, list[Any]]) -> None:
    body = {"format": _FORMAT, "key": key, "meta": meta, "files": files}
    body["checksum"] = _checksum(body)
    data = json.dumps(body, indent=1, sort_keys=True)
    # No fsync: an entry torn by a crash fails its checksums and is never trusted.
    (where / "manifest.json").write_text(data, encoding="utf-8")


def _checksum(body: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _verified(key: str, path: Path) -> tuple[Entry | None, str]:
    """The entry at ``path``, or None and what is wrong with it."""
    try:
        manifest_path = path / "manifest.json"
        body = json.loads(manifest_path.read_text(encoding="utf-8"))
        used = manifest_path.stat().st_mtime
    except (OSError, ValueError) as exc:
        return None, f"manifest unreadable: {exc}"
    if not isinstance(body, dict) or body.get("checksum") != _checksum(body) or body.get("key") != key:
        return None, "manifest checksum differs"
    if body.get("format") != _FORMAT:
        return None, f"written by another format ({body.get('format')})"
    files = body.get("files", {})
    for name, (size, sha) in files.items():
        file = path / name
        try:
            if file.stat().st_size != size or file_sha256(file) != sha:
                return None, f"{name}: checksum differs"
        except OSError:
            return None, f"{name}: missing"
    return Entry(key, path, body.get("meta", {}), tuple(files), sum(s for s, _ in files.values()), used), ""


def _warn(message: str) -> None:
    print(f"nbpipe: warning: {message}", file=sys.stderr, flush=True)
