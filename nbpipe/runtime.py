"""Runs inside a task's kernel: load the values an app reads, save what it ships.

A compiled task notebook calls :func:`enter` after its parameters and
:func:`leave` after its last cell. The driver passes the run context in the
``__nbpipe__`` parameter; without it (a task notebook run by hand) both are
no-ops, so compiled notebooks stay plain papermill notebooks.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from .errors import ShipError

__all__ = ["enter", "leave", "value_path"]

CONTEXT_NAME = "__nbpipe__"
_context: dict[str, Any] = {}


def value_path(run_dir: str | Path, app: str, name: str) -> Path:
    """Where app ``app`` ships its value of ``name`` inside a run directory."""
    return Path(run_dir) / "values" / app / f"{name}.pkl"


def enter(namespace: dict[str, Any], inputs: dict[str, str]) -> None:
    """Bind each name in ``inputs`` (name -> producing app) to the shipped value."""
    context = namespace.pop(CONTEXT_NAME, None)
    _context.clear()
    if not context:
        return
    _context.update(context)
    for name, producer in inputs.items():
        path = value_path(context["run_dir"], producer, name)
        # A name the producer deleted (``del x``) was not shipped: the reader
        # then fails with NameError, as it would in serial execution.
        if path.exists():
            namespace[name] = _load(path)


def leave(namespace: dict[str, Any], ships: dict[str, list[str]], metrics: list[str] | None = None) -> None:
    """Ship each name in ``ships`` (name -> consuming apps); record metrics."""
    if not _context:
        return
    import cloudpickle

    run_dir, app = _context["run_dir"], _context["app"]
    for name, consumers in ships.items():
        if name not in namespace:
            continue
        value = namespace[name]
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            raise ShipError(variable=name, type_name=_type_name(value), producer=app,
                            consumers=list(consumers), reason=f"{type(exc).__name__}: {exc}") from None
        _store(value_path(run_dir, app, name), data, buffers)
    if metrics:
        values = {m: _jsonable(namespace[m]) for m in metrics if m in namespace}
        path = Path(run_dir) / "metrics.json"
        path.write_text(json.dumps(values, indent=1, sort_keys=True))


def _store(path: Path, data: bytes, buffers: list[pickle.PickleBuffer]) -> None:
    """Write a pickle and its out-of-band buffers (numpy/pandas data) as raw files.

    Large arrays go to disk straight from their memory and come back with one
    read into a fresh buffer: no copy through the pickle stream.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for i, buffer in enumerate(buffers):
        with open(path.with_suffix(f".buf{i}"), "wb") as f:
            f.write(buffer.raw())
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(buffers).to_bytes(4, "little"))
        f.write(data)
    os.replace(tmp, path)  # the pickle appears last, complete


def _load(path: Path) -> Any:
    with open(path, "rb") as f:
        count = int.from_bytes(f.read(4), "little")
        data = f.read()
    buffers = []
    for i in range(count):
        part = path.with_suffix(f".buf{i}")
        buffer = bytearray(part.stat().st_size)
        with open(part, "rb", buffering=0) as f:
            view = memoryview(buffer)
            while view:
                n = f.readinto(view)
                if not n:
                    raise EOFError(f"{part} is shorter than it was written")
                view = view[n:]
        buffers.append(buffer)
    return pickle.loads(data, buffers=buffers)


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    try:
        item = value.item()  # numpy scalars
        if isinstance(item, (bool, int, float)):
            return item
    except Exception:
        pass
    return repr(value)
