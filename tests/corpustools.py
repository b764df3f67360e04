"""The realistic notebook corpus (``tests/corpus/``) and the ways the suite tags it.

Each corpus notebook is stored without outputs and carries its hand tags, the
split a scientist would choose (mode ``hand``). :func:`retag` derives the
notebook each other mode runs, and :func:`split_of` the ``split`` nbpipe is
asked for: ``untagged`` strips every tag (one app ``main``); ``cells`` is
nbpipe's own ``--split cells`` on the notebook as stored, so the split must
drop its app tags (``app:``, Kale's ``block:``/``prev:``) and keep its
``setup``, ``skip`` and parameters cells, Kale's aliases too; ``auto`` is
``--split auto`` on the stripped notebook, the case it is made for, so the
split alone decides which cells are ``setup`` and which run together.
:func:`place` writes a notebook into a fresh directory beside the data files
the corpus reads.
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
MODES = ("untagged", "cells", "hand", "auto")
#: The ``split`` nbpipe runs each mode with (None: the notebook's tags).
SPLITS = {"cells": "cells", "auto": "auto"}


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


def retag(nb: Any, mode: str) -> Any:
    """``nb`` tagged as ``mode`` says (one of :data:`MODES`)."""
    if mode in ("untagged", "auto"):
        return strip_tags(nb)
    if mode in ("cells", "hand"):
        return copy.deepcopy(nb)
    raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")


def split_of(mode: str) -> str | None:
    """The ``split`` argument of :func:`nbpipe.execute` for ``mode``."""
    return SPLITS.get(mode)


def place(nb: Any, directory: Path, name: str) -> Path:
    """Write ``nb`` as ``directory/name.ipynb`` beside a ``data/`` folder; return its path."""
    data = directory / "data"
    shutil.copytree(CORPUS / "data", data)
    for path in SHARED_DATA:
        shutil.copy(path, data / path.name)
    path = directory / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path
