"""The checks made before anything runs, shared by ``nbpipe check`` and :func:`nbpipe.execute`.

Bad input is found here, before a run directory exists, so ``check`` never
says ok to what ``execute`` refuses:

- parameters (from ``-p``, ``-f`` files and the Python API): names are
  identifiers that are not keywords, values are plain JSON data (dates become
  strings), so papermill's injected cell is literals only; a name the
  notebook's parameters cells do not set gives a warning (:mod:`.parameters`);
- parameter files: UTF-8 YAML mappings, bounded in size, nesting and alias
  expansion;
- the merged notebook and the HTML report can be written where they go;
- every declared input that no app produces exists and is readable;
- a ``map:`` over a parameter gets a list to map over.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import glob
import keyword
import math
import numbers
import os
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GraphError, ParameterWarning, TagError, UsageError
from .graph import Pipeline
from .parameters import declared, unknown

__all__ = ["MAX_FILE_BYTES", "MAX_NESTING", "MAX_VALUES", "Checked", "before_run", "check_inputs", "check_refresh",
           "check_map_parameters", "check_parameters", "default_output", "output_paths",
           "read_parameters_file"]

#: A parameters file larger than this is refused: its values go into every app's notebook,
#: and YAML parses at a few seconds per MiB (data belongs in a file an app reads, inputs:).
MAX_FILE_BYTES = 2**20
#: Values in all parameters, counting each use of a YAML alias as a copy.
MAX_VALUES = 1_000_000
#: Lists and mappings nested deeper than this are refused.
MAX_NESTING = 100


@dataclass(frozen=True)
class Checked:
    """What :func:`before_run` found good: plain parameters and where the results go."""

    parameters: dict[str, Any]
    output: Path
    html: Path | None
    #: app -> the container it runs in (:class:`~nbpipe.containers.Container`), for those that do
    containers: dict[str, Any] = field(default_factory=dict)
    #: what is allowed but likely a mistake: a given parameter the notebook does not set
    warnings: tuple[ParameterWarning, ...] = ()


def before_run(pipeline: Pipeline, notebook: Path, *, parameters: Mapping[str, Any] | None,
               output: str | Path | None, html: str | Path | bool | None) -> Checked:
    """Every check of this module; raise the first problem as an exit-2 error.

    ``parameters`` may be a :class:`~nbpipe.parameters.GivenParameters`: the
    warnings then name where each unknown one was given.
    """
    plain = check_parameters(parameters or {})
    out, html_path = output_paths(notebook, output, html)
    check_inputs(pipeline, notebook.resolve().parent)
    check_map_parameters(pipeline, plain)
    warnings = unknown(pipeline.parsed, pipeline.parameter_names, plain,
                       origins=getattr(parameters, "origins", {}))
    return Checked(plain, out, html_path, warnings=tuple(warnings))


# ----------------------------------------------------------------- parameters


def check_parameters(values: Mapping[str, Any], *, origin: str = "parameters") -> dict[str, Any]:
    """A plain copy of ``values``: exact str/int/float/bool/None, lists and str-keyed dicts.

    Dates and datetimes become the string papermill would inject (``str(value)``,
    ISO 8601); tuples become lists. Anything else raises :class:`UsageError`
    naming ``origin`` and the parameter.
    """
    if not isinstance(values, Mapping):
        raise UsageError(f"{origin}: parameters must be a mapping of names to values, "
                         f"not {type(values).__name__}")
    budget = [MAX_VALUES]
    out: dict[str, Any] = {}
    for name, value in values.items():
        name = _name(name, origin)
        out[name] = _plain(value, f"{origin}: parameter {name}", 0, budget)
    return out


def _name(name: Any, origin: str) -> str:
    if not isinstance(name, str):
        raise UsageError(f"{origin}: parameter name {_show(name)} is of type {type(name).__name__}; "
                         "a parameter name must be a Python identifier (quote it in YAML if it is one)")
    # A str subclass cannot change how the name is written; NFKC is how Python reads a name
    # (the variable ``ﬁ = 1`` sets is ``fi``).
    name = unicodedata.normalize("NFKC", str.__str__(name))
    if not name.isidentifier():
        raise UsageError(f"{origin}: parameter name {_show(name)} is not a Python identifier")
    if keyword.iskeyword(name):
        raise UsageError(f"{origin}: parameter name {name!r} is a Python keyword; rename the parameter")
    if name.startswith("__nbpipe"):
        raise UsageError(f"{origin}: parameter name {_show(name)} is reserved for nbpipe")
    return name


def _plain(value: Any, where: str, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise UsageError(f"{where}: the parameters hold more than {MAX_VALUES:,} values")
    if depth > MAX_NESTING:
        raise UsageError(f"{where}: nested deeper than {MAX_NESTING} levels (or refers to itself)")
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, numbers.Integral):
        return _int(int(value), where)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            raise UsageError(f"{where}: {number} has no JSON literal; pass it as a string and "
                             "convert it in the notebook (float(x))")
        return number
    if isinstance(value, (datetime.date, datetime.time)):
        return str.__str__(str(value))  # as papermill injects a date: 2024-01-31, 2024-01-31 12:00:00
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1, budget) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{where}: key {_show(key)} is of type {type(key).__name__}; keys of "
                                 "a mapping parameter must be strings (quote the key in YAML)")
            out[str.__str__(key)] = _plain(item, f"{where}[{_show(key)}]", depth + 1, budget)
        return out
    raise UsageError(f"{where}: a value of type {type(value).__name__} cannot be passed; parameters are "
                     "strings, numbers, booleans, null, lists and mappings")


def _show(value: Any) -> str:
    """A short repr for a message, also of an int too long to print."""
    try:
        text = repr(value)
    except ValueError:
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= 80 else text[:77] + "..."


def _int(value: int, where: str) -> int:
    try:
        int.__repr__(value)
    except ValueError:  # beyond Python's limit on int <-> str conversions
        raise UsageError(f"{where}: an integer of more than 4300 digits cannot be injected; "
                         "pass it as a string") from None
    return value


def read_parameters_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML parameters file, checked by :func:`check_parameters`."""
    import yaml

    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read parameters file: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"{path}: a parameters file may hold at most {MAX_FILE_BYTES // 2**20} MiB; "
                         "put data in a file the notebook reads")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: a parameters file must be UTF-8 YAML text") from None
    try:
        loaded = yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise UsageError(f"{path}: YAML nested too deeply") from None
    except ValueError as exc:  # e.g. a decimal integer beyond Python's digit limit
        raise UsageError(f"{path}: bad YAML value: {_one_line(exc)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: a parameters file must be a mapping of names to values")
    return check_parameters(loaded, origin=str(path))


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


@functools.cache
def _loader() -> Any:
    """yaml's safe loader (libyaml's when there) that sizes a document before it builds it."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    def construct_document(loader: Any, node: Any) -> Any:
        _expanded_size(node)
        return base.construct_document(loader, node)

    return type("BoundedSafeLoader", (base,), {"construct_document": construct_document})


def _expanded_size(root: Any) -> int:
    """Nodes of a YAML document with every alias expanded (each distinct node visited once).

    Refuses more than MAX_VALUES (an alias bomb) and an alias inside the node it names.
    """
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_VALUES:
                raise yaml.YAMLError(f"its aliases expand to more than {MAX_VALUES:,} values")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise yaml.YAMLError("an alias refers to a node that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    return sizes[id(root)]


# ----------------------------------------------------------------- outputs


def check_refresh(pipeline: Pipeline, apps: tuple[str, ...] | list[str]) -> frozenset[str]:
    """``--refresh APP``: each must name an app; returns them with every app that depends on them."""
    forced: set[str] = set()
    for app in apps:
        if app not in pipeline.apps:
            close = difflib.get_close_matches(app, list(pipeline.apps), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the apps are: {', '.join(pipeline.order)}"
            raise UsageError(f"--refresh {app}: no app is named {app!r}{hint}")
        forced |= {app, *pipeline.downstream(app)}
    return frozenset(forced)


def default_output(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.merged.ipynb")


def output_paths(notebook: Path, output: str | Path | None,
                 html: str | Path | bool | None) -> tuple[Path, Path | None]:
    """Where the merged notebook and the report go, each checked writable."""
    out = Path(output) if output else default_output(notebook)
    _writable(out, "-o" if output else "the merged notebook",
              "" if output else " (choose another place with -o)")
    html_path = None
    if html:
        html_path = Path(html) if not isinstance(html, bool) else out.with_suffix(".html")
        _writable(html_path, "--html")
        if html_path.resolve() == out.resolve():
            raise UsageError(f"--html {html_path}: the report would overwrite the merged notebook")
    return out, html_path


def _writable(given: Path, what: str, hint: str = "") -> None:
    """``given`` can be replaced by a new regular file (what :func:`.atomic.write_text` does)."""
    what = f"{what} {given}"
    path = Path(os.path.realpath(given))  # a link is written through, as atomic.write_text does
    if path.is_dir():
        raise UsageError(f"{what}: is a directory; give a file name")
    if path.exists():
        if not path.is_file():
            raise UsageError(f"{what}: not a regular file; give a file name")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{what}: the file is not writable{hint}")
    parent = path.parent
    missing = parent
    while not missing.exists():  # directories nbpipe will create
        if missing.parent == missing:
            break
        missing = missing.parent
    if not missing.is_dir():
        raise UsageError(f"{what}: {missing} is not a directory{hint}")
    if missing != parent:
        if not os.access(missing, os.W_OK | os.X_OK):
            raise UsageError(f"{what}: cannot create directory {parent}: {missing} is not writable{hint}")
        return
    try:
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".nbpipe-probe-")
    except OSError as exc:
        raise UsageError(f"{what}: cannot write in {parent}: {exc.strerror}{hint}") from None
    probe.close()


# ----------------------------------------------------------------- inputs and map:


def check_inputs(pipeline: Pipeline, cwd: Path) -> None:
    """A declared input that no app produces must exist and be readable before anything runs."""
    produced = {o for node in pipeline.apps.values() for o in node.spec.outputs}
    for name, node in pipeline.apps.items():
        for pattern in node.spec.inputs:
            if pattern in produced or any(
                    pattern in pipeline.graph.edges[p, name]["files"]
                    for p in pipeline.graph.predecessors(name)):
                continue
            matches = glob.glob(str(cwd / pattern))
            if not matches:
                raise GraphError(f"app {name!r} declares inputs:{pattern}, but no file matches it in "
                                 f"{cwd} and no app declares it in outputs:")
            for match in matches:
                _readable(match, name, pattern)


def _readable(path: str, app: str, pattern: str) -> None:
    if not os.path.exists(path):  # glob matches a link whose target is gone
        raise GraphError(f"app {app!r} declares inputs:{pattern}, but {path} is a symbolic link "
                         "to nothing")
    if not os.path.isfile(path):
        return  # a directory: the app lists it itself
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise GraphError(f"app {app!r} declares inputs:{pattern}, but {path} cannot be read: "
                         f"{exc.strerror}") from None


def check_map_parameters(pipeline: Pipeline, parameters: dict[str, Any]) -> None:
    """A map: over a parameter must get something to iterate over, known before the run."""
    defaults = {p.name: p.value for p in declared(pipeline.parsed) or () if p.known}
    values = {**defaults, **parameters}
    for app in pipeline.apps.values():
        spec = app.spec
        if spec.map is None or spec.map.iterable in app.reads or spec.map.iterable not in values:
            continue
        value = values[spec.map.iterable]
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            index = spec.origin.get("map", spec.cells[0])
            raise TagError(f"parameter {spec.map.iterable} = {_show(value)} is not a list of items to map over",
                           cell_index=index, cell_id=pipeline.parsed.cells[index].id,
                           tag=f"map:{spec.map.item}={spec.map.iterable}")
