"""What a code cell reads and defines (SPEC §3), from Python's ``ast``.

Cells first go through IPython's input transformer, so ``%magics``, ``!shell``
lines and ``%%cell magics`` parse. Magics that run Python code (``%time``,
``%%time``, ``%timeit``, ``%%capture``, ``%prun``) are analysed as the code
they run. Defining includes assignment, ``del``, ``import``, ``def``,
``class``, augmented, attribute and item assignment, and mutation: a method
call anywhere in a statement (``lst.append(x)``, ``top = stack.pop()``) may
change its receiver, and the calls in :mod:`nbpipe.effects` change their
argument (``random.shuffle(x)``) or nothing at all (``df.describe()``,
``plt.title()``). Names written in literal strings (``eval``, ``exec``,
``globals()['s']``, ``df.query('A < @m')``) count too; the calls whose
names stay invisible are listed, for ``check`` to warn about. Drawing from
the global random generators reads and defines their state, a pseudo-name
from :mod:`.state` (``<numpy.random state>``) that ships like a variable.

What a cell cannot tell alone (which names are modules, which hold a
``defaultdict``, what ``from M import *`` defines) comes from the rest of the
notebook as a :class:`Context`, built by :mod:`nbpipe.imports`.

The analysis is conservative: a name read anywhere in a statement counts as
read, even when the same statement assigns it first. An extra read can only
add an edge towards an earlier app, never lose a value.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import re
import symtable
from dataclasses import dataclass, replace
from functools import lru_cache

from . import syntax
from .effects import ARGUMENT_MUTATORS, METHOD_ARGUMENT_MUTATORS, NAMES_IN_STRINGS, is_pure_method
from .state import generator_names, generator_uses

__all__ = ["CellNames", "Context", "analyse_cell", "shows_result"]

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
_AT_NAME = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")
_BUILTINS = frozenset(dir(builtins))
_NONE_CALLS = frozenset({"print", "display"})


@dataclass(frozen=True)
class Context:
    """What the rest of the notebook tells the analysis of one cell."""

    #: local name -> what an import binds it to (``np`` -> ``numpy``, ``shuffle`` -> ``random.shuffle``)
    imports: tuple[tuple[str, str], ...] = ()
    #: names bound to modules: never mutation targets (``plt.title()`` does not define ``plt``)
    modules: frozenset[str] = frozenset()
    #: names bound to ``defaultdict(...)``: reading ``d[k]`` inserts ``k``
    defaultdicts: frozenset[str] = frozenset()
    #: module -> the public names ``from module import *`` defines
    star_names: tuple[tuple[str, frozenset[str]], ...] = ()

    def qualified(self, func: ast.expr) -> str | None:
        """``np.random.shuffle`` -> ``numpy.random.shuffle``; ``next`` -> ``builtins.next``."""
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        head = dict(self.imports).get(func.id)
        if head is None:
            head = f"builtins.{func.id}" if not parts and func.id in _BUILTINS else func.id
        return ".".join([head, *reversed(parts)])


@dataclass(frozen=True)
class CellNames:
    """Names a cell reads before defining them, and names it defines."""

    reads: frozenset[str]
    defines: frozenset[str]
    #: functions, classes and lambdas the cell defines at top level, each with the
    #: globals its body reads when it is called (late binding: at call time)
    callables: tuple[tuple[str, frozenset[str]], ...] = ()
    #: those of them that assign globals (``global count``) or change them in place
    #: (``stack.append(x)``), with the names
    global_writes: tuple[tuple[str, frozenset[str]], ...] = ()
    #: every name an import binds, with what it binds it to (``np`` -> ``numpy``)
    imports: tuple[tuple[str, str], ...] = ()
    #: names bound by ``import X`` / ``import X as Y``, always modules
    modules: frozenset[str] = frozenset()
    #: modules imported (``import a.b`` -> ``a.b``; ``from a import b`` -> ``a``, ``a.b``)
    imported_modules: tuple[str, ...] = ()
    #: modules imported with ``from M import *``
    star_imports: tuple[str, ...] = ()
    #: names bound to ``defaultdict(...)``
    defaultdicts: frozenset[str] = frozenset()
    #: files written by ``%%writefile F`` / ``%%file F``
    writes: tuple[str, ...] = ()
    #: calls that reach names the analysis cannot see (``eval(code)``, ``globals()[key]``)
    hidden: tuple[str, ...] = ()


@lru_cache(maxsize=4096)
def analyse_cell(source: str, context: Context = Context()) -> CellNames:
    """Return the names ``source`` reads (before defining them) and defines.

    ``context`` says what the rest of the notebook binds; the cell's own
    imports and ``defaultdict`` assignments are added to it.
    """
    with syntax.deep_trees():
        tree = _parse(source)
        try:
            return _analyse(tree, context) if tree is not None else _NOTHING
        except RecursionError:
            # Deeper than Python compiles: the cell fails when it runs; nothing flows.
            return _NOTHING


#: what a cell that fails to compile reads and defines
_NOTHING = CellNames(frozenset(), frozenset())


def _analyse(tree: ast.Module, context: Context) -> CellNames:
    imports, modules = syntax.imports(tree)
    defaultdicts = syntax.defaultdicts(tree)
    ctx = replace(context, imports=context.imports + imports, modules=context.modules | modules,
                  defaultdicts=context.defaultdicts | defaultdicts)
    reads, defines = _block_names(tree.body, ctx)
    reads |= _output_history_reads(tree)
    # Drawing from the global random generators reads and defines their state.
    generator_reads, generator_defines = generator_uses(tree)
    reads, defines = reads | generator_reads, defines | generator_defines
    found = [item for stmt in tree.body for item in _callable_globals(stmt, ctx, tree)]
    callables = tuple((name, r) for name, r, _ in found)
    writes = tuple((name, w) for name, _, w in found if w)
    defines |= _called_here(tree, writes)
    return CellNames(frozenset(reads), frozenset(defines), callables, writes, imports, modules,
                     syntax.imported_modules(tree), syntax.star_imports(tree), defaultdicts,
                     syntax.written_files(tree), _hidden(tree, ctx))


@lru_cache(maxsize=4096)
def _parse(source: str) -> ast.Module | None:
    """The cell's tree, or None when Python could not compile it either: the cell fails
    when it runs, as under papermill (too deep, a null byte, a lone surrogate)."""
    try:
        with syntax.deep_trees():
            return syntax.expand_pylab(ast.parse(_transform(source)))
    except syntax.UNPARSABLE:
        return None


def _output_history_reads(tree: ast.Module) -> set[str]:
    """``Out[3]`` (or ``_oh[3]``) reads the result of the cell run as number 3: ``_3``."""
    return {f"_{node.slice.value}" for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
            and node.value.id in ("Out", "_oh") and isinstance(node.slice, ast.Constant)
            and type(node.slice.value) is int and node.slice.value > 0}


def shows_result(source: str) -> bool:
    """Whether the cell ends with an expression whose value IPython shows (and keeps in ``Out``)."""
    tree = _parse(source)
    if not (tree and tree.body and isinstance(tree.body[-1], ast.Expr)) or source.rstrip().endswith(";"):
        return False
    last = tree.body[-1].value
    # print() and display() return None, which IPython does not keep (display(…,
    # display_id=…) returns a handle)
    return not (isinstance(last, ast.Call) and isinstance(last.func, ast.Name) and last.func.id in _NONE_CALLS
                and not any(k.arg == "display_id" for k in last.keywords))


def _callable_globals(stmt: ast.stmt, ctx: Context,
                      cell: ast.Module) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """For ``def f``, ``class C`` or ``f = lambda …``: the globals its body reads,
    and those it assigns (``global``) or changes (``stack.append(x)``, the state of a random
    generator it draws from) when called."""
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
    writes |= _changed_in_body(stmt, ctx) & reads
    writes |= generator_names(stmt, cell)
    reads |= writes  # ``global n; n += 1`` reads n too (symtable does not say so)
    reads.discard(name)
    return [(name, frozenset(reads), frozenset(writes))]


def _changed_in_body(stmt: ast.stmt, ctx: Context) -> set[str]:
    """Names a function's (or lambda's) body changes in place when it runs."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        body: list[ast.AST] = list(stmt.body)
    elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Lambda):
        body = [stmt.value.body]
    else:
        return set()
    out: set[str] = set()
    for part in body:
        for node in ast.walk(part):
            if isinstance(node, ast.stmt):
                out |= _mutated(node, ctx)
            elif isinstance(node, ast.expr) and node is part:
                out |= _call_mutations(node, ctx)
    return out


def _called_here(tree: ast.Module, writes: tuple[tuple[str, frozenset[str]], ...]) -> set[str]:
    """What the functions this cell defines change, when the cell also calls them."""
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return set().union(*(w for f, w in writes if f in called))


def _block_names(stmts: list[ast.stmt], ctx: Context) -> tuple[set[str], set[str]]:
    """Names a sequence of statements reads before defining them, and defines."""
    reads: set[str] = set()
    defines: set[str] = set()
    for stmt in stmts:
        r, d = _statement_names(stmt, ctx)
        reads |= r - defines
        defines |= d
    return reads, defines


@lru_cache(maxsize=4096)
def loaded_modules(source: str) -> tuple[str, ...]:
    """Modules a cell may load anywhere, function bodies too (:func:`.syntax.loaded_modules`,
    after IPython's input transformer); none when it does not parse."""
    try:
        return syntax.loaded_modules(ast.parse(transformed_source(source)))
    except syntax.UNPARSABLE:
        return ()


def transformed_source(source: str) -> str:
    """``source`` with IPython syntax (magics, ``!``) turned into plain Python."""
    return _transform(source)


@lru_cache(maxsize=4096)
def _transform(source: str) -> str:
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        return str(TransformerManager().transform_cell(source))
    except Exception:  # IPython refuses some malformed magics; analyse as plain code
        return source


def _statement_names(stmt: ast.stmt, ctx: Context) -> tuple[set[str], set[str]]:
    if isinstance(stmt, _COMPOUND):
        return _compound_names(stmt, ctx)
    reads, defines = _symtable_names(ast.unparse(stmt))
    mutated = _mutated(stmt, ctx)
    defines |= mutated
    reads |= (mutated & _bases_read(stmt)) | _read_by_update(stmt)
    if isinstance(stmt, ast.ImportFrom) and any(a.name == "*" for a in stmt.names):
        defines |= dict(ctx.star_names).get(syntax.from_module(stmt), frozenset())
    for node in ast.walk(stmt):
        if isinstance(node, ast.Call):
            r, d = _magic_names(node, ctx)
            reads |= r - defines
            defines |= d
    r, d = _string_names(stmt, ctx)
    return reads | r, defines | d


_COMPOUND: tuple[type[ast.stmt], ...] = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.With,
                                         ast.AsyncWith, ast.Try, *filter(None, [getattr(ast, "TryStar", None)]))


def _compound_names(stmt: ast.stmt, ctx: Context) -> tuple[set[str], set[str]]:
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
        run(_expr_names(stmt.iter, ctx))
        head = set(defines)
        run(_target_names(stmt.target, ctx))
        run(_block_names(stmt.body, ctx))
        run(_block_names(stmt.orelse, ctx), head)  # the loop may not have run at all
    elif isinstance(stmt, (ast.While, ast.If)):
        run(_expr_names(stmt.test, ctx))
        head = set(defines)
        run(_block_names(stmt.body, ctx), head)
        run(_block_names(stmt.orelse, ctx), head)
    elif isinstance(stmt, (ast.With, ast.AsyncWith)):
        for item in stmt.items:
            run(_expr_names(item.context_expr, ctx))
            if item.optional_vars is not None:
                run(_target_names(item.optional_vars, ctx))
        run(_block_names(stmt.body, ctx))
    else:  # ast.Try: any handler may run after any part of the body
        run(_block_names(stmt.body + stmt.orelse, ctx), set())
        for handler in stmt.handlers:
            if handler.type is not None:
                run(_expr_names(handler.type, ctx), set())
            hr, hd = _block_names(handler.body, ctx)
            run((hr - {handler.name or ""}, hd | ({handler.name} if handler.name else set())), set())
        run(_block_names(stmt.finalbody, ctx), set())
    return reads, defines


def _expr_names(expr: ast.expr, ctx: Context) -> tuple[set[str], set[str]]:
    """Names an expression reads, and defines with ``:=`` or by mutation."""
    reads, defines = _symtable_names(ast.unparse(expr))
    defines |= _call_mutations(expr, ctx)
    for node in ast.walk(expr):
        if isinstance(node, ast.Call):
            r, d = _magic_names(node, ctx)
            reads |= r
            defines |= d
    r, d = _string_names(expr, ctx)
    return reads | r, defines | d


def _target_names(target: ast.expr, ctx: Context) -> tuple[set[str], set[str]]:
    """What binding ``target`` reads and defines, as ``target = ...`` would."""
    return _statement_names(ast.Assign(targets=[target], value=ast.Constant(None), lineno=0), ctx)


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


def _mutated(stmt: ast.stmt, ctx: Context) -> set[str]:
    """Names a statement mutates: ``a.b = …``, ``a[i] = …``, ``del a[i]``, and
    through calls (:func:`_call_mutations`)."""
    targets = syntax.targets(stmt)
    out: set[str] = set()
    for target in targets:
        for node in ast.walk(target) if isinstance(target, (ast.Tuple, ast.List)) else [target]:
            if isinstance(node, ast.Starred):
                node = node.value
            if isinstance(node, (ast.Attribute, ast.Subscript)):
                base = _base_name(node)
                if base:
                    out.add(base)
    return (out - ctx.modules) | _call_mutations(stmt, ctx)


def _call_mutations(node: ast.AST, ctx: Context) -> set[str]:
    """Names that calls and ``defaultdict`` reads in ``node`` may change (nbpipe/effects.py)."""
    out: set[str] = set()
    local: set[str] = set()  # comprehension variables are not the notebook's names
    for sub in syntax.executed(node):
        if isinstance(sub, ast.Call):
            out |= _changed_by_call(sub, ctx)
        elif (isinstance(sub, ast.Subscript) and isinstance(sub.ctx, ast.Load)
              and isinstance(sub.value, ast.Name) and sub.value.id in ctx.defaultdicts):
            out.add(sub.value.id)  # d[k] inserts k
        elif isinstance(sub, ast.comprehension):
            local |= {n.id for n in ast.walk(sub.target) if isinstance(n, ast.Name)}
    return out - ctx.modules - local


def _changed_by_call(call: ast.Call, ctx: Context) -> set[str]:
    """The receiver of a method that is not known to be pure, the argument of a
    known mutator, and what ``out=`` names."""
    func, out = call.func, set()
    first = _base_name(call.args[0]) if call.args else None
    if isinstance(func, ast.Attribute) and not syntax.is_get_ipython(func.value):
        base = _base_name(func.value)
        if base and not is_pure_method(func.attr, _keyword_is_true(call, "inplace")):
            out.add(base)
        if func.attr in METHOD_ARGUMENT_MUTATORS and first:
            out.add(first)
    if first and ctx.qualified(func) in ARGUMENT_MUTATORS:
        out.add(first)
    for kw in call.keywords:
        if kw.arg == "out":
            values = kw.value.elts if isinstance(kw.value, ast.Tuple) else [kw.value]
            out |= {b for b in map(_base_name, values) if b}
    return out


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
               for k in call.keywords)


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


def _magic_names(call: ast.Call, ctx: Context) -> tuple[set[str], set[str]]:
    """Names read and defined by ``get_ipython().run_*_magic(…)`` and shell calls."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and syntax.is_get_ipython(func.value)):
        return set(), set()
    args = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
            for a in call.args]
    if func.attr in _SHELL_CALLS and args and args[0] is not None:
        return _interpolated(args[0]), set()
    if func.attr == "run_line_magic" and len(args) >= 2 and args[0] and args[1] is not None:
        name, line = args[0], args[1]
        if name in _CODE_MAGICS or name in _READ_ONLY_MAGICS:
            names = analyse_cell(_MAGIC_OPTION.sub("", line, count=1), ctx)
            return set(names.reads), set() if name in _READ_ONLY_MAGICS else set(names.defines)
        return _interpolated(line), set()
    if func.attr == "run_cell_magic" and len(args) >= 3 and args[0] and args[2] is not None:
        name, line, body = args[0], args[1] or "", args[2]
        if name in _CODE_MAGICS or name in _READ_ONLY_MAGICS:
            names = analyse_cell(body, ctx)
            defines = set() if name in _READ_ONLY_MAGICS else set(names.defines)
            if name == "capture":
                defines |= {w for w in line.split() if w.isidentifier()}
            return set(names.reads), defines
        if name in _SCRIPT_MAGICS:  # %%bash --out NAME stores the script's stdout in NAME
            return _interpolated(line), set(_SCRIPT_OUTPUTS.findall(line))
        return _interpolated(line), set()  # IPython expands a cell magic's line, not its body
    return set(), set()


def _interpolated(line: str) -> set[str]:
    """Names an IPython shell line or magic line expands with ``{expr}`` or ``$name``."""
    reads = set(_DOLLAR.findall(line))
    for expr in _BRACED.findall(line):
        reads |= analyse_cell(expr).reads
    return reads


# ----------------------------------------------------------------- names in strings


def _string_names(node: ast.AST, ctx: Context) -> tuple[set[str], set[str]]:
    """Names reached through literal strings: ``eval``/``exec`` code, ``pd.eval`` and
    ``numexpr`` expressions, ``@names`` of ``df.query``, and ``globals()['s']``."""
    reads: set[str] = set()
    defines: set[str] = set()
    for sub in syntax.executed(node):
        if isinstance(sub, ast.Call):
            found = _string_call(sub, ctx)
            text = _literal_text(found[1], found[0]) if found else None
            if found and text is not None:
                r, d = _names_in_text(text, found[0], ctx)
                reads |= r
                defines |= d
            if (isinstance(sub.func, ast.Attribute) and sub.func.attr == "get" and sub.args
                    and _is_globals(sub.func.value)):
                key = _literal_text(sub.args[0], "code")
                reads |= {key} if key else set()
        elif isinstance(sub, ast.Subscript) and _globals_key(sub) is not None:
            key = _literal_text(sub.slice, "code")
            if key:
                (reads if isinstance(sub.ctx, ast.Load) else defines).add(key)
    return reads, defines


def _string_call(call: ast.Call, ctx: Context) -> tuple[str, ast.expr | None] | None:
    """For a call of :data:`~nbpipe.effects.NAMES_IN_STRINGS`: how to read its string, and the string."""
    func = call.func
    kind = NAMES_IN_STRINGS.get(ctx.qualified(func) or "")
    if kind is None and isinstance(func, ast.Attribute) and _base_name(func.value) not in ctx.modules:
        kind = NAMES_IN_STRINGS.get("." + func.attr)
    if kind is None or not (call.args or call.keywords):
        return None
    arg = call.args[0] if call.args else next(
        (k.value for k in call.keywords if k.arg in ("expr", "source", "ex")), None)
    return kind, arg


def _literal_text(arg: ast.expr | None, kind: str) -> str | None:
    """The text of a literal string; of an f-string, its literal parts (not for code)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and kind != "code":
        return " ".join(str(v.value) for v in arg.values if isinstance(v, ast.Constant))
    return None


def _names_in_text(text: str, kind: str, ctx: Context) -> tuple[set[str], set[str]]:
    if kind == "at-names":
        return set(_AT_NAME.findall(text)), set()
    if kind == "code":
        names = analyse_cell(text, ctx)
        return set(names.reads), set(names.defines)
    try:  # an expression (pandas.eval, numexpr): every name it uses
        tree = ast.parse(text.strip(), mode="eval")
        return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}, set()
    except syntax.UNPARSABLE:
        words = re.findall(r"(?<![.\w])[A-Za-z_]\w*", text)
        return {w for w in words if not keyword.iskeyword(w)}, set()


def _globals_key(node: ast.Subscript) -> ast.expr | None:
    """For ``globals()[key]`` (or ``locals()``, the same at top level): ``key``."""
    return node.slice if _is_globals(node.value) else None


def _is_globals(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("globals", "locals") and not node.args)


def _hidden(tree: ast.Module, ctx: Context) -> tuple[str, ...]:
    """Calls that reach names through strings the analysis cannot read, in source order."""
    out: list[ast.AST] = []
    for node in syntax.executed(tree):
        if isinstance(node, ast.Call):
            found = _string_call(node, ctx)
            if found and _literal_text(found[1], found[0]) is None:
                out.append(node)
        elif isinstance(node, ast.Subscript):
            key = _globals_key(node)
            if key is not None and _literal_text(key, "code") is None:
                out.append(node)
        elif isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            if syntax.from_module(node) not in dict(ctx.star_names):
                out.append(node)
    out.sort(key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
    return tuple(dict.fromkeys(_short(n) for n in out))


def _short(node: ast.AST) -> str:
    if isinstance(node, ast.ImportFrom):
        return f"from {syntax.from_module(node)} import *"
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."
