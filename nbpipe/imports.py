"""What a notebook's imports bring in, found without running the notebook's code.

:func:`notebook_context` turns what every cell imports and assigns into the
:class:`~nbpipe.names.Context` each cell is then analysed in: which names are
modules, what ``np`` stands for, which names hold a ``defaultdict``, and the
names each ``from M import *`` defines. ``M``'s public names come from its
source when the notebook writes it (``%%writefile M.py``) or it sits beside the
notebook (parsed, never run), else from importing it when it is installed
(guarded: a module that fails to import defines nothing we can see).
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from . import syntax
from .names import CellNames, Context, analyse_cell

__all__ = ["is_module", "module_files", "normalise_path", "notebook_context", "public_names"]


def notebook_context(cells: Iterable[CellNames], root: Path | None,
                     written: Mapping[str, str]) -> Context:
    """The context for analysing each cell, from a first analysis of every cell.

    ``root`` is the notebook's directory; ``written`` maps each file a cell
    writes (``%%writefile``) to its text.
    """
    cells = list(cells)
    imports: dict[str, str] = {}
    modules: set[str] = set()
    for names in cells:
        for local, target in names.imports:
            imports.setdefault(local, target)
        modules |= names.modules
    modules |= {local for local, target in imports.items()
                if local not in modules and is_module(target, root, written)}
    stars = {m: public_names(m, root, written) for names in cells for m in names.star_imports}
    return Context(
        imports=tuple(sorted(imports.items())),
        modules=frozenset(modules),
        defaultdicts=frozenset().union(*(n.defaultdicts for n in cells)),
        star_names=tuple(sorted((m, n) for m, n in stars.items() if n is not None)),
    )


def module_files(module: str) -> tuple[str, str]:
    """The files that may hold ``module`` beside the notebook: ``a/b.py``, ``a/b/__init__.py``."""
    path = module.replace(".", "/")
    return f"{path}.py", f"{path}/__init__.py"


def is_module(target: str, root: Path | None, written: Mapping[str, str]) -> bool:
    """Whether ``from P import Q`` binds a module (``target`` is ``P.Q``), without importing it."""
    if target.startswith("."):
        return False
    if any(f in written or (root and (root / f).is_file()) for f in module_files(target)):
        return True
    if target in sys.modules:
        return isinstance(sys.modules[target], ModuleType)
    top, *rest = target.split(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name is found, not imported
    except (ImportError, ValueError):
        return False
    paths = spec.submodule_search_locations if spec else None
    for part in rest:
        found = importlib.machinery.PathFinder.find_spec(part, list(paths)) if paths else None
        if found is None:
            return False
        paths = found.submodule_search_locations
    return spec is not None


def public_names(module: str, root: Path | None, written: Mapping[str, str]) -> frozenset[str] | None:
    """The names ``from module import *`` defines, or None when they cannot be known."""
    for candidate in module_files(module):
        if candidate in written:
            return _names_in_source(written[candidate])
        if root is not None and (root / candidate).is_file():
            return _names_in_source((root / candidate).read_text(encoding="utf-8", errors="replace"))
    if module.startswith(".") or (root is not None and (root / module.partition(".")[0]).exists()):
        return None  # a local package we could not read: never import the user's code
    return _installed_public_names(module)


def _names_in_source(source: str) -> frozenset[str]:
    with syntax.deep_trees():
        try:
            tree = ast.parse(source)
        except syntax.UNPARSABLE:
            return frozenset()  # importing it fails when the notebook runs: nothing flows
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                      for t in node.targets)):
                names = _literal(node.value)
                if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
                    return frozenset(names)
                break  # not a literal list of names: the module's public names instead
    return frozenset(n for n in analyse_cell(source).defines if not n.startswith("_"))


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None


@lru_cache(maxsize=256)
def _installed_public_names(module: str) -> frozenset[str] | None:
    try:
        if importlib.util.find_spec(module) is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = importlib.import_module(module)
    except Exception:  # any import failure: the names stay unknown, and check says so
        return None
    names = getattr(loaded, "__all__", None)
    if names is None:
        names = [n for n in vars(loaded) if not n.startswith("_")]
    return frozenset(str(n) for n in names)


def normalise_path(path: str) -> str:
    """``./pkg/../mod.py`` -> ``mod.py``: how written files and imports are compared."""
    return os.path.normpath(path).replace(os.sep, "/")
