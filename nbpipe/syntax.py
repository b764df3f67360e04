"""Facts a cell's syntax tree shows without analysis: its imports, the names it
binds to ``defaultdict(...)``, and the files its ``%%writefile`` magics write.

Shared by :mod:`nbpipe.names` (what a cell reads and defines) and
:mod:`nbpipe.imports` (the notebook's context).
"""

from __future__ import annotations

import ast
import shlex
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["deep_trees", "defaultdicts", "executed", "expand_pylab", "from_module", "imported_modules",
           "imports", "is_get_ipython", "loaded_modules", "star_imports", "targets", "written_files"]

#: What ``ast.parse`` raises for a source it cannot read: bad syntax, a null byte,
#: nesting the parser gives up on (200 brackets raise MemoryError in CPython 3.11),
#: text that is not valid Unicode.
UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError, UnicodeError)

#: Python compiles an expression nested a few thousand levels deep (a 330-term sum
#: is 330 deep), and ``ast.unparse`` and the analysis walk it with a few frames a
#: level: past the default limit of 1000 frames. With this limit the analysis goes
#: deeper than CPython's compiler does at its default limit.
DEEP_RECURSION = 30_000

#: Cell magics that write their body to the file their line names.
_FILE_MAGICS = {"writefile", "file"}


def executed(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk``, leaving out the bodies of functions and lambdas (they run when called)."""
    todo = deque([node])
    while todo:
        node = todo.popleft()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            todo += [*node.decorator_list, *node.args.defaults, *filter(None, node.args.kw_defaults)]
        elif not isinstance(node, ast.Lambda):
            todo += ast.iter_child_nodes(node)


@contextmanager
def deep_trees() -> Iterator[None]:
    """Raise the recursion limit for analysing a cell, as deep as Python compiles."""
    old = sys.getrecursionlimit()
    if old >= DEEP_RECURSION:
        yield
        return
    sys.setrecursionlimit(DEEP_RECURSION)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def is_get_ipython(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "get_ipython"
    )


#: What ``%pylab`` binds in the namespace, as IPython's ``import_pylab`` binds it.
_PYLAB = """\
import numpy
import matplotlib
from matplotlib import pylab, mlab, pyplot
import numpy as np
import matplotlib.pyplot as plt
from IPython.display import display
from IPython.core.pylabtools import figsize, getfigs
"""
#: ... and without ``--no-import-all``.
_PYLAB_ALL = "from pylab import *\nfrom numpy import *\n"


def expand_pylab(tree: ast.Module) -> ast.Module:
    """``tree`` with each top-level ``%pylab`` replaced by the imports it does."""
    body: list[ast.stmt] = []
    for stmt in tree.body:
        line = _pylab_line(stmt)
        if line is None:
            body.append(stmt)
            continue
        source = _PYLAB + ("" if "--no-import-all" in line.split() else _PYLAB_ALL)
        body += ast.parse(source).body
    return ast.Module(body=body, type_ignores=tree.type_ignores) if len(body) != len(tree.body) else tree


def _pylab_line(stmt: ast.stmt) -> str | None:
    """The argument line of ``get_ipython().run_line_magic('pylab', line)``."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return None
    call = stmt.value
    args = [a.value for a in call.args if isinstance(a, ast.Constant)]
    if (isinstance(call.func, ast.Attribute) and call.func.attr == "run_line_magic"
            and is_get_ipython(call.func.value) and len(args) == 2 and args[0] == "pylab"):
        return str(args[1])
    return None


def imports(tree: ast.Module) -> tuple[tuple[tuple[str, str], ...], frozenset[str]]:
    """Every name the cell's imports bind, with its target; and those that are modules."""
    bound: list[tuple[str, str]] = []
    modules: set[str] = set()
    for node in executed(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.partition(".")[0]
                bound.append((local, alias.name if alias.asname else local))
                modules.add(local)
        elif isinstance(node, ast.ImportFrom):
            bound += [(a.asname or a.name, f"{from_module(node)}.{a.name}")
                      for a in node.names if a.name != "*"]
    return tuple(bound), frozenset(modules)


def from_module(node: ast.ImportFrom) -> str:
    return "." * (node.level or 0) + (node.module or "")


def imported_modules(tree: ast.Module) -> tuple[str, ...]:
    """Modules an import may load: ``import a.b`` -> a.b; ``from a import b`` -> a, a.b."""
    out: list[str] = []
    for node in executed(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
    return tuple(dict.fromkeys(out))


def loaded_modules(tree: ast.Module) -> tuple[str, ...]:
    """Modules ``tree`` may load anywhere (function bodies too): its imports, and the literal
    names given to ``importlib.import_module``, ``__import__`` and ``%load_ext``."""
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out += [node.module, *(f"{node.module}.{a.name}" for a in node.names if a.name != "*")]
        elif isinstance(node, ast.Call):
            out += _loaded_by_call(node)
    return tuple(dict.fromkeys(out))


def _loaded_by_call(call: ast.Call) -> list[str]:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    texts = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in call.args]
    if name in ("import_module", "__import__") and texts and texts[0]:
        return [texts[0]]
    if (name == "run_line_magic" and isinstance(func, ast.Attribute) and is_get_ipython(func.value)
            and len(texts) == 2 and texts[0] == "load_ext" and texts[1]):
        return texts[1].split()
    return []


def star_imports(tree: ast.Module) -> tuple[str, ...]:
    return tuple(from_module(n) for n in executed(tree)
                 if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names))


def defaultdicts(tree: ast.Module) -> frozenset[str]:
    """Names assigned ``defaultdict(...)`` (or ``collections.defaultdict(...)``)."""
    out: set[str] = set()
    for node in executed(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            func = node.value.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "defaultdict":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return frozenset(out)


def written_files(tree: ast.Module) -> tuple[str, ...]:
    """Files that ``%%writefile F`` / ``%%file F`` (``-a`` too) write."""
    out: list[str] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and is_get_ipython(node.func.value) and node.func.attr == "run_cell_magic"
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in _FILE_MAGICS and isinstance(node.args[1], ast.Constant)):
            continue
        try:
            words = [w for w in shlex.split(str(node.args[1].value)) if not w.startswith("-")]
        except ValueError:
            continue
        if words and not any(c in words[0] for c in "{}$"):
            out.append(words[0])
    return tuple(out)


def targets(stmt: ast.stmt) -> list[ast.expr]:
    """What a statement assigns to, augments or deletes (``a``, ``a.b``, ``a[i]``)."""
    if isinstance(stmt, ast.Assign):
        return list(stmt.targets)
    if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        return [stmt.target]
    if isinstance(stmt, ast.Delete):
        return list(stmt.targets)
    return []
