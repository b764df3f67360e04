"""What a code cell reads and defines (SPEC §3), from Python's ``ast``.

Cells first go through IPython's input transformer, so ``%magics``, ``!shell``
lines and ``%%cell magics`` parse. Magics that run Python code (``%time``,
``%%time``, ``%timeit``, ``%%capture``, ``%prun``) are analysed as the code
they run. Defining includes assignment, ``del``, ``import``, ``def``,
``class``, augmented, attribute and item assignment, and a method call used
as a statement (``lst.append(x)``): mutation counts as defining.

The analysis is conservative: a name read anywhere in a statement counts as
read, even when the same statement assigns it first. An extra read can only
add an edge towards an earlier app, never lose a value.
"""

from __future__ import annotations

import ast
import re
import symtable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["CellNames", "analyse_cell", "shows_result"]

#: Magics whose argument is Python code run in the user namespace.
_CODE_MAGICS = {"time", "prun", "capture"}
#: Magics whose argument is Python code run in a scope of its own (reads only).
_READ_ONLY_MAGICS = {"timeit"}
_SHELL_CALLS = {"system", "getoutput"}
#: IPython's script magics; ``--out``, ``--err`` and ``--proc`` name variables they set.
_SCRIPT_MAGICS = {"script", "sh", "bash", "zsh", "perl", "ruby", "python", "python2", "python3", "pypy"}
_SCRIPT_OUTPUTS = re.compile(r"--(?:out|err|proc)(?:\s+|=)([A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")
_DOLLAR = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
_MAGIC_OPTION = re.compile(r"^\s*(-[A-Za-z](\s+(?!-)\S+)?\s+)*")


@dataclass(frozen=True)
class CellNames:
    """Names a cell reads before defining them, and names it defines."""

    reads: frozenset[str]
    defines: frozenset[str]
    #: functions, classes and lambdas the cell defines at top level, each with the
    #: globals its body reads when it is called (late binding: at call time)
    callables: tuple[tuple[str, frozenset[str]], ...] = ()
    #: those of them that assign globals (``global count``), with the names
    global_writes: tuple[tuple[str, frozenset[str]], ...] = ()


@lru_cache(maxsize=4096)
def analyse_cell(source: str) -> CellNames:
    """Return the names ``source`` reads (before defining them) and defines."""
    code = _transform(source)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        # The cell fails when it runs, as it would under papermill; nothing flows.
        return CellNames(frozenset(), frozenset())
    reads, defines = _block_names(tree.body)
    reads |= _output_history_reads(tree)
    found = [item for stmt in tree.body for item in _callable_globals(stmt)]
    callables = tuple((name, r) for name, r, _ in found)
    writes = tuple((name, w) for name, _, w in found if w)
    return CellNames(frozenset(reads), frozenset(defines), callables, writes)


def _output_history_reads(tree: ast.Module) -> set[str]:
    """``Out[3]`` (or ``_oh[3]``) reads the result of the cell run as number 3: ``_3``."""
    return {f"_{node.slice.value}" for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
            and node.value.id in ("Out", "_oh") and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int and node.slice.value > 0}


def shows_result(source: str) -> bool:
    """Whether the cell ends with an expression whose value IPython shows (and keeps in ``Out``)."""
    try:
        tree = ast.parse(_transform(source))
    except SyntaxError:
        return False
    return bool(tree.body) and isinstance(tree.body[-1], ast.Expr) and not source.rstrip().endswith(";")


def _callable_globals(stmt: ast.stmt) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """For ``def f``, ``class C`` or ``f = lambda …``: the globals its body reads,
    and those it assigns (``global``)."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        name = stmt.name
    elif (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
          and isinstance(stmt.targets[0], ast.Name) and isinstance(stmt.value, ast.Lambda)):
        name = stmt.targets[0].id
    else:
        return []
    try:
        table = symtable.symtable(ast.unparse(stmt), "<cell>", "exec")
    except SyntaxError:
        return []
    reads: set[str] = set()
    writes: set[str] = set()
    _nested_names(table, reads, writes)
    reads |= writes  # ``global n; n += 1`` reads n too (symtable does not say so)
    reads.discard(name)
    return [(name, frozenset(reads), frozenset(writes))]


def _block_names(stmts: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """Names a sequence of statements reads before defining them, and defines."""
    reads: set[str] = set()
    defines: set[str] = set()
    for stmt in stmts:
        r, d = _statement_names(stmt)
        reads |= r - defines
        defines |= d
    return reads, defines


def transformed_source(source: str) -> str:
    """``source`` with IPython syntax (magics, ``!``) turned into plain Python."""
    return _transform(source)


def _transform(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return str(TransformerManager().transform_cell(source))
    except Exception:  # IPython refuses some malformed magics; analyse as plain code
        return source


def _statement_names(stmt: ast.stmt) -> tuple[set[str], set[str]]:
    if isinstance(stmt, _COMPOUND):
        return _compound_names(stmt)
    reads, defines = _symtable_names(ast.unparse(stmt))
    defines |= _mutated(stmt)
    reads |= (_mutated(stmt) & _bases_read(stmt)) | _read_by_update(stmt)
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call):
            r, d = _magic_names(node)
            reads |= r - defines
            defines |= d
    return reads, defines


_COMPOUND: tuple[type[ast.stmt], ...] = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With,
                                         ast.AsyncWith, ast.Try, *filter(None, [getattr(ast, "TryStar", None)]))


def _compound_names(stmt: ast.stmt) -> tuple[set[str], set[str]]:
    """A loop, ``if``, ``with`` or ``try`` analysed body by body, in order.

    So a mutation inside a body counts as defining (``for x in xs:
    lst.append(x)``; otherwise a later app got the unmutated list), and a name
    the statement binds before its body (``for f in ...``, ``with open(p) as
    f``) is not read from an earlier app (two apps each doing ``with open(...)
    as f`` made the first ship its closed file to the second, and fail).
    """
    reads: set[str] = set()
    defines: set[str] = set()

    def run(names: tuple[set[str], set[str]], bound: set[str] | None = None) -> None:
        reads.update(names[0] - (defines if bound is None else bound))
        defines.update(names[1])

    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        run(_expr_names(stmt.iter))
        head = set(defines)
        run(_target_names(stmt.target))
        run(_block_names(stmt.body))
        run(_block_names(stmt.orelse), head)  # the loop may not have run at all
    elif isinstance(stmt, (ast.While, ast.If)):
        run(_expr_names(stmt.test))
        head = set(defines)
        run(_block_names(stmt.body), head)
        run(_block_names(stmt.orelse), head)
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        for item in stmt.items:
            run(_expr_names(item.context_expr))
            if item.optional_vars is not None:
                run(_target_names(item.optional_vars))
        run(_block_names(stmt.body))
    else:  # ast.Try: any handler may run after any part of the body
        run(_block_names(stmt.body + stmt.orelse), set())
        for handler in stmt.handlers:
            if handler.type is not None:
                run(_expr_names(handler.type), set())
            hr, hd = _block_names(handler.body)
            run((hr - {handler.name or ""}, hd | ({handler.name} if handler.name else set())), set())
        run(_block_names(stmt.finalbody), set())
    return reads, defines


def _expr_names(expr: ast.expr) -> tuple[set[str], set[str]]:
    """Names an expression reads, and defines with ``:=``."""
    reads, defines = _symtable_names(ast.unparse(expr))
    for node in ast.walk(expr):
        if isinstance(node, ast.Call):
            r, d = _magic_names(node)
            reads |= r
            defines |= d
    return reads, defines


def _target_names(target: ast.expr) -> tuple[set[str], set[str]]:
    """What binding ``target`` reads and defines, as ``target = ...`` would."""
    return _statement_names(ast.Assign(targets=[target], value=ast.Constant(None), lineno=0))


def _symtable_names(code: str) -> tuple[set[str], set[str]]:
    try:
        table = symtable.symtable(code, "<cell>", "exec")
    except SyntaxError:
        return set(), set()
    reads: set[str] = set()
    defines: set[str] = set()
    for sym in table.get_symbols():
        name = sym.get_name()
        if sym.is_referenced():
            reads.add(name)
        if sym.is_assigned() or sym.is_imported() or sym.is_namespace():
            defines.add(name)
    _nested_names(table, reads, defines)
    return reads, defines


def _nested_names(table: symtable.SymbolTable, reads: set[str], defines: set[str]) -> None:
    """Globals that functions, lambdas, classes and comprehensions read or declare."""
    for child in table.get_children():
        for sym in child.get_symbols():
            name = sym.get_name()
            if sym.is_global() and sym.is_referenced():
                reads.add(name)
            if sym.is_declared_global() and sym.is_assigned():
                defines.add(name)
        _nested_names(child, reads, defines)


def _base_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _mutated(stmt: ast.stmt) -> set[str]:
    """Names a statement mutates: ``a.b = …``, ``a[i] = …``, ``del a[i]``, ``a.f(…)``."""
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        targets = [stmt.target]
    elif isinstance(stmt, ast.Delete):
        targets = list(stmt.targets)
    elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        func = stmt.value.func
        if isinstance(func, ast.Attribute) and not _is_get_ipython(func.value):
            targets = [func.value]
    out: set[str] = set()
    for target in targets:
        for node in ast.walk(target) if isinstance(target, (ast.Tuple, ast.List)) else [target]:
            if isinstance(node, ast.Starred):
                node = node.value
            if isinstance(node, (ast.Attribute, ast.Subscript)) or (
                isinstance(stmt, ast.Expr) and isinstance(node, ast.Name)
            ):
                base = _base_name(node)
                if base:
                    out.add(base)
    return out


def _bases_read(stmt: ast.stmt) -> set[str]:
    return {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}


def _read_by_update(stmt: ast.stmt) -> set[str]:
    """``x += 1`` and ``del x`` need the old ``x``; symtable does not count them as reads."""
    out: set[str] = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Delete):
            out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return out


def _is_get_ipython(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "get_ipython"
    )


def _magic_names(call: ast.Call) -> tuple[set[str], set[str]]:
    """Names read and defined by ``get_ipython().run_*_magic(…)`` and shell calls."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and _is_get_ipython(func.value)):
        return set(), set()
    args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
            for a in call.args]
    if func.attr in _SHELL_CALLS and args and args[0] is not None:
        return _interpolated(args[0]), set()
    if func.attr == "run_line_magic" and len(args) >= 2 and args[0] and args[1] is not None:
        name, line = args[0], args[1]
        if name in _CODE_MAGICS or name in _READ_ONLY_MAGICS:
            names = analyse_cell(_MAGIC_OPTION.sub("", line, count=1))
            return set(names.reads), set() if name in _READ_ONLY_MAGICS else set(names.defines)
        return _interpolated(line), set()
    if func.attr == "run_cell_magic" and len(args) >= 3 and args[0] and args[2] is not None:
        name, line, body = args[0], args[1] or "", args[2]
        if name in _CODE_MAGICS or name in _READ_ONLY_MAGICS:
            names = analyse_cell(body)
            defines = set() if name in _READ_ONLY_MAGICS else set(names.defines)
            if name == "capture":
                defines |= {w for w in line.split() if w.isidentifier()}
            return set(names.reads), defines
        if name in _SCRIPT_MAGICS:  # %%bash --out NAME stores the script's stdout in NAME
            return set(), set(_SCRIPT_OUTPUTS.findall(line))
        return set(), set()
    return set(), set()


def _interpolated(line: str) -> set[str]:
    """Names an IPython shell line or magic line expands with ``{expr}`` or ``$name``."""
    reads = set(_DOLLAR.findall(line))
    for expr in _BRACED.findall(line):
        reads |= analyse_cell(expr).reads
    return reads
