"""The realistic notebook corpus (``tests/corpus/``) and the ways the suite tags it.

Each corpus notebook is stored without outputs and carries its hand tags, the
split a scientist would choose. :func:`retag` derives the other two modes
from it: ``untagged`` strips every tag (one app ``main``), ``cells`` makes
every code cell its own app (:func:`tag_every_cell`). :func:`place` writes a
notebook into a fresh directory beside the data files the corpus reads.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import nbformat

TESTS = Path(__file__).resolve().parent
CORPUS = TESTS / "corpus"
#: Data files the corpus reads that live elsewhere in the repository, copied into data/.
SHARED_DATA = [TESTS.parent / "example_notebooks" / "data" / "uproot-Zmumu.root"]

#: How a notebook is tagged before nbpipe runs it.
MODES = ("untagged", "cells", "hand")


def corpus_names() -> list[str]:
    return sorted(p.stem for p in CORPUS.glob("*.ipynb"))


def read(name: str) -> Any:
    return nbformat.read(CORPUS / f"{name}.ipynb", as_version=4)


def strip_tags(nb: Any) -> Any:
    """A copy of ``nb`` with no cell tags: nbpipe runs it as one app."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.metadata.pop("tags", None)
    return nb


def tag_every_cell(nb: Any) -> Any:
    """A copy of ``nb`` whose code cells are each their own app, ``app:c<N>``.

    N counts code cells from 0. Every other tag is dropped, so ``skip`` cells
    run and ``setup`` cells become apps like the rest.
    """
    nb = strip_tags(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    for n, cell in enumerate(code_cells):
        cell.metadata["tags"] = [f"app:c{n}"]
    return nb


def retag(nb: Any, mode: str) -> Any:
    """``nb`` tagged as ``mode`` says (one of :data:`MODES`)."""
    if mode == "untagged":
        return strip_tags(nb)
    if mode == "cells":
        return tag_every_cell(nb)
    if mode == "hand":
        return copy.deepcopy(nb)
    raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")


def place(nb: Any, directory: Path, name: str) -> Path:
    """Write ``nb`` as ``directory/name.ipynb`` beside a ``data/`` folder; return its path."""
    data = directory / "data"
    shutil.copytree(CORPUS / "data", data)
    for path in SHARED_DATA:
        shutil.copy(path, data / path.name)
    path = directory / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path
