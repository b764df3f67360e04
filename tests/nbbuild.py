"""Small helpers for the parse/graph/CLI/failure/API suites.

Notebooks are built in memory with ``nbformat.v4``; :func:`nbpipe_cli` runs the
real command line in a subprocess. (The fidelity suite has its own helpers in
``conftest.py``; these stay independent of them.)
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def code(source: str, *tags: str) -> Any:
    """A code cell carrying ``tags`` (none: an untagged cell)."""
    cell = v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def md(source: str, *tags: str) -> Any:
    cell = v4.new_markdown_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(*cells: Any, nbpipe: dict[str, Any] | None = None) -> Any:
    """A valid nbformat 4.5 notebook for the ``python3`` kernel."""
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    if nbpipe is not None:
        nb.metadata["nbpipe"] = nbpipe
    nb.cells = [copy.deepcopy(c) for c in cells]
    nbformat.validate(nb)
    return nb


def write(path: Path, *cells: Any, nbpipe: dict[str, Any] | None = None) -> Path:
    """Write a notebook of ``cells`` to ``path`` and return the path."""
    nbformat.write(notebook(*cells, nbpipe=nbpipe), path)
    return path


def read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)


def by_id(nb: Any, cell_id: str) -> Any:
    found = [c for c in nb.cells if c.get("id") == cell_id]
    assert len(found) == 1, f"{len(found)} cells with id {cell_id!r}"
    return found[0]


def text_of(cell: Any) -> str:
    """Everything a cell shows: streams, text/plain results and error values."""
    parts = []
    for o in cell.get("outputs", []):
        if o["output_type"] == "stream":
            parts.append("".join(o["text"]) if isinstance(o["text"], list) else o["text"])
        elif o["output_type"] in ("execute_result", "display_data"):
            value = o.get("data", {}).get("text/plain", "")
            parts.append("".join(value) if isinstance(value, list) else value)
        elif o["output_type"] == "error":
            parts.append(f"{o['ename']}: {o['evalue']}")
    return "".join(parts)


def nbpipe_cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nbpipe ARGS`` in ``cwd``; return the finished process."""
    return subprocess.run([sys.executable, "-m", "nbpipe", *map(str, args)], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
