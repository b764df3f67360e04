"""What a code cell's source shows, read with ``ast`` and nothing run: the facts
:mod:`nbpipe.split` groups cells by.

- :func:`only_definitions`: imports, ``def``, ``class`` and session magics
  (:data:`SETUP_MAGICS`) only: a candidate for ``setup``; :func:`late_reads`,
  the globals its functions read once called; :func:`stateful_definitions`,
  classes and functions that keep state their calls change.
- :func:`unshippable`: names bound to a value that cannot ship (a generator,
  an open file, a lock, ...), as the defining expression shows.
- :func:`file_uses` / :func:`file_order`: the files a cell's calls read and
  write (string-literal paths), and the order serial execution gives them.
- :func:`light`: whether a cell is cheap enough to join a neighbour's app;
  :func:`app_name`: the name an app gets from its first working cell.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

from . import syntax
from .names import analyse_cell, transformed_source
from .parse import APP_NAME, RESERVED_NAMES

__all__ = ["LAZY_CALLS", "LIGHT_SECONDS", "LIGHT_STATEMENTS", "SETUP_MAGICS", "UNSHIPPABLE_CALLS", "app_name", "cell_digest",
           "file_order", "file_uses", "functions", "generator_functions", "late_reads", "light",
           "only_definitions", "stateful_definitions", "unshippable"]

#: A cell measured to take less than this joins its neighbour's app.
LIGHT_SECONDS = 0.25
#: A cell never measured counts as light up to this many statements.
LIGHT_STATEMENTS = 10
#: Line magics that only configure the session: a cell of imports that runs them can still be setup.
SETUP_MAGICS = frozenset({"matplotlib", "config", "load_ext", "autoreload", "aimport"})
#: Calls whose result cannot ship (module, function); a generator expression cannot either.
UNSHIPPABLE_CALLS = frozenset({
    ("", "open"), ("io", "open"), ("threading", "Lock"), ("threading", "RLock"), ("threading", "Thread"),
    ("threading", "Condition"), ("threading", "Semaphore"), ("threading", "Event"),
    ("socket", "socket"), ("sqlite3", "connect"), ("multiprocessing", "Pool"),
    ("csv", "reader"), ("csv", "writer"), ("csv", "DictReader"), ("csv", "DictWriter"),
})
#: Calls whose result stays lazy over its arguments (so cannot ship when one of them cannot);
#: every ``itertools.`` function too.
LAZY_CALLS = frozenset({("", "enumerate"), ("", "zip"), ("", "map"), ("", "filter"), ("", "iter"), ("", "reversed")})




def cell_digest(source: str) -> str:
    """The key under which a cell's measured duration is kept (its source, stripped)."""
    return hashlib.sha256(source.strip().encode()).hexdigest()[:32]


def late_reads(source: str) -> frozenset[str]:
    """The globals the functions and classes a cell defines read when they are called
    (a setup cell's function finds in its app only what setup cells define)."""
    return frozenset().union(*(reads for _, reads in analyse_cell(source).callables))


def only_definitions(source: str) -> bool:
    tree = _tree(source)
    if tree is None or not tree.body:
        return False
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)
    for stmt in tree.body:
        docstring = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        if not (isinstance(stmt, allowed) or docstring or _setup_magic(stmt)):
            return False
    return True


def _setup_magic(stmt: ast.stmt) -> bool:
    """Whether ``stmt`` is a line magic of :data:`SETUP_MAGICS` (as IPython transforms it:
    ``get_ipython().run_line_magic('matplotlib', 'inline')``)."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and stmt.value.args):
        return False
    func, name = stmt.value.func, stmt.value.args[0]
    return isinstance(func, ast.Attribute) and func.attr == "run_line_magic" \
        and isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name) \
        and func.value.func.id == "get_ipython" and isinstance(name, ast.Constant) and name.value in SETUP_MAGICS


def file_order(sources: Mapping[int, str]) -> list[tuple[int, int, str]]:
    """(earlier cell, later cell, path) for two cells using a file either of them writes
    (:func:`file_uses`): serial execution orders them, so must the apps (``after:``)."""
    uses: dict[str, list[tuple[int, bool]]] = {}
    for index in sorted(sources):
        reads, writes = file_uses(sources[index])
        for path in sorted(reads | writes):
            uses.setdefault(path, []).append((index, path in writes))
    out = []
    for path, cells in uses.items():
        for n, (j, j_writes) in enumerate(cells):
            out += [(i, j, path) for i, i_writes in cells[:n] if i_writes or j_writes]
    return out


@lru_cache(maxsize=4096)
def _tree(source: str) -> ast.Module | None:
    """The cell's tree after IPython's transforms, parsed once per source (never changed by
    a caller), or None when it does not parse."""
    try:
        return ast.parse(transformed_source(source))
    except syntax.UNPARSABLE:
        return None


def functions(sources: Iterable[str]) -> frozenset[str]:
    """The names of the functions the notebook's cells define."""
    out: set[str] = set()
    for source in sources:
        tree = _tree(source)
        if tree is not None:
            out |= {s.name for s in ast.walk(tree) if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return frozenset(out)


def generator_functions(sources: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for source in sources:
        tree = _tree(source)
        for stmt in ast.walk(tree) if tree is not None else ():
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(stmt)):
                out.add(stmt.name)
    return frozenset(out)


_HEAVY = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def light(source: str, durations: Mapping[str, float], functions: frozenset[str]) -> bool:
    """Whether a cell is cheap enough to join a neighbour's app (see the module's docstring)."""
    measured = durations.get(cell_digest(source))
    if measured is not None and measured >= LIGHT_SECONDS:
        return False  # measured light, it is judged by its look: the next run keeps its apps, and their cache
    tree = _tree(source)
    if tree is None or len(tree.body) > LIGHT_STATEMENTS:
        return False
    for node in ast.walk(tree):
        if isinstance(node, _HEAVY):
            return False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            return False
    return True


def unshippable(source: str, generators: frozenset[str], known: Mapping[str, str]) -> dict[str, str]:
    """Names a cell binds to a value that cannot ship, with what the value is (``known``: such
    names of the cells above)."""
    tree = _tree(source)
    out: dict[str, str] = {}
    for stmt in tree.body if tree is not None else ():
        if not isinstance(stmt, (ast.Assign, ast.AnnAssign)) or stmt.value is None:
            continue
        what = _unshippable_value(stmt.value, generators, {**known, **out})
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if what:
            out.update({t.id: what for t in targets if isinstance(t, ast.Name)})
    return out | stateful_definitions(source)


def stateful_definitions(source: str) -> dict[str, str]:
    """The classes and functions a cell defines that keep state their calls change: a
    class whose methods change its own attributes (``Particle.count += 1``,
    ``cls.seen.append(x)``, ``type(self).n = 0``), a function with a mutable default
    (``memo={}``) or one that changes its own attributes (``f.calls += 1``). Every app
    has its own copy, so what one app's calls count, another's do not see."""
    tree = _tree(source)
    out: dict[str, str] = {}
    for stmt in tree.body if tree is not None else ():
        if isinstance(stmt, ast.ClassDef) and _changes_itself(stmt, {stmt.name, "cls"}):
            out[stmt.name] = "a class whose methods change its own attributes"
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(isinstance(d, _MUTABLE) for d in stmt.args.defaults + stmt.args.kw_defaults):
                out[stmt.name] = "a function that keeps state in a mutable default"
            elif _changes_itself(stmt, {stmt.name}):
                out[stmt.name] = "a function that changes its own attributes"
    return out


_MUTABLE = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp, ast.Call)


def _changes_itself(definition: ast.stmt, selves: set[str]) -> bool:
    """Whether a class's (or function's) body changes an attribute of ``selves``."""
    for node in ast.walk(definition):
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            targets = [node.func.value]  # Particle.seen.append(...): a method of an attribute
        else:
            continue
        if any(_of_class(t, selves) for t in targets):
            return True
    return False


def _of_class(node: ast.expr, selves: set[str]) -> bool:
    """Whether ``node`` is an attribute (or item of one) of the class itself: ``C.x``,
    ``cls.x[0]``, ``type(self).x``, ``self.__class__.x``."""
    if not isinstance(node, (ast.Attribute, ast.Subscript)):
        return False
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute) and node.attr == "__class__":
            return True
        node = node.value
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "type"
    return isinstance(node, ast.Name) and node.id in selves


def _unshippable_value(value: ast.expr, generators: frozenset[str], known: Mapping[str, str]) -> str | None:
    if isinstance(value, ast.GeneratorExp):
        return "a generator"
    if isinstance(value, ast.Name):
        return known.get(value.id)
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    if isinstance(func, ast.Name):
        if func.id in generators:
            return f"a generator ({func.id}() yields)"
        called = ("", func.id)
    elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        called = (func.value.id, func.attr)
    else:
        return None
    if called in UNSHIPPABLE_CALLS:
        return f"{'.'.join(filter(None, called))}(...)"
    if called in LAZY_CALLS or called[0] == "itertools":
        for arg in (*value.args, *(k.value for k in value.keywords)):
            inner = _unshippable_value(arg, generators, known)
            if inner:
                return f"{'.'.join(filter(None, called))}(...) over {inner}"
    return None


#: A string that names a file: a relative or absolute path with an extension, or with a folder.
_PATH = re.compile(r"^[\w.~/-]*(?:\.[A-Za-z0-9]{1,6}|/[\w.-]+)$")
#: Calls that write the file they are given (``df.to_csv(p)``, ``np.save(p, a)``, ``Path(p).write_text(s)``).
_WRITES = re.compile(r"^(?:to_\w+|save\w*|savefig|dump|write\w*|mkdir|touch|copy\w*|move|rename|unlink|remove)$")


@lru_cache(maxsize=4096)
def file_uses(source: str) -> tuple[frozenset[str], frozenset[str]]:
    """The file paths a cell's calls are given as string literals: (read, written)."""
    tree = _tree(source)
    reads: set[str] = set()
    writes: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if not isinstance(node, ast.Call):
            continue
        paths = {a.value for a in [*node.args, *(k.value for k in node.keywords)]
                 if isinstance(a, ast.Constant) and isinstance(a.value, str) and _PATH.match(a.value)}
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Attribute) and _WRITES.match(called) and isinstance(func.value, ast.Call):
            inner = func.value  # Path('out.txt').write_text(...)
            writes |= {a.value for a in inner.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                       and _PATH.match(a.value)}
        if called == "open":
            mode = node.args[1] if len(node.args) > 1 else \
                next((k.value for k in node.keywords if k.arg == "mode"), None)
            writing = isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+")
            (writes if writing else reads).update(paths)
        else:
            (writes if _WRITES.match(called) else reads).update(paths)
    return frozenset(reads), frozenset(writes)


def app_name(first: int, sources: Mapping[int, str], numbers: Mapping[int, int], taken: set[str]) -> str:
    """A name cell ``first`` assigns, else ``cellN``; never twice. A name computed
    (``pi = estimate(n)``) is preferred to a constant (``n = 10``)."""
    tree = _tree(sources[first])
    assigned: list[tuple[bool, str]] = []
    for stmt in tree.body if tree is not None else ():
        targets = stmt.targets if isinstance(stmt, ast.Assign) else \
            [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
        constant = isinstance(getattr(stmt, "value", None), (ast.Constant, ast.UnaryOp))
        assigned += [(constant, n.id) for t in targets for n in ast.walk(t)
                     if isinstance(n, ast.Name) and not n.id.startswith("_")]
    name = min(assigned, key=lambda a: a[0])[1] if assigned else f"cell{numbers[first]}"
    if name in RESERVED_NAMES or name in taken or not APP_NAME.match(name):
        name = f"{name}-{numbers[first]}" if APP_NAME.match(name) and name not in RESERVED_NAMES \
            else f"cell{numbers[first]}"
    taken.add(name)
    return name
