"""Interpreter state carried between apps, as serial execution carries it.

Two kinds of state live outside the variables an app ships:

* **Settings** that a statement changes in the process: matplotlib's style and
  rcParams, ``%config InlineBackend``, ``%load_ext``, ``sys.path``,
  ``os.environ``, the working directory, warning filters, pandas and numpy
  print options. Each app starts in a fresh process, so the compiler replays
  every such top-level statement of an earlier cell at the start of each later
  app (:func:`prelude_for`), in notebook order, in a private scope with the
  imports the statement needs (:func:`replay`).
* **The global random generators** (``random`` and ``numpy.random``). They are
  values: a cell that uses them reads and defines a pseudo-name
  (:data:`RANDOM_STATE`, :data:`NUMPY_RANDOM_STATE`; :func:`generator_names`)
  that ships like a variable, so the nearest-definer rule orders drawing apps
  as serial execution does and a seeded notebook draws the same numbers.

This module imports only the standard library (and :mod:`.syntax`, which does
too): it runs inside tasks.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import pickle
import re
import symtable
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from . import syntax

__all__ = ["NUMPY_RANDOM_STATE", "RANDOM_STATE", "Carried", "carried_reads", "carried_statements", "generator_file",
           "generator_names", "generator_state", "generator_uses", "is_generator", "prelude_for", "replay",
           "set_generator_state", "warnings_for"]

# ----------------------------------------------------------------- random generators

#: Pseudo-names of the global generators' states; not identifiers, so no user
#: name can collide with them, and readable where ``check`` shows them.
RANDOM_STATE = "<random state>"
NUMPY_RANDOM_STATE = "<numpy.random state>"
_FILES = {RANDOM_STATE: "random.state", NUMPY_RANDOM_STATE: "numpy.random.state"}

_RANDOM_API = frozenset({
    "betavariate", "binomialvariate", "choice", "choices", "expovariate", "gammavariate", "gauss",
    "getrandbits", "getstate", "lognormvariate", "normalvariate", "paretovariate", "randbytes",
    "randint", "random", "randrange", "sample", "seed", "setstate", "shuffle", "triangular",
    "uniform", "vonmisesvariate", "weibullvariate"})
#: What ``numpy.random`` offers that does not touch its global generator.
_NUMPY_OWN_GENERATORS = frozenset({
    "BitGenerator", "Generator", "MT19937", "PCG64", "PCG64DXSM", "Philox", "RandomState", "SFC64",
    "SeedSequence", "bit_generator", "default_rng", "mtrand", "test"})
#: ``numpy.random`` functions the ``random`` module lacks.
_NUMPY_ONLY_API = frozenset({
    "beta", "binomial", "chisquare", "dirichlet", "exponential", "gamma", "geometric", "get_state",
    "laplace", "logistic", "lognormal", "multinomial", "multivariate_normal", "normal", "permutation",
    "poisson", "rand", "randn", "random_integers", "random_sample", "ranf", "set_state",
    "standard_normal"})
#: Aliases a cell may use without importing them in that cell (the usual ones).
_USUAL_ALIASES = {"np": "numpy", "numpy": "numpy", "random": "random"}


def is_generator(name: str) -> bool:
    return name in _FILES


def generator_file(name: str) -> str:
    """The file stem a generator's state ships under (a user name has no dot)."""
    return _FILES[name]


def generator_names(node: ast.AST, cell: ast.AST | None = None) -> frozenset[str]:
    """The generator pseudo-names ``node`` uses (reads and, by drawing, defines).

    ``random.<fn>`` and ``np.random.<fn>`` (``numpy.random`` however the
    cell imports it, or a function imported from it by name) count;
    ``np.random.default_rng(...)``, ``RandomState(...)`` and ``random.Random()``
    make generators of their own and do not. ``cell`` is the whole cell, whose
    imports give the aliases.
    """
    return _generators_in(node, _generator_aliases(cell if cell is not None else node))


def _generator_aliases(cell: ast.AST) -> dict[str, str]:
    aliases = dict(_USUAL_ALIASES)
    for stmt in ast.walk(cell):
        for name, (qualified, _) in _imports(stmt).items():
            aliases[name] = qualified
    return aliases


def _generators_in(node: ast.AST, aliases: dict[str, str]) -> frozenset[str]:
    found: set[str] = set()
    for sub in ast.walk(node):
        # a generator's qualified name is random.<fn> or numpy.random.<fn>: at most three links
        qualified = _qualified(sub, aliases, 3) if isinstance(sub, (ast.Name, ast.Attribute)) else None
        if qualified:
            generator = _generator_of(qualified)
            if generator:
                found.add(generator)
    return frozenset(found)


def generator_uses(cell: ast.Module) -> tuple[frozenset[str], frozenset[str]]:
    """The generator pseudo-names a cell reads (before setting them) and defines.

    Every use reads and defines the state, except a top-level ``seed(...)`` or
    ``set_state(...)``, which only defines it: ``np.random.seed(0)`` does not
    wait for the draws above it.
    """
    aliases = _generator_aliases(cell)
    reads: set[str] = set()
    defines: set[str] = set()
    for stmt in cell.body:
        used = _generators_in(stmt, aliases)
        reads |= used - defines - _seeded(stmt, aliases)
        defines |= used
    return frozenset(reads), frozenset(defines)


def _seeded(stmt: ast.stmt, aliases: dict[str, str]) -> frozenset[str]:
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return frozenset()
    call = stmt.value
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name not in ("seed", "setstate", "set_state") or any(
            _generators_in(arg, aliases) for arg in [*call.args, *(k.value for k in call.keywords)]):
        return frozenset()
    return _generators_in(func, aliases)


def _generator_of(qualified: str) -> str | None:
    module, _, function = qualified.rpartition(".")
    if module == "numpy.random" and function not in _NUMPY_OWN_GENERATORS:
        return NUMPY_RANDOM_STATE
    if module == "random":
        # ``from numpy import random`` then ``random.randn()``: numpy's names only
        if function in _RANDOM_API:
            return RANDOM_STATE
        if function in _NUMPY_ONLY_API:
            return NUMPY_RANDOM_STATE
    return None


def generator_state(name: str) -> Any:
    """The current state of a global generator (None: numpy was never imported)."""
    if name == RANDOM_STATE:
        import random

        return random.getstate()
    numpy = sys.modules.get("numpy")
    return numpy.random.get_state() if numpy is not None else None


def set_generator_state(name: str, value: Any, item: int | None = None) -> None:
    """Give a global generator ``value``; in item ``item`` of a ``map:`` app, a
    state derived from it and the item, so items draw distinct, reproducible numbers."""
    if name == RANDOM_STATE:
        import random

        random.setstate(value)
        if item is not None:
            random.seed(_derived_seed(value, item))
        return
    import numpy

    numpy.random.set_state(value)
    if item is not None:
        numpy.random.seed(_derived_seed(value, item) % 2**32)


def _derived_seed(value: Any, item: int) -> int:
    digest = hashlib.sha256(pickle.dumps(value, protocol=4) + item.to_bytes(8, "little"))
    return int.from_bytes(digest.digest()[:8], "little")


# ----------------------------------------------------------------- settings

#: Calls whose effect is process state (qualified by the module they come from).
_CALLS = frozenset({
    "matplotlib.use", "matplotlib.rc", "matplotlib.rcdefaults", "matplotlib.rc_file",
    "matplotlib.style.use", "matplotlib.rcParams.update",
    "matplotlib.pyplot.style.use", "matplotlib.pyplot.rc", "matplotlib.pyplot.rcdefaults",
    "matplotlib.pyplot.rcParams.update", "matplotlib.pyplot.switch_backend",
    "seaborn.set", "seaborn.set_theme", "seaborn.set_style", "seaborn.set_context",
    "seaborn.set_palette", "seaborn.set_color_codes", "seaborn.reset_defaults", "seaborn.reset_orig",
    "sys.path.append", "sys.path.insert", "sys.path.extend",
    "os.chdir", "os.environ.update", "os.environ.setdefault", "os.environ.pop", "os.putenv",
    "os.unsetenv", "warnings.filterwarnings", "warnings.simplefilter", "warnings.resetwarnings",
    "pandas.set_option", "pandas.reset_option", "numpy.set_printoptions", "numpy.seterr",
    "sklearn.set_config", "logging.basicConfig", "logging.disable", "logging.captureWarnings",
})
#: Logger methods whose effect is process state, on ``logging.getLogger(…)``.
_LOGGER_CALLS = frozenset({"setLevel"})
#: Objects whose items or attributes, when assigned or deleted, are process state.
_TARGETS = ("matplotlib.rcParams", "matplotlib.pyplot.rcParams", "os.environ", "pandas.options")
#: Line magics whose effect is process state.
_MAGICS = frozenset({"matplotlib", "pylab", "config", "load_ext", "env", "set_env", "cd", "precision",
                     "autoreload"})


@dataclass(frozen=True)
class Carried:
    """A top-level statement that changes process state, and what replaying it needs."""

    cell: int
    app: str
    statement: str  # Python source (IPython syntax already transformed)
    imports: tuple[str, ...]  # import statements binding the module aliases it uses
    reads: frozenset[str]  # other names it reads (``size`` in ``rcParams[...] = size``)


def carried_statements(cells: tuple[tuple[int, str, str | None, str], ...]) -> tuple[Carried, ...]:
    """The state-changing statements of app cells, in notebook order.

    ``cells`` are ``(index, role, app, source)`` of every code cell. Imports
    anywhere above a statement (setup included) give the module aliases.
    """
    aliases: dict[str, tuple[str, str]] = {}  # name -> (qualified module path, import source)
    loggers: dict[str, ast.expr] = {}  # name -> the ``logging.getLogger(…)`` call it holds
    out = []
    for index, role, app, source in cells:
        tree = _parse(source)
        if tree is None:
            continue
        for stmt in tree.body:
            try:
                with syntax.deep_trees():
                    carried = _carried(index, role, app, stmt, aliases, loggers)
            except RecursionError:  # deeper than Python compiles: the cell fails as it runs
                continue
            if carried is not None:
                out.append(carried)
    return tuple(out)


def _carried(index: int, role: str, app: str | None, stmt: ast.stmt, aliases: dict[str, tuple[str, str]],
             loggers: dict[str, ast.expr]) -> Carried | None:
    aliases.update(_imports(stmt))
    _track_loggers(stmt, aliases, loggers)
    stmt = _with_logger_call(stmt, loggers)
    if role not in ("app", "metrics") or app is None or not _changes_state(stmt, aliases):
        return None
    used = _names(stmt) | _interpolated(stmt)
    imports = tuple(dict.fromkeys(aliases[n][1] for n in sorted(used) if n in aliases))
    reads = frozenset(n for n in used if n not in aliases and n != "get_ipython"
                      and not hasattr(builtins, n))
    return Carried(index, app, ast.unparse(stmt), imports, reads)


def _changes_state(stmt: ast.stmt, aliases: dict[str, tuple[str, str]]) -> bool:
    names = {name: qualified for name, (qualified, _) in aliases.items()}
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        magic = _line_magic(call)
        if magic is not None:
            name, line = magic
            return name in _MAGICS and (name not in ("env", "set_env") or "=" in line or " " in line.strip())
        return _qualified(call.func, names) in _CALLS or _is_logger_call(call, names)
    targets = syntax.targets(stmt)
    for target in targets:
        if isinstance(target, (ast.Subscript, ast.Attribute)):
            qualified = _qualified(target.value, names) or ""
            if any(qualified == t or qualified.startswith(t + ".") for t in _TARGETS):
                return True
    return False


def _track_loggers(stmt: ast.stmt, aliases: dict[str, tuple[str, str]], loggers: dict[str, ast.expr]) -> None:
    """Note ``log = logging.getLogger(…)``; forget a name assigned anything else."""
    if not isinstance(stmt, ast.Assign):
        return
    names = {name: qualified for name, (qualified, _) in aliases.items()}
    value = stmt.value
    is_logger = isinstance(value, ast.Call) and _qualified(value.func, names) == "logging.getLogger"
    for target in stmt.targets:
        if isinstance(target, ast.Name):
            if is_logger:
                loggers[target.id] = value
            else:
                loggers.pop(target.id, None)


def _with_logger_call(stmt: ast.stmt, loggers: dict[str, ast.expr]) -> ast.stmt:
    """``log.setLevel(…)`` as ``logging.getLogger('name').setLevel(…)``, for a
    ``log`` assigned a logger above: replayed, it finds the logger by its name."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr in _LOGGER_CALLS and isinstance(call.func.value, ast.Name)
            and call.func.value.id in loggers):
        return stmt
    func = ast.Attribute(value=loggers[call.func.value.id], attr=call.func.attr, ctx=ast.Load())
    return ast.Expr(value=ast.Call(func=func, args=call.args, keywords=call.keywords))


def _is_logger_call(call: ast.Call, aliases: dict[str, str]) -> bool:
    """``logging.getLogger('name').setLevel(…)``: a logger is found again by its name."""
    func = call.func
    return (isinstance(func, ast.Attribute) and func.attr in _LOGGER_CALLS
            and isinstance(func.value, ast.Call)
            and _qualified(func.value.func, aliases) == "logging.getLogger")


def _line_magic(call: ast.Call) -> tuple[str, str] | None:
    """``(name, line)`` of ``get_ipython().run_line_magic(name, line)``."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "run_line_magic"
            and isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "get_ipython"):
        return None
    args = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return (args[0], args[1]) if len(args) >= 2 else None


def _imports(stmt: ast.AST) -> dict[str, tuple[str, str]]:
    """Names an import statement binds -> (the module path they stand for, an
    import statement binding just that name)."""
    out = {}
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            bound = alias.asname or alias.name.partition(".")[0]
            qualified = alias.name if alias.asname else bound
            out[bound] = (qualified, ast.unparse(ast.Import(names=[alias])))
    elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
        for alias in stmt.names:
            if alias.name != "*":
                out[alias.asname or alias.name] = (f"{stmt.module}.{alias.name}",
                                                   ast.unparse(ast.ImportFrom(stmt.module, [alias], 0)))
    return out


def _qualified(node: ast.expr, aliases: dict[str, str], most: int | None = None) -> str | None:
    """``plt.style.use`` -> ``matplotlib.pyplot.style.use`` when ``plt`` is an import alias;
    None past ``most`` attributes (a walk over every link of a long chain is quadratic)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        if most is not None and len(parts) >= most:
            return None
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _interpolated(stmt: ast.stmt) -> set[str]:
    """Names a magic line expands (``%cd $folder``, ``%env X={x}``)."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return set()
    magic = _line_magic(stmt.value)
    if magic is None:
        return set()
    found = set(re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", magic[1]))
    for expr in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", magic[1]):
        try:
            found |= {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
        except syntax.UNPARSABLE:
            continue
    return found


def _names(stmt: ast.stmt) -> set[str]:
    """Global names a statement reads (comprehensions and lambdas included)."""
    try:
        table = symtable.symtable(ast.unparse(stmt), "<cell>", "exec")
    except SyntaxError:
        return set()
    found = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    todo = list(table.get_children())
    while todo:
        child = todo.pop()
        found |= {s.get_name() for s in child.get_symbols() if s.is_global() and s.is_referenced()}
        todo += child.get_children()
    return found


def _parse(source: str) -> ast.Module | None:
    """The cell as Python; IPython's transformer only for what plain Python
    cannot parse (magics, ``!`` lines: they never parse as Python)."""
    with syntax.deep_trees():
        try:
            return ast.parse(source)
        except syntax.UNPARSABLE:
            pass
        from IPython.core.inputtransformer2 import TransformerManager

        try:
            return ast.parse(str(TransformerManager().transform_cell(source)))
        except Exception:  # a syntax error, or a magic IPython refuses: the cell fails as it runs
            return None


# ----------------------------------------------------------------- the prelude


def _statements(pipeline: Any) -> tuple[Carried, ...]:
    cells = tuple((c.index, c.role, c.app, c.source) for c in pipeline.parsed.cells
                  if c.cell_type == "code")
    return _cached_statements(cells)


_cached_statements = lru_cache(maxsize=64)(carried_statements)


def _replayable(pipeline: Any) -> tuple[list[Carried], list[Carried]]:
    """Statements that can be replayed, and those that read a name an app defines."""
    everywhere = pipeline.setup_names | pipeline.parameter_names
    ok, left_out = [], []
    for carried in _statements(pipeline):
        (ok if carried.reads <= everywhere else left_out).append(carried)
    return ok, left_out


def prelude_for(pipeline: Any, app: str) -> str | None:
    """Source of the cell that replays, at the start of ``app``, the state that
    earlier cells' statements set; None when there is none.

    Earlier means above the app's first cell. A statement that reads a name an
    app defines is left out (:func:`warnings_for` says so).
    """
    statements = _carried_into(pipeline, app)
    if not statements:
        return None
    rows = "".join(f"    ({c.cell}, {c.app!r}, {c.imports!r}, {c.statement!r}),\n" for c in statements)
    return ("# interpreter state that earlier cells set, replayed as serial execution carries it\n"
            f"__import__('nbpipe.state').state.replay(globals(), [\n{rows}])")


def carried_reads(pipeline: Any, app: str) -> frozenset[str]:
    """The names read by the statements :func:`prelude_for` replays in ``app`` (parameters
    among them enter its cache key)."""
    return frozenset().union(*(c.reads for c in _carried_into(pipeline, app)))


def _carried_into(pipeline: Any, app: str) -> list[Carried]:
    first = pipeline.apps[app].spec.cells[0]
    return [c for c in _replayable(pipeline)[0] if c.cell < first]


def warnings_for(pipeline: Any) -> list[str]:
    """``check`` warnings: state-changing statements that are not replayed."""
    out = []
    for c in _replayable(pipeline)[1]:
        later = [a for a, node in pipeline.apps.items() if node.spec.cells[0] > c.cell]
        if not later:
            continue
        names = ", ".join(sorted(c.reads - pipeline.setup_names - pipeline.parameter_names))
        out.append(f"cell {c.cell} (app {c.app!r}): `{c.statement}` changes interpreter state but "
                   f"reads {names}, which an app defines, so later apps ({', '.join(later)}) do not "
                   f"replay it; move it into a setup cell, with {names}, or write the value in it")
    return out


def replay(namespace: dict[str, Any], statements: list[tuple[int, str, tuple[str, ...], str]]) -> None:
    """Run each carried statement, with its imports, in a private copy of ``namespace``.

    The app's own names are untouched (an import the replay needs binds
    nothing in the app). A statement that fails stops the app with a
    :class:`~nbpipe.errors.StateError` naming it: carrying on would run the app
    in a state serial execution never had.
    """
    from .errors import StateError

    scope = dict(namespace)
    for cell, app, imports, statement in statements:
        try:
            exec(compile("\n".join([*imports, statement]), f"<cell {cell}>", "exec"), scope)
        except Exception as exc:
            raise StateError(cell=cell, app=app, statement=statement,
                             reason=f"{type(exc).__name__}: {exc}") from None
