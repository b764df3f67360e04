"""Cache keys and provenance records.

An app's key hashes what determines its outputs:

- its compiled task notebook: its cells, the setup cells, the statements of
  the parameters cell that the parameters it reads depend on, the settings
  earlier cells carry in (:mod:`.state`), the names it ships and the metrics
  it records;
- the values given for the parameters it reads (only those; the carried state
  it replays counts);
- the options that change what it computes (``map:``, ``inputs:``,
  ``outputs:``, ``container:``), not where or how often it runs;
- the contents of its declared ``inputs:`` (the files under a directory) and of
  the modules its code may load from the notebook's directory or a folder the
  notebook adds to ``sys.path``, and what those load;
- the Python version and the versions of the packages it imports;
- the keys of the apps it depends on (a Merkle chain), computed when it
  becomes ready.

A ``map:`` item's key puts the element it runs in place of the app that made
the iterable, so items whose element did not change keep their key when the
iterable grows (a map over a parameter its cells read keeps the parameter). Nothing about the site enters a key.
"""

from __future__ import annotations

import ast
import functools
import glob
import hashlib
import json
import os
import platform
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from . import syntax
from .graph import Pipeline
from .names import transformed_source
from .state import carried_reads
from .store import file_sha256
from .version import __version__

__all__ = ["Keys", "file_digest", "input_digests", "provenance"]

_PACKAGES = ("nbpipe", "papermill", "nbclient", "nbformat", "nbconvert", "ipykernel", "ipython",
             "jupyter_client", "cloudpickle", "networkx", "pyzmq", "parsl", "dask", "distributed")
#: Options that change what an app computes; the others say where and how often it runs.
_KEYED_OPTIONS = ("map", "inputs", "outputs", "container")


def file_digest(path: str | Path) -> str:
    return "sha256:" + file_sha256(path)


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=repr).encode())
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


class Keys:
    """The keys of one run's apps, items and splits.

    The part of a key known before the run is computed once per app; the
    rest (input files, upstream keys, a map element) when it is asked for.
    """

    def __init__(self, pipeline: Pipeline, compiled: dict[str, Any], parameters: dict[str, Any],
                 cwd: Path, images: dict[str, str] | None = None) -> None:
        self.pipeline, self.compiled, self.parameters, self.cwd = pipeline, compiled, parameters, cwd
        self.images = images or {}  # app -> the digest of the container image it runs in
        self._static: dict[tuple[str, bool, bool], str] = {}
        self._folders = added_paths([c.source for c in pipeline.parsed.cells if c.cell_type == "code"], cwd)

    def app(self, app: str, upstream: list[str]) -> str:
        """The key of ``app``, given the keys of the apps it depends on."""
        return _sha("app", self.static(app), sorted(upstream), self.inputs(app))

    def split(self, app: str, upstream: list[str]) -> str:
        return _sha("split", self.static(app, split=True), sorted(upstream), self.inputs(app))

    def item(self, app: str, upstream: list[str], element: str) -> str:
        """The key of one item of a map app: ``upstream`` without the app that made
        the iterable (:meth:`item_upstream`), and the digest of the element."""
        return _sha("item", self.static(app, iterable=False), sorted(upstream), self.inputs(app), element)

    def item_upstream(self, app: str, preds: tuple[str, ...]) -> list[str]:
        """The apps an item depends on other than through the element it runs: the
        app that made the iterable drops out when its items read nothing else of it."""
        node = self.pipeline.apps[app]
        iterable = node.spec.map.iterable  # type: ignore[union-attr]
        producer = node.reads.get(iterable)
        graph = self.pipeline.graph
        if producer is None or iterable in (node.item_reads or {}):
            return list(preds)
        edge = graph.edges[producer, app] if graph.has_edge(producer, app) else {}
        only_iterable = edge.get("kinds") == {"data"} and edge.get("names") == {iterable}
        return [p for p in preds if not (p == producer and only_iterable)]

    def static(self, app: str, split: bool = False, iterable: bool = True) -> str:
        """What is known before the run, hashed once. For items (``iterable`` False), a map
        over a parameter its cells do not read leaves the parameter out (the element stands
        for it); one its cells read stays in."""
        slot = (app, split, iterable)
        if slot not in self._static:
            self._static[slot] = self._static_key(app, split, iterable)
        return self._static[slot]

    def warm(self) -> threading.Thread:
        """Hash every app's static part in a thread, while the site's workers start, so that
        a chain of apps does not wait for it at each step (it took 6 ms an app)."""
        def hash_all() -> None:
            try:
                for app in self.pipeline.order:
                    mapped = self.pipeline.apps[app].spec.map is not None
                    for split, iterable in ((False, True), (True, True), (False, False)) if mapped \
                            else ((False, True),):
                        self.static(app, split, iterable)
            except Exception:
                pass  # the scheduler's thread hashes it again, and reports what fails

        thread = threading.Thread(target=hash_all, name="nbpipe-keys", daemon=True)
        thread.start()
        return thread

    def _static_key(self, app: str, split: bool, iterable: bool) -> str:
        node = self.pipeline.apps[app]
        used = set(node.parameters_read) | (carried_reads(self.pipeline, app) & self.pipeline.parameter_names)
        mapped = node.spec.map.iterable if node.spec.map else None
        if iterable and mapped in self.pipeline.parameter_names:
            used.add(mapped)  # read by the map: tag, not by a cell; an item's element stands for it
        options = self.pipeline.to_json_options(app)
        return _sha(
            __version__, sys.version, self.pipeline.parsed.kernel_name, app,
            _notebook_code(self.compiled[f"{app}.split" if split else app], self._parameter_cells(),
                           frozenset(used)),
            {p: json.dumps(self.parameters[p], default=repr)  # a mapping's key order shows
             for p in sorted(used) if p in self.parameters},
            {k: options[k] for k in _KEYED_OPTIONS if k in options},
            self.images.get(app),
            _versions(node.modules, self.cwd, self._folders),
        )

    def _parameter_cells(self) -> frozenset[int]:
        return frozenset(c.index for c in self.pipeline.parsed.cells_of("parameters"))

    def inputs(self, app: str) -> dict[str, str]:
        """Path -> digest of the files its ``inputs:`` match now (an app above may have written them)."""
        return {os.path.relpath(path, self.cwd): _digest_or_reason(path)
                for pattern in self.pipeline.apps[app].spec.inputs for path in matched_files(self.cwd, pattern)}


def matched_files(cwd: str | Path, pattern: str) -> list[str]:
    """The files an ``inputs:`` pattern names: those it matches (``**``: at any depth), and those
    under the directories it matches."""
    out: list[str] = []
    for path in sorted(glob.glob(str(Path(cwd) / pattern), recursive=True)):
        if Path(path).is_dir():
            out += sorted(str(p) for p in Path(path).rglob("*") if p.is_file())
        elif Path(path).is_file():
            out.append(path)
    return out


def _notebook_code(nb: Any, parameter_cells: frozenset[int] = frozenset(),
                   reads: frozenset[str] = frozenset()) -> list[Any]:
    """The code a task notebook runs, with the execution count each cell runs with.

    Of the parameters cells, only the statements that give the parameters the
    app ``reads`` (and what those use): a default the app does not read does
    not re-run it. Without the sources of the earlier cells the numbering step
    fills ``In`` with, so an edit above does not re-run every app below it (an
    app showing ``In[n]`` is not re-run for it)."""
    history = repr(nb.metadata.get("nbpipe_task", {}).get("history"))
    cells = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        meta = cell.get("metadata", {}).get("nbpipe", {})
        source = cell.source.replace(history, "<history>")
        if meta.get("source", {}).get("index") in parameter_cells:
            source = _statements_for(source, reads)
        cells.append((source, meta.get("count")))
    return cells


def _modules_in(source: str | bytes) -> tuple[str, ...]:
    try:
        return syntax.loaded_modules(ast.parse(source))
    except syntax.UNPARSABLE:
        return ()


def _statements_for(source: str, reads: frozenset[str]) -> str:
    """The statements of a parameters cell that the names ``reads`` depend on: an
    assignment to a name nothing needed reads is left out, anything else is kept."""
    try:
        body = ast.parse(source).body
    except syntax.UNPARSABLE:
        return source  # magics: keep all of it
    needed, kept = set(reads), []
    for statement in reversed(body):
        targets = _assigned(statement)
        if targets is not None and not targets & needed:
            continue
        kept.append(ast.unparse(statement))
        needed |= {n.id for n in ast.walk(statement) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return "\n".join(reversed(kept))


def _assigned(statement: ast.stmt) -> set[str] | None:
    """The names a plain ``NAME = value`` (``NAME: type = value``) assigns; None for anything else."""
    if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
        return {t.id for t in statement.targets}  # type: ignore[attr-defined]
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
        return {statement.target.id}
    return None


def _versions(modules: tuple[str, ...], cwd: Path, folders: tuple[Path, ...] = ()) -> dict[str, str]:
    """Distribution -> version for the packages ``modules`` come from; for a module of
    the notebook's directory (or of a folder the notebook adds to ``sys.path``), its
    files' digest, and the same for what its files load."""
    found: dict[str, str] = {}
    done: set[str] = set()
    todo = sorted({m.split(".")[0] for m in modules} - set(sys.stdlib_module_names))
    while todo:
        top = todo.pop()
        if top in done:
            continue
        done.add(top)
        local = _local_files(top, cwd, folders)
        if local:
            folder, files = local
            found[f"{os.path.relpath(folder, cwd)}/{top}"] = _sha(*(_digest_or_reason(str(p)) for p in files))
            todo += sorted({m.split(".")[0] for p in files for m in _imports_of(p)} - set(sys.stdlib_module_names))
            continue
        for dist in _owners(top):
            found[dist] = _version(dist)
    return found


def _local_files(top: str, cwd: Path, folders: tuple[Path, ...]) -> tuple[Path, list[Path]] | None:
    """The folder module ``top`` is found in (the notebook's, then those it adds to ``sys.path``) and its files."""
    for folder in (cwd, *folders):
        package = sorted((folder / top).rglob("*.py")) if (folder / top).is_dir() else []
        local = [p for p in (folder / f"{top}.py", *package) if p.is_file()]
        if local:
            return folder, local
    return None


def _imports_of(path: Path) -> tuple[str, ...]:
    """The modules a module file of the notebook's directory may load (none if unreadable)."""
    try:
        return _modules_in(path.read_bytes())
    except OSError:
        return ()


def added_paths(sources: list[str], cwd: Path) -> tuple[Path, ...]:
    """The folders ``sys.path.insert(i, "lib")`` / ``sys.path.append("../src")`` calls with a
    literal path add, relative to ``cwd``: their modules are the notebook's own."""
    found: list[Path] = []
    for source in sources:
        try:
            tree = ast.parse(transformed_source(source))
        except syntax.UNPARSABLE:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("insert", "append") and ast.unparse(node.func.value) == "sys.path"
                    and node.args and isinstance(node.args[-1], ast.Constant)
                    and isinstance(node.args[-1].value, str)):
                folder = (cwd / os.path.expanduser(node.args[-1].value)).resolve()
                if folder not in found and folder != cwd.resolve():
                    found.append(folder)
    return tuple(found)


def _owners(top: str) -> list[str]:
    """The distributions that install module ``top``: the one of the same name when there is
    one (a quick lookup), else from every distribution's file list (slow, so only then)."""
    if _version(top) != "?":
        return [top]
    return _distributions().get(top, [])


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@functools.lru_cache(maxsize=None)
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def input_digests(pipeline: Pipeline, cwd: str | Path) -> dict[str, dict[str, str]]:
    """App -> {path: digest} of the files its ``inputs:`` match; each file hashed once."""
    digests: dict[str, str] = {}
    out: dict[str, dict[str, str]] = {}
    for name, node in pipeline.apps.items():
        files = out[name] = {}
        for pattern in node.spec.inputs:
            for path in matched_files(cwd, pattern):
                if path not in digests:
                    digests[path] = _digest_or_reason(path)
                files[path] = digests[path]
    return out


def _digest_or_reason(path: str) -> str:
    """Inputs were checked readable before the run; an app may still have removed one."""
    try:
        return file_digest(path)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def provenance(notebook: Path | None, inputs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Python and package versions, platform, and the hashes of the inputs."""
    packages = {}
    for dist in _PACKAGES:
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    hashes = {}
    if notebook is not None:
        hashes[notebook.name] = _digest_or_reason(str(notebook))
    for files in inputs.values():
        hashes.update(files)
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
        "inputs": hashes,
    }
