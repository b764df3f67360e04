"""Notebook -> cells and blocks: the tag grammar of SPEC §2 (pure).

:func:`parse_notebook` reads the tags of every cell and groups the code cells
into the ``parameters`` and ``setup`` blocks, the ``metrics`` cells and the
apps. Nothing here runs code or looks at the site; later stages take the
:class:`ParsedNotebook` value and never look at tags again.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nbformat

from .errors import NotebookError, TagError
from .shape import regular

__all__ = [
    "APP_NAME",
    "AppSpec",
    "CellInfo",
    "MapSpec",
    "ParsedNotebook",
    "Resources",
    "valid_image",
    "parse_notebook",
    "runs_nbpipe",
    "read_notebook",
]

APP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# An OCI image reference: registry/name:tag@digest. Deliberately no spaces and no
# shell metacharacters; the image is passed as one argv element, never to a shell.
#: An image reference, or a path to an image (``.sif`` file, directory); never an option.
_IMAGE = re.compile(r"[A-Za-z0-9/.][A-Za-z0-9._/:@+-]*\Z")
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\Z")
_WALLTIME = re.compile(r"([0-9]+):([0-5][0-9]):([0-5][0-9])\Z")
_COUNT = re.compile(r"[0-9]+\Z")
#: Sane maxima: beyond them a value is a typo, and would overflow a timer or a counter later.
MAX_SECONDS = 365 * 24 * 3600  # timeout:, walltime:
MAX_RETRIES = 100
MAX_COUNT = 1 << 20  # cpus:, gpus:
MAX_MEMORY = 1 << 60  # bytes
#: Notebook-level defaults in metadata.nbpipe, each read like its tag.
DEFAULT_KEYS = ("retries", "timeout", "container")
_NEEDS = {"retries": f"a whole number from 0 to {MAX_RETRIES}",
          "timeout": f"a number of seconds > 0 and at most {MAX_SECONDS} (365 days)",
          "container": "an image reference such as ghcr.io/org/image:tag"}

#: Role tags, with the Kale aliases that mean the same.
ROLE_ALIASES = {
    "parameters": "parameters",
    "pipeline-parameters": "parameters",
    "setup": "setup",
    "imports": "setup",
    "functions": "setup",
    "metrics": "metrics",
    "pipeline-metrics": "metrics",
    "skip": "skip",
}
#: Prefixed tags (``prefix:value``), alias -> canonical prefix.
PREFIX_ALIASES = {
    "app": "app",
    "step": "app",
    "block": "app",
    "after": "after",
    "prev": "after",
    "map": "map",
    "executor": "executor",
    "container": "container",
    "image": "container",
    "cpus": "cpus",
    "gpus": "gpus",
    "memory": "memory",
    "walltime": "walltime",
    "limit": "limit",
    "retries": "retries",
    "timeout": "timeout",
    "inputs": "inputs",
    "outputs": "outputs",
    "cache": "cache",
}
#: App names that name blocks, not apps.
RESERVED_NAMES = frozenset({"parameters", "setup", "metrics", "skip", "injected-parameters"})
METRICS_APP = "metrics"
#: A cell running the ``%nbpipe`` magic (``%nbpipe ...``, ``r = %nbpipe ...``, ``%%nbpipe``): in a
#: pipeline it would run the pipeline from inside itself, so it is skipped as if tagged ``skip``
_RUNS_NBPIPE = re.compile(r"(?m)^(?:[A-Za-z_][\w, ]*=\s*)?%%?nbpipe\b|run_(?:line|cell)_magic\(\s*['\"]nbpipe['\"]")


def runs_nbpipe(source: str) -> bool:
    """Whether a cell runs the ``%nbpipe`` magic (it is skipped as if tagged ``skip``)."""
    return bool(_RUNS_NBPIPE.search(source))


@dataclass(frozen=True)
class MapSpec:
    """``map:ITEM=ITERABLE``."""

    item: str
    iterable: str


@dataclass(frozen=True)
class Resources:
    """What an app asks of the site. ``memory`` in bytes, ``walltime`` in seconds."""

    cpus: int | None = None
    gpus: int | None = None
    memory: int | None = None
    walltime: int | None = None

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class AppSpec:
    """One app: its code cells (indices into the notebook) and its options."""

    name: str
    cells: tuple[int, ...]
    after: tuple[str, ...] = ()
    map: MapSpec | None = None
    executor: str | None = None
    container: str | None = None
    resources: Resources = field(default_factory=Resources)
    retries: int = 0
    timeout: float | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    cache: bool = True
    metrics: bool = False
    #: cell index at which each option was set, for error messages
    origin: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    #: each option's tag as the user wrote it (alias and all), for error messages
    tags: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CellInfo:
    """A cell of the source notebook and the block it belongs to."""

    index: int
    id: str
    cell_type: str
    source: str
    tags: tuple[str, ...]
    #: "parameters", "setup", "app", "metrics", "skip", or "" for markdown/raw cells
    role: str
    app: str | None = None


@dataclass(frozen=True)
class ParsedNotebook:
    """The result of :func:`parse_notebook`."""

    nb: Any  # nbformat.NotebookNode, a private copy of the source
    path: Path | None
    cells: tuple[CellInfo, ...]
    apps: dict[str, AppSpec]
    defaults: dict[str, Any]

    def cells_of(self, role: str) -> list[CellInfo]:
        return [c for c in self.cells if c.role == role]

    @property
    def kernel_name(self) -> str:
        return str(self.nb.metadata.get("kernelspec", {}).get("name", "python3"))

    @property
    def language(self) -> str:
        return str(self.nb.metadata.get("language_info", {}).get("name", "python"))


def valid_image(value: str) -> bool:
    """Whether ``value`` can name a container image (it can never be read as an option)."""
    return bool(_IMAGE.match(value)) and len(value) <= 255


def read_notebook(path: str | Path) -> Any:
    """Read and validate a notebook file, with a one-line error when it cannot be."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # nbformat warns of what shape.py mends or refuses (missing cell ids, a
            # schema error) and then reads on.
            warnings.simplefilter("ignore")
            nb = nbformat.read(path, as_version=4)
    except FileNotFoundError:
        raise NotebookError(f"{path}: no such notebook") from None
    except Exception as exc:  # nbformat raises several unrelated types
        _explain_unreadable(path)
        raise NotebookError(f"{path}: not a readable notebook: {_first_line(exc)}") from None
    return nb


def _explain_unreadable(path: Path) -> None:
    """Name the cell when nbformat could not read a v4 notebook whose JSON is fine."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(raw, dict) and raw.get("nbformat") == 4:
        try:
            regular(nbformat.from_dict(raw))
        except NotebookError as exc:
            raise NotebookError(f"{path}: {exc}") from None
        except Exception:  # nothing more precise to say than nbformat did
            return


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def parse_notebook(nb: Any, path: str | Path | None = None) -> ParsedNotebook:
    """Parse the tags of ``nb`` into blocks and apps (SPEC §2).

    Raises :class:`TagError` naming the cell and the tag for a known tag with a
    bad value. Tags nbpipe does not know are left alone.
    """
    nb = regular(nbformat.from_dict(copy.deepcopy(nb)))
    defaults = _defaults(nb.metadata.get("nbpipe") or {})

    cells: list[CellInfo] = []
    app_cells: dict[str, list[int]] = {}
    app_opts: dict[str, dict[str, Any]] = {}
    current: str | None = None  # the app or "setup" block that untagged cells join

    for index, cell in enumerate(nb.cells):
        tags = tuple(cell.metadata.get("tags", []))
        if cell.cell_type != "code":
            cells.append(CellInfo(index, cell.id, cell.cell_type, cell.source, tags, ""))
            continue
        parsed = _parse_cell_tags(index, cell.id, tags)
        if runs_nbpipe(cell.source):
            parsed = {"role": "skip", "app": None}
        role = parsed.pop("role")
        app = parsed.pop("app")
        where = (index, cell.id)

        if role in ("parameters", "metrics", "skip"):
            if role == "skip":
                cells.append(CellInfo(index, cell.id, "code", cell.source, tags, "skip"))
                continue
            if parsed:
                tag = parsed[next(iter(parsed))][1]
                raise TagError(f"option tags apply to apps, not to a {role} cell", cell_index=index,
                               cell_id=cell.id, tag=tag)
            if role == "metrics":
                app_cells.setdefault(METRICS_APP, []).append(index)
                app_opts.setdefault(METRICS_APP, {})
                cells.append(CellInfo(index, cell.id, "code", cell.source, tags, "metrics", METRICS_APP))
            else:
                cells.append(CellInfo(index, cell.id, "code", cell.source, tags, "parameters"))
            continue

        if role == "setup":
            current = "setup"
        elif app is not None:
            current = app
        elif current is None:
            current = "main"
        if current == "setup":
            if parsed:
                tag = parsed[next(iter(parsed))][1]
                raise TagError("option tags apply to apps, not to setup cells", cell_index=index,
                               cell_id=cell.id, tag=tag)
            cells.append(CellInfo(index, cell.id, "code", cell.source, tags, "setup"))
            continue

        app_cells.setdefault(current, []).append(index)
        opts = app_opts.setdefault(current, {})
        for key, (value, tag) in parsed.items():
            _merge_option(opts, key, value, tag, where)
        cells.append(CellInfo(index, cell.id, "code", cell.source, tags, "app", current))

    apps = {name: _build_app(name, app_cells[name], app_opts[name], defaults) for name in app_cells}
    if METRICS_APP in apps:
        apps[METRICS_APP] = replace(apps[METRICS_APP], metrics=True)
    return ParsedNotebook(nb, Path(path) if path else None, tuple(cells), apps, defaults)


def _defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``metadata.nbpipe``'s defaults, each checked as its tag would be."""
    out = dict(options)
    for key in DEFAULT_KEYS:
        if key not in options:
            continue
        value = options[key]

        def fail(problem: str, tag: str, value: Any = value, key: str = key) -> NotebookError:
            return NotebookError(f"metadata.nbpipe.{key} = {json.dumps(value)}: {problem}; "
                                 "fix it in the notebook's metadata")

        kinds = (str,) if key == "container" else (int, float, str)
        if isinstance(value, bool) or not isinstance(value, kinds) or not str(value).strip():
            raise fail(f"needs {_NEEDS[key]}", "")
        out[key] = _parse_option(key, str(value).strip(), fail, "")
    return out


def _parse_cell_tags(index: int, cell_id: str, tags: tuple[str, ...]) -> dict[str, Any]:
    """Parse one code cell's tags into ``role``, ``app`` and options.

    Options map a canonical key to ``(value, tag)``; list-valued options
    (after, inputs, outputs) accumulate.
    """
    out: dict[str, Any] = {"role": None, "app": None}
    lists: dict[str, list[Any]] = {}

    def fail(problem: str, tag: str) -> TagError:
        return TagError(problem, cell_index=index, cell_id=cell_id, tag=tag)

    role_tag = None
    for tag in tags:
        role = ROLE_ALIASES.get(tag)
        if role is not None:
            if out["role"] and out["role"] != role:
                raise fail(f"a cell cannot be both {out['role']!r} and {role!r}", tag)
            out["role"], role_tag = role, tag
            continue
        prefix, sep, value = tag.partition(":")
        key = PREFIX_ALIASES.get(prefix)
        if not sep or key is None:
            continue  # not ours (remove-input, hide-input, ...): leave it alone
        value = value.strip()
        if key == "app":
            if not APP_NAME.match(value):
                raise fail("an app name must match [A-Za-z_][A-Za-z0-9_-]*", tag)
            if value in RESERVED_NAMES:
                raise fail(f"{value!r} is reserved for the {value} block; choose another app name", tag)
            if out["app"] and out["app"] != value:
                raise fail(f"this cell already starts app {out['app']!r}; a cell belongs to one app", tag)
            out["app"] = value
            continue
        parsed_value = _parse_option(key, value, fail, tag)
        if key == "limit":
            key = "gpus"
        if key in ("after", "inputs", "outputs"):
            lists.setdefault(key, []).append((parsed_value, tag))
            continue
        if key in out and out[key][0] != parsed_value:
            raise fail(f"conflicts with {out[key][1]!r} on the same cell", tag)
        out[key] = (parsed_value, tag)

    if out["app"] and out["role"] in ("parameters", "setup", "metrics", "skip"):
        raise fail(f"a cell cannot be both an app and {out['role']!r}", role_tag or "")
    if out["role"] == "skip":
        return {"role": "skip", "app": None}
    for key, items in lists.items():
        out[key] = (tuple(v for v, _ in items), items[0][1])
    return out


def _parse_option(key: str, value: str, fail: Any, tag: str) -> Any:
    if not value:
        raise fail("needs a value after the colon", tag)
    if key == "after":
        if not APP_NAME.match(value):
            raise fail("after: needs an app name matching [A-Za-z_][A-Za-z0-9_-]*", tag)
        return value
    if key == "map":
        item, eq, iterable = value.partition("=")
        if not eq or not _IDENT.match(item.strip()) or not _IDENT.match(iterable.strip()):
            raise fail("map: needs ITEM=ITERABLE, two Python names (e.g. map:chunk=chunks)", tag)
        return MapSpec(item.strip(), iterable.strip())
    if key == "executor":
        if not _LABEL.match(value):
            raise fail("executor: needs a label of letters, digits, '_', '.', '-'", tag)
        return value
    if key == "container":
        if not valid_image(value):
            raise fail("container: needs an image reference such as ghcr.io/org/image:tag, or the path "
                       "of an image (letters, digits and . _ / : @ + - only, not starting with '-')", tag)
        return value
    if key in ("cpus", "gpus", "retries"):
        most = MAX_RETRIES if key == "retries" else MAX_COUNT
        if not _COUNT.match(value) or int(value) > most:
            raise fail(f"{key}: needs a whole number from 0 to {most}, got {value!r}", tag)
        return int(value)
    if key == "limit":
        resource, _, count = value.rpartition(":")
        if resource != "nvidia.com/gpu" or not _COUNT.match(count) or int(count) > MAX_COUNT:
            raise fail("the only limit: nbpipe knows is limit:nvidia.com/gpu:N", tag)
        return int(count)
    if key == "memory":
        return _parse_size(value, fail, tag)
    if key == "walltime":
        m = _WALLTIME.match(value)
        seconds = sum(int(g) * k for g, k in zip(m.groups(), (3600, 60, 1))) if m else -1
        if not 0 < seconds <= MAX_SECONDS:
            raise fail(f"walltime: needs HH:MM:SS, more than 0 and at most "
                       f"{MAX_SECONDS // 3600}:00:00 (365 days), got {value!r}", tag)
        return seconds
    if key == "timeout":
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= MAX_SECONDS:  # also refuses nan and inf
            raise fail(f"timeout: needs a number of seconds > 0 and at most {MAX_SECONDS} "
                       f"(365 days), got {value!r}", tag)
        return seconds
    if key in ("inputs", "outputs"):
        if "\0" in value:
            raise fail("not a valid path", tag)
        return value
    if key == "cache":
        if value not in ("off", "disabled", "on", "enabled"):
            raise fail(f"cache: takes 'off' or 'on' (Kale: 'disabled', 'enabled'), got {value!r}", tag)
        return value in ("on", "enabled")
    raise AssertionError(key)  # pragma: no cover - every key of PREFIX_ALIASES is handled


def _parse_size(value: str, fail: Any, tag: str) -> int:
    m = _SIZE.match(value)
    if not m:
        raise fail(f"memory: needs a size such as 4GB or 512MiB, got {value!r}", tag)
    number, unit = float(m.group(1)), (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
    if number * scale > MAX_MEMORY:
        raise fail(f"memory: at most 1 EiB, got {value!r}", tag)
    return int(number * scale)


def _merge_option(opts: dict[str, Any], key: str, value: Any, tag: str, where: tuple[int, str]) -> None:
    """Add one option to an app, refusing two different values for it."""
    if key in ("after", "inputs", "outputs"):
        opts.setdefault(key, ([], where[0]))[0].extend(value)
        for item in value:
            opts.setdefault(f"{key}={item}", (item, where[0]))
        return
    if key in opts and opts[key][0] != value:
        raise TagError(f"app already has {key}={opts[key][0]!r} from cell {opts[key][1]}",
                       cell_index=where[0], cell_id=where[1], tag=tag)
    opts.setdefault(key, (value, where[0], tag))


def _build_app(name: str, cells: list[int], opts: dict[str, Any], defaults: dict[str, Any]) -> AppSpec:
    def get(key: str, default: Any = None) -> Any:
        return opts[key][0] if key in opts else default

    retries = get("retries", defaults.get("retries", 0))
    timeout = get("timeout", defaults.get("timeout"))
    return AppSpec(
        name=name,
        cells=tuple(cells),
        after=tuple(dict.fromkeys(get("after", []))),
        map=get("map"),
        executor=get("executor"),
        container=get("container", defaults.get("container")),
        resources=Resources(get("cpus"), get("gpus"), get("memory"), get("walltime")),
        retries=int(retries),
        timeout=float(timeout) if timeout is not None else None,
        inputs=tuple(dict.fromkeys(get("inputs", []))),
        outputs=tuple(dict.fromkeys(get("outputs", []))),
        cache=get("cache", True),
        origin={k: v[1] for k, v in opts.items()},
        tags={k: v[2] for k, v in opts.items() if len(v) > 2},
    )
