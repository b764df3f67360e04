"""A notebook's shape, checked and made regular before its tags are parsed (pure).

nbformat reads a notebook that breaks its schema with a logged warning only,
and a notebook written by hand or by another tool often does. What would fail
later (in every app, or in the merge after every app has run) is refused here
with one line naming the cell and the fix, so ``check`` and ``execute`` agree:

- cells: a known ``cell_type``, a ``source``, ``metadata`` a mapping, tags a
  list of strings (duplicates are kept once, as the schema wants), text that
  UTF-8 can encode (a lone surrogate cannot be written to a task notebook);
- ``metadata.nbpipe`` a mapping, ``metadata.kernelspec`` a mapping with a name.

What is cheap to mend is mended in nbpipe's private copy: a notebook without a
kernelspec runs with ``python3`` (a v3 notebook, once nbformat has upgraded it,
has none); missing ``outputs``, ``execution_count``, ``metadata`` and cell
ids are filled in. nbpipe's own cells in a merged notebook fed back to it (the
error banner and its anchors, the injected-parameters cell) are dropped, so
the merged notebook runs like its source.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import nbformat

from .errors import NotebookError

__all__ = ["ERROR_TAG", "INJECTED_TAG", "regular"]

#: nbpipe's error banner and the anchors it links to (merge.py writes them)
ERROR_TAG = "nbpipe-error"
#: papermill's name for the cell of injected parameters; nbpipe's also carries metadata.nbpipe
INJECTED_TAG = "injected-parameters"
CELL_TYPES = ("code", "markdown", "raw")
PYTHON3 = {"name": "python3", "display_name": "Python 3", "language": "python"}
_CELL_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}\Z")


def regular(nb: Any) -> Any:
    """Check ``nb`` (nbpipe's private copy) and make it regular, in place; return it.

    Raises :class:`NotebookError` naming the cell or the metadata key and the fix.
    """
    _check_metadata(nb.get("metadata"))
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise NotebookError("the notebook has no list of cells; is it a notebook?")
    for index, cell in enumerate(cells):
        _check_cell(index, cell)
    nb.cells = [c for c in cells if not _nbpipe_own(c)]
    _ensure_cell_ids(nb)
    _check_encodable(nb)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        where = "/".join(map(str, getattr(exc, "absolute_path", ()))) or "the notebook"
        message = getattr(exc, "message", str(exc)).splitlines()[0][:200]
        raise NotebookError(f"not a valid notebook at {where}: {message}") from None
    return nb


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, Mapping):
        raise NotebookError("the notebook's metadata is not a mapping")
    options = metadata.get("nbpipe")
    if options is not None and not isinstance(options, Mapping):
        raise NotebookError(f"metadata.nbpipe must be a mapping such as {{\"retries\": 2}}, got "
                            f"{options!r:.60}; fix it in the notebook's metadata")
    spec = metadata.get("kernelspec")
    if spec is None:
        # A notebook without a kernelspec (hand-written, or nbformat 3) is a Python notebook.
        metadata["kernelspec"] = dict(PYTHON3)
        info = metadata.get("language_info")
        if not (isinstance(info, Mapping) and isinstance(info.get("name"), str)):
            metadata["language_info"] = {"name": "python"}
    elif not (isinstance(spec, Mapping) and isinstance(spec.get("name"), str) and spec["name"]):
        raise NotebookError(f"metadata.kernelspec must name a kernel, such as {json.dumps(PYTHON3)}, "
                            f"got {spec!r:.60}; fix it in the notebook's metadata")
    else:
        spec.setdefault("display_name", spec["name"])
        info = metadata.get("language_info")
        if not isinstance(spec.get("language"), str) and not (
                isinstance(info, Mapping) and isinstance(info.get("name"), str)):
            if not spec["name"].startswith("python"):
                raise NotebookError(f"metadata.kernelspec names kernel {spec['name']!r:.40} but no "
                                    "language: add its metadata.kernelspec.language")
            spec["language"] = "python"


def _check_cell(index: int, cell: Any) -> None:
    if not isinstance(cell, Mapping):
        raise NotebookError(f"cell {index} is not a mapping but {cell!r:.40}")
    cid = cell.get("id")

    def fail(problem: str) -> NotebookError:
        return NotebookError(f"cell {index}{f' (id {cid})' if cid else ''}: {problem}")

    if cell.get("cell_type") not in CELL_TYPES:
        raise fail(f"unknown cell_type {cell.get('cell_type')!r:.40}: a cell is code, markdown or raw")
    source = cell.get("source")
    if isinstance(source, list) and all(isinstance(s, str) for s in source):
        cell["source"] = source = "".join(source)
    if not isinstance(source, str):
        raise fail(f"its source must be text, got {source!r:.40}; give the cell a \"source\"")
    metadata = cell.setdefault("metadata", nbformat.NotebookNode())
    if not isinstance(metadata, Mapping):
        raise fail(f"its metadata must be a mapping, got {metadata!r:.40}")
    tags = metadata.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise fail(f"metadata.tags must be a list of strings such as [\"app:load\"], got {tags!r:.60}")
    bad = next((t for t in tags if not t or "," in t), None)
    if bad is not None:
        raise fail(f"tag {bad!r:.60}: a tag is not empty and holds no comma; write one tag per entry")
    if "tags" in metadata:
        metadata["tags"] = list(dict.fromkeys(tags))  # the schema wants each tag once
    if cell["cell_type"] == "code":
        cell.setdefault("outputs", [])
        cell.setdefault("execution_count", None)


def _nbpipe_own(cell: Any) -> bool:
    """nbpipe's error banner and anchors, and the injected-parameters cell it wrote."""
    tags = cell.metadata.get("tags", [])
    return ERROR_TAG in tags or (INJECTED_TAG in tags and "nbpipe" in cell.metadata)


def _ensure_cell_ids(nb: Any) -> None:
    """Give every cell a unique, valid id (nbformat 4.5); older notebooks have none."""
    seen: set[str] = set()
    for cell in nb.cells:
        cid = cell.get("id")
        if not isinstance(cid, str) or not _CELL_ID.match(cid) or cid in seen:
            cell["id"] = nbformat.v4.new_code_cell().id
        seen.add(cell["id"])
    nb.nbformat, nb.nbformat_minor = 4, max(_minor(nb.get("nbformat_minor")), 5)


def _minor(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 5


def _check_encodable(nb: Any) -> None:
    """Task and merged notebooks are written as UTF-8: a lone surrogate cannot be."""
    try:
        json.dumps(nb, ensure_ascii=False).encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    for index, cell in enumerate(nb.cells):
        try:
            json.dumps(cell, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start:exc.end]
            raise NotebookError(f"cell {index} (id {cell.id}): its text holds {bad!r}, a lone "
                                "surrogate that UTF-8 cannot encode; remove it") from None
    raise NotebookError("the notebook's metadata holds a lone surrogate that UTF-8 cannot "
                        "encode; remove it")
