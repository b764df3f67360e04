"""The cache as the scheduler sees it: asked before a task runs, told when it ended.

:class:`CacheMemo` implements the scheduler's :class:`~nbpipe.execution.scheduler.Memo`.
When a task is about to be submitted it computes the task's key (:mod:`.cache`:
upstream keys are known by then) and, on a hit, restores what the task
produced into the run directory and the notebook directory: the executed
task notebook (its cells' outputs), the values it ships, its declared
``outputs:`` files and its metrics. A completed task is stored under its key;
failed, timed-out, interrupted and exited tasks, and those that changed a
received value unpredicted, never are. Resuming after a failure is the same
thing: what completed is found, the rest runs.

``verify`` mode reads nothing and stores nothing: each completed task's
outputs are compared with its cached result instead (``nbpipe verify``).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from .cache import Keys, _sha
from .compare import outputs_differ
from .execution.base import AppResult, AppStatus, TaskResult
from .graph import Pipeline
from .store import Entry, Store, file_sha256, link_or_copy

__all__ = ["CacheMemo", "Difference", "Policy"]


@dataclass(frozen=True)
class Policy:
    """What a run does with the cache."""

    read: bool = True  # --no-cache and verify: False
    write: bool = True  # --no-cache and verify: False
    #: apps that run whatever the cache holds (--refresh APP and what depends on it)
    refresh: frozenset[str] = frozenset()
    verify: bool = False


@dataclass
class Difference:
    """An app (an item) whose fresh outputs differ from its cached ones (``nbpipe verify``)."""

    app: str
    item: int | None
    cells: list[str]  # the ids of the source cells whose outputs differ
    cached_from: dict[str, Any] = field(default_factory=dict)


class CacheMemo:
    """Keys, lookups, restores and stores for one run."""

    def __init__(self, pipeline: Pipeline, store: Store, keys: Keys, policy: Policy,
                 run: dict[str, Any]) -> None:
        self.pipeline, self.files, self.keys, self.policy, self.run = pipeline, store, keys, policy, run
        self.own: dict[str, str] = {}  # app -> its key this run
        self.downstream: dict[str, str] = {}  # app -> what apps reading from it hash
        self.item_keys: dict[str, dict[int, str]] = {}
        self.differences: list[Difference] = []
        self.unverified: list[str] = []  # completed apps with nothing cached to compare with
        self.compared: list[str] = []  # completed apps (items) compared with their entry
        self._pending: dict[tuple[str, int | None, bool], str] = {}
        self._buffers: dict[str, dict[str, list[Path]]] = {}  # map app -> element -> its buffer files

    # -- the scheduler's Memo protocol -----------------------------------------

    def check(self, app: str, *, item: int | None, split: bool, preds: tuple[str, ...]) -> TaskResult | None:
        if split:
            self._buffers.pop(app, None)  # the split (again): its elements are new
        key = self._key(app, item, split, preds)
        self._pending[(app, item, split)] = key
        if not self._reads(app):
            return None
        entry = self.files.get(key, what=_what(app, item, split))
        if entry is None:
            return None
        return self._restore(entry, app, item, split)

    def store(self, app: str, *, item: int | None, split: bool, task: TaskResult) -> None:
        key = self._pending.get((app, item, split))
        if key is None or task.status is not AppStatus.COMPLETED or task.error or task.mutations:
            return
        if self.policy.verify:
            self._compare(key, app, item, split, task)
        elif self.policy.write and self.pipeline.apps[app].spec.cache:
            self._put(key, app, item, split, task)

    def finish(self, app: str, result: AppResult) -> None:
        self.downstream.pop(app, None)
        if not result.status.ok or app not in self.own:
            return
        if not self.pipeline.apps[app].spec.cache:
            self.downstream[app] = self._produced(app)  # cache:off (its items too): what it made this time
        elif result.items is not None:
            keys = self.item_keys.get(app, {})
            self.downstream[app] = _sha("map", [keys.get(i.index) for i in result.items])
        else:
            self.downstream[app] = self.own[app]

    # -- keys --------------------------------------------------------------------

    def _key(self, app: str, item: int | None, split: bool, preds: tuple[str, ...]) -> str:
        upstream = [self.downstream.get(p, f"unkeyed:{p}") for p in preds]
        if split:
            self.own[app] = self.keys.app(app, upstream)
            self.item_keys[app] = {}
            return self.keys.split(app, upstream)
        if item is not None:
            element = _files_digest(self._element_files(app, item))
            kept = [self.downstream.get(p, f"unkeyed:{p}") for p in self.keys.item_upstream(app, preds)]
            key = self.item_keys.setdefault(app, {})[item] = self.keys.item(app, kept, element)
            return key
        self.own[app] = self.keys.app(app, upstream)
        return self.own[app]

    def _reads(self, app: str) -> bool:
        return (self.policy.read and not self.policy.verify and app not in self.policy.refresh
                and self.pipeline.apps[app].spec.cache)

    def _element_files(self, app: str, item: int) -> list[Path]:
        """The element's pickle and its out-of-band buffers. The split directory is
        listed once per split, not once per item (a glob each was quadratic)."""
        path = self.files.element(app, item)
        if app not in self._buffers:
            found: dict[str, list[Path]] = {}
            for entry in sorted(path.parent.glob("*.buf*")):
                found.setdefault(entry.name.partition(".buf")[0], []).append(entry)
            self._buffers[app] = found
        return [path, *self._buffers[app].get(path.stem, [])]

    def _produced(self, app: str) -> str:
        """A digest of the values and files an app produced (a ``cache:off`` app's key downstream)."""
        values = self.files.values(app)
        files = sorted(p for p in values.rglob("*") if p.is_file()) if values.is_dir() else []
        declared = [self.keys.cwd / o for o in self.pipeline.apps[app].spec.outputs]
        return _sha("produced", _files_digest(files + [p for p in declared if p.is_file()]))

    # -- storing -----------------------------------------------------------------

    def _put(self, key: str, app: str, item: int | None, split: bool, task: TaskResult) -> None:
        files: dict[str, Path] = {}
        if task.output and Path(task.output).is_file():
            files["executed.ipynb"] = Path(task.output)
        if split:
            files.update(_tree(self.files.split_dir(app), "split"))
        else:
            files.update(_tree(self.files.values(app, item), "values", skip=("items", "split")))
        outputs: dict[str, str] = {}
        if not split:
            for n, declared in enumerate(self.pipeline.apps[app].spec.outputs):
                path = self.keys.cwd / declared
                if path.is_file():
                    files[f"outputs/{n}"], outputs[f"outputs/{n}"] = path, declared
            if item is None and self.files.metrics(app).is_file():
                files["metrics.json"] = self.files.metrics(app)
        meta = {
            "app": app, "item": item, "split": split, "outputs": outputs,
            "notebook": self.run.get("notebook"), "run": self.run.get("id"), "created": time.time(),
            "host": task.host, "duration": round(task.end_time - task.start_time, 6),
            "attempt": task.attempt, "job_id": task.job_id,
        }
        self.files.put(key, files, meta, replace=app in self.policy.refresh)

    # -- restoring -----------------------------------------------------------------

    def _restore(self, entry: Entry, app: str, item: int | None, split: bool) -> TaskResult | None:
        start = time.time()
        try:
            output = self._restore_files(entry, app, item, split)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            print(f"nbpipe: warning: cannot restore {_what(app, item, split)} from the cache "
                  f"({exc.strerror or exc}{where}); running it again", file=sys.stderr, flush=True)
            return None
        meta = entry.meta
        cache = {"key": entry.key, "run": meta.get("run"), "created": _iso(meta.get("created")),
                 "duration": meta.get("duration")}
        return TaskResult(app, AppStatus.CACHED, start, time.time(), meta.get("host") or socket.gethostname(),
                          int(meta.get("attempt") or 1), output=output, job_id=meta.get("job_id"), cache=cache)

    def _restore_files(self, entry: Entry, app: str, item: int | None, split: bool) -> str | None:
        output = None
        for name in entry.files:
            source = entry.file(name)
            head, _, rest = name.partition("/")
            if name == "executed.ipynb":
                target = self.files.executed(app, item, split)
                output = str(target)
            elif head == "split":
                target = self.files.split_dir(app) / rest
            elif head == "values":
                target = self.files.values(app, item) / rest
            elif head == "outputs":
                _restore_output(source, self.keys.cwd / entry.meta["outputs"][name])
                continue
            elif name == "metrics.json":
                target = self.files.metrics(app)
            else:
                continue
            _replace_with(source, target, name)
        return output

    # -- verify --------------------------------------------------------------------

    def _compare(self, key: str, app: str, item: int | None, split: bool, task: TaskResult) -> None:
        if split:
            return
        entry = self.files.get(key, what=_what(app, item, split))
        if entry is None or "executed.ipynb" not in entry.files or not task.output:
            self.unverified.append(_what(app, item, split))
            return
        self.compared.append(_what(app, item, split))
        cached, fresh = (_source_cells(entry.file("executed.ipynb")), _source_cells(Path(task.output)))
        differ = outputs_differ([c for _, c in cached], [c for _, c in fresh])
        if differ:
            ids = [fresh[i][0] if i < len(fresh) else cached[i][0] for i in differ]
            self.differences.append(Difference(app, item, ids, {"run": entry.meta.get("run"),
                                                                "created": _iso(entry.meta.get("created"))}))


def _source_cells(path: Path) -> list[tuple[str, Any]]:
    """(source cell id, cell) of an executed task notebook's cells that came from the source."""
    nb = nbformat.read(path, as_version=4)
    out = []
    for cell in nb.cells:
        source = cell.get("metadata", {}).get("nbpipe", {}).get("source")
        if cell.cell_type == "code" and source:
            out.append((source.get("id") or str(source.get("index")), cell))
    return out


def _what(app: str, item: int | None, split: bool) -> str:
    return f"app {app!r}" + (f" item {item}" if item is not None else " (split)" if split else "")


def _tree(root: Path, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """Entry name -> file for the finished files under ``root`` (not its ``skip`` folders)."""
    if not root.is_dir():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in skip or not path.is_file() or path.suffix == ".tmp" or ".tmp" in path.suffixes:
            continue
        out[f"{prefix}/{relative.as_posix()}"] = path
    return out


def _replace_with(source: Path, target: Path, name: str) -> None:
    """Put the entry's file ``name`` at ``target`` whole (a link or copy beside it, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    beside = target.with_name(f".{target.name}.restoring")
    beside.unlink(missing_ok=True)
    link_or_copy(source, beside, name)
    os.replace(beside, target)


def _restore_output(source: Path, target: Path) -> None:
    """A declared output file back in place: copied (the user may edit it), unless it is the same."""
    if target.is_file() and target.stat().st_size == source.stat().st_size \
            and file_sha256(target) == file_sha256(source):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    beside = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(source, beside)
    os.replace(beside, target)


def _files_digest(paths: list[Path]) -> str:
    return _sha(*(file_sha256(p) if p.is_file() else "missing" for p in paths))


def _iso(stamp: Any) -> str | None:
    if not isinstance(stamp, (int, float)):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
