"""Cache keys and provenance records.

An app's cache key hashes what determines its outputs: its own cells, the
setup and parameters cells, the parameter values, its options, the files it
reads, the keys of the apps it depends on and the interpreter state earlier
cells carry into it (:mod:`.state`). Equal keys mean the app would
compute the same thing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .graph import Pipeline
from .state import prelude_for

__all__ = ["cache_keys", "file_digest", "input_digests", "provenance"]

_PACKAGES = ("nbpipe", "papermill", "nbclient", "nbformat", "nbconvert", "ipykernel", "ipython",
             "jupyter_client", "cloudpickle", "networkx", "pyzmq", "parsl", "dask", "distributed")


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def input_digests(pipeline: Pipeline, cwd: str | Path) -> dict[str, dict[str, str]]:
    """App -> {path: digest} of the files its ``inputs:`` match; each file hashed once."""
    digests: dict[str, str] = {}
    out: dict[str, dict[str, str]] = {}
    for name, node in pipeline.apps.items():
        files = out[name] = {}
        for pattern in node.spec.inputs:
            for path in sorted(glob.glob(str(Path(cwd) / pattern))):
                if Path(path).is_file():
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


def cache_keys(pipeline: Pipeline, parameters: dict[str, Any],
               inputs: dict[str, dict[str, str]]) -> dict[str, str]:
    """The cache key of every app, upstream keys folded in (``inputs``: from
    :func:`input_digests`)."""
    parsed = pipeline.parsed
    common = hashlib.sha256()
    for role in ("parameters", "setup"):
        for info in parsed.cells_of(role):
            common.update(info.source.encode())
    common.update(json.dumps(parameters, sort_keys=True, default=repr).encode())
    keys: dict[str, str] = {}
    for name in pipeline.order:
        app = pipeline.apps[name]
        h = common.copy()
        h.update(name.encode())
        for index in app.spec.cells:
            h.update(parsed.cells[index].source.encode())
        h.update(json.dumps(pipeline.to_json_options(name), sort_keys=True).encode())
        h.update((prelude_for(pipeline, name) or "").encode())  # settings earlier cells carry in
        for digest in inputs.get(name, {}).values():
            h.update(digest.encode())
        for pred in sorted(pipeline.graph.predecessors(name)):
            h.update(keys[pred].encode())
        keys[name] = "sha256:" + h.hexdigest()
    return keys


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
