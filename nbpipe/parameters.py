"""The notebook's parameters: what its ``parameters`` cells declare, and what a run uses (pure).

A parameter is a top-level assignment in a cell tagged ``parameters``, as
papermill's ``--help-notebook`` reads it: ``n_samples = 1000  # events`` is the
parameter ``n_samples``, of type ``int``, default ``1000``, help ``events``. The
type is the annotation (``n: int = 1000``) or papermill's type comment
(``# type: int``) when there is one, else the type of a literal default;
a default that is arithmetic on numbers (``2 * 50``, ``10**6``) is worked out.
Any other default (``Path("x")``, ``f"{out}/x"``) is kept as its source text:
nbpipe does not run the notebook's code to learn it.

:func:`unknown` finds the given names the notebook does not declare ("did you
mean"); :func:`effective` gives the values a run uses, defaults included, and
where each came from, as the merged notebook records them.
"""

from __future__ import annotations

import ast
import difflib
import io
import math
import operator
import re
import tokenize
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import syntax
from .errors import ParameterWarning
from .parse import ParsedNotebook

__all__ = ["GivenParameters", "Parameter", "declared", "effective", "unknown"]

_TYPE_COMMENT = re.compile(r"type:\s*(?P<type>\S+)\s*(?P<help>.*)")


@dataclass(frozen=True)
class Parameter:
    """One parameter of the notebook, as its ``parameters`` cell sets it."""

    name: str
    #: the default's source text, as written (one written over lines: on one line)
    default: str
    #: the annotation or type comment, else the type of a literal default; None: unknown
    type: str | None
    #: the comment at the end of its line
    help: str
    #: index of the cell that sets it
    cell: int
    #: the default's value, when ``known``: a literal, or arithmetic on numbers
    value: Any = None
    known: bool = False

    @property
    def recorded(self) -> Any:
        """The default as the merged notebook records it: its value when that is plain
        JSON data (a tuple as a list), else its source text."""
        if self.known:
            try:
                return _json_ready(self.value, 0)
            except ValueError:
                pass
        return self.default

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "help": self.help,
                "cell": self.cell, "value": self.recorded, "known": self.known}


class GivenParameters(dict[str, Any]):
    """Parameter values with where each came from (``-p n``, a YAML file), so that a
    warning about one names where it was given. A plain mapping works as well: its
    names are said to come from ``parameters``."""

    def __init__(self) -> None:
        super().__init__()
        self.origins: dict[str, str] = {}

    def give(self, values: Mapping[str, Any], origin: str) -> None:
        for name, value in values.items():
            self[name] = value
            self.origins[name] = origin


def declared(parsed: ParsedNotebook) -> tuple[Parameter, ...] | None:
    """The parameters the notebook's ``parameters`` cells set, in order (a name set twice:
    its last assignment). None when the notebook's language is not Python."""
    if parsed.language != "python":
        return None
    found: dict[str, Parameter] = {}
    for info in parsed.cells_of("parameters"):
        for parameter in _cell_parameters(info.source, info.index):
            found.pop(parameter.name, None)
            found[parameter.name] = parameter
    return tuple(found.values())


def unknown(parsed: ParsedNotebook, known: Iterable[str], given: Iterable[str], *,
            origins: Mapping[str, str] | None = None) -> list[ParameterWarning]:
    """A warning for each name in ``given`` that the parameters cells do not set.

    ``known`` are the names the parameters cells define in any way (the graph's
    ``parameter_names``); the suggestion is the closest declared parameter;
    ``origins`` says where each name was given (default: ``parameters``).
    The value is injected all the same, as papermill does.
    """
    params = declared(parsed)
    if params is None:
        return []  # another language's parameters cell: nbpipe cannot tell what it sets
    has_cell = bool(parsed.cells_of("parameters"))
    names = [p.name for p in params]
    known = set(known) | set(names)
    origins = origins or {}
    warnings = []
    for name in given:
        if name in known:
            continue
        close = difflib.get_close_matches(name, names, n=1)
        warnings.append(ParameterWarning(name=name, origin=origins.get(name, "parameters"),
                                         suggestion=close[0] if close else None,
                                         parameters=tuple(names), has_cell=has_cell))
    return warnings


def effective(parsed: ParsedNotebook, given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The value of every parameter a run uses, and where it came from: ``"default"``
    (the parameters cell) or ``"override"`` (given, declared or not: it is injected).

    A default that is not plain data is recorded as its source text (:attr:`Parameter.recorded`).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for parameter in declared(parsed) or ():
        values[parameter.name] = parameter.recorded
        sources[parameter.name] = "default"
    for name, value in given.items():
        values[name] = value
        sources[name] = "override"
    return values, sources


# ----------------------------------------------------------------- one cell


def _cell_parameters(source: str, index: int) -> list[Parameter]:
    from .names import transformed_source

    text = transformed_source(source)
    try:
        tree = ast.parse(text)
    except syntax.UNPARSABLE:
        return []  # the cell fails when it runs; nothing to list
    comments = _comments(text)
    out = []
    for stmt in tree.body:
        for name, value, annotation in _assignments(stmt):
            comment = comments.get(stmt.end_lineno or stmt.lineno, "")
            typed = _TYPE_COMMENT.fullmatch(comment)
            if typed and typed.group("type") == "ignore":  # mypy's, not a type
                typed, comment = None, typed.group("help")
            help_text = typed.group("help") if typed else comment
            annotation = annotation or (typed.group("type") if typed else None)
            known, evaluated = _evaluate(value)
            kind = annotation or (_type_name(evaluated) if known else None)
            out.append(Parameter(name, _default_text(text, value), kind, help_text, index, evaluated, known))
    return out


def _default_text(text: str, value: ast.expr) -> str:
    """The default as written when it fits on its line, else as Python writes it on one."""
    segment = ast.get_source_segment(text, value)
    return segment if segment is not None and "\n" not in segment else ast.unparse(value)


def _assignments(stmt: ast.stmt) -> list[tuple[str, ast.expr, str | None]]:
    """(name, value, annotation) of each name a top-level assignment sets directly."""
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return [(stmt.target.id, stmt.value, ast.unparse(stmt.annotation))]
    if not isinstance(stmt, ast.Assign):
        return []
    out = []
    for target in stmt.targets:
        if isinstance(target, ast.Name):
            out.append((target.id, stmt.value, None))
        elif (isinstance(target, (ast.Tuple, ast.List)) and isinstance(stmt.value, (ast.Tuple, ast.List))
              and len(target.elts) == len(stmt.value.elts)):  # a, b = 1, 2
            out += [(t.id, v, None) for t, v in zip(target.elts, stmt.value.elts) if isinstance(t, ast.Name)]
    return out


def _comments(text: str) -> dict[int, str]:
    """Line -> the text of the comment that ends it."""
    out = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                out[token.start[0]] = token.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


# ----------------------------------------------------------------- defaults


#: arithmetic on numbers a default may use and still be known before the run
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
#: an integer default is worked out up to this many bits (Python prints at most 4300 digits)
_MAX_BITS = 4096


def _evaluate(node: ast.expr) -> tuple[bool, Any]:
    """(True, value) for a literal or arithmetic on numbers; (False, None) for anything else."""
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    try:
        return True, _arithmetic(node)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return False, None


def _arithmetic(node: ast.expr) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _arithmetic(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _arithmetic(node.left), _arithmetic(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and (
                left.bit_length() * right > _MAX_BITS):  # a negative power is a float: no bound
            raise ValueError("too large to work out")
        result = _OPERATORS[type(node.op)](left, right)
        if type(result) not in (int, float) or (isinstance(result, int) and result.bit_length() > _MAX_BITS):
            raise ValueError("not a number nbpipe works out")  # a complex power, a huge product
        return result  # type: ignore[no-any-return]
    raise ValueError("not arithmetic on numbers")


def _json_ready(value: Any, depth: int) -> Any:
    """``value`` as plain JSON data (tuples as lists); ValueError if it has none."""
    if depth > 100:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if value.bit_length() > _MAX_BITS:
            raise ValueError("too long to print")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("no JSON literal")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_ready(v, depth + 1) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_ready(v, depth + 1) for k, v in value.items()}
    raise ValueError(f"a {type(value).__name__} has no JSON form")
