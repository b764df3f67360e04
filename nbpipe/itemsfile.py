"""A large map's items beside the merged notebook: ``OUT.items.jsonl``.

A ``map:`` app of more than ``merge.SIDECAR_ITEMS`` items keeps the first and
last few items' outputs (and every failed item's) in the merged notebook; every
item, those too, is one JSON line of this file: its app, index, label, status,
attempts, times, host, error and ``outputs`` (cell id -> the cell's outputs, as
in a notebook). The merge writes a line as it reads each item's executed
notebook, so the driver never holds them all; the file is put in place whole
(:mod:`.atomic`) before the merged notebook that links it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .atomic import AtomicWriter
from .errors import OutputError

__all__ = ["ItemsFile", "items_path", "read_items"]

SUFFIX = ".items.jsonl"


def items_path(output: str | Path) -> Path:
    """The items file of the merged notebook ``output``: ``k.merged.ipynb`` -> ``k.merged.items.jsonl``."""
    output = Path(output)
    return output.with_name(output.stem + SUFFIX)


class ItemsFile:
    """The items file being written: opened at the first item, put in place by :meth:`commit`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = self.path.name  # how the merged notebook links it: beside it
        self.count = 0
        self._writer: AtomicWriter | None = None

    def add(self, app: str, record: dict[str, Any], outputs: dict[str, list[Any]]) -> None:
        """One item's line: its record (``ItemResult.to_dict``) and its cells' outputs."""
        line = json.dumps({"app": app, **record, "outputs": outputs}, ensure_ascii=False) + "\n"
        try:
            if self._writer is None:
                self._writer = AtomicWriter(self.path)
            self._writer.write(line)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
        self.count += 1

    def commit(self) -> bool:
        """Put the file in place; with no item written, remove a stale one of an earlier run. True if written."""
        try:
            if self._writer is None:
                self.path.unlink(missing_ok=True)
                return False
            self._writer.commit()
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
        return True

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


def read_items(path: str | Path) -> Iterator[dict[str, Any]]:
    """The items of an items file, one at a time."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
