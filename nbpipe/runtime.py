"""Runs inside a task's kernel: load the values an app reads, save what it ships.

A compiled task notebook calls :func:`enter` after its parameters and
:func:`leave` after its last cell. The driver passes the run context in the
``__nbpipe__`` parameter; without it (a task notebook run by hand) both are
no-ops, so compiled notebooks stay plain papermill notebooks.
"""

from __future__ import annotations

import functools
import io
import json
import mmap
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

from . import digest
from .errors import ShipError
from . import sharing
from .serializers import Unshippable, pickler_class, shared_roots
from .store import Store
from .state import generator_file, generator_state, is_generator, set_generator_state

__all__ = ["BUNDLE", "PULL", "bundle_path", "enter", "leave", "load_pulled", "rebind", "split"]

CONTEXT_NAME = "__nbpipe__"

#: The tag of the cells the compiler adds to a task notebook.
INTERNAL_TAG = "nbpipe-internal"
#: In ``metadata.nbpipe``: a hidden step only a Jupyter kernel needs (the numbering step).
KERNEL_ONLY = "kernel_only"
_context: dict[str, Any] = {}
#: id of an object that ships by reference -> ("setup", name) for a class or
#: function setup defines, ("app", producer, name) for a received value unchanged
_shared: dict[int, tuple[str, ...]] = {}


#: The file holding every name an app (or an item of a map app) ships, in one
#: pickle, so that names sharing objects in the producer share them in the consumer.
BUNDLE = "bundle"
#: The file holding, for ``--pull``, the final values of the names an app defines last
PULL = "pull"


def bundle_path(run_dir: str | Path, app: str, item: int | None = None) -> Path:
    return Store(run_dir).value(app, BUNDLE, item)


def enter(namespace: dict[str, Any], inputs: dict[str, str], item: str | None = None,
          shared: list[str] | tuple[str, ...] = ()) -> None:
    """Bind each name in ``inputs`` (name -> producing app) to the shipped value.

    A name from a ``map:`` app arrives as the list of its items' values, in
    the iterable's order. In an item of a ``map:`` app, ``item`` is the name
    bound to this task's element.
    """
    context = namespace.pop(CONTEXT_NAME, None)
    _context.clear()
    _shared.clear()
    if not context:
        return
    _context.update(context)
    # Classes and functions the setup cells define exist in every app: values
    # refer to them by name, so an instance of setup's class Box arrives as an
    # instance of the consuming app's own Box, not of a copy.
    for name in shared:
        value = namespace.get(name)
        if isinstance(value, (type, types.FunctionType)):
            _shared[id(value)] = ("setup", name)
    _context["namespace"] = namespace
    run_dir, maps = context["run_dir"], context.get("maps", {})
    # The scheduler re-wires a reader to an app that changed a name unpredicted.
    inputs = {**inputs, **context.get("sources", {})}
    _load_inputs(namespace, inputs, run_dir, maps, context.get("item"))
    if item is not None and context.get("item") is not None:
        namespace[item] = _load(Store(run_dir).element(context["app"], context["item"]))
    for name in inputs:
        _bind_globals(namespace.get(name), namespace)
        if name[1:].isdigit() and name in namespace and isinstance(namespace.get("Out"), dict):
            namespace["Out"][int(name[1:])] = namespace[name]  # a result of another app's cell
    if "matplotlib.figure" in sys.modules:
        _show_figures_inline()
    _context["digests"] = digest.digests(namespace, context.get("watch", ()))


def _load_inputs(namespace: dict[str, Any], inputs: dict[str, str], run_dir: str,
                 maps: dict[str, int], item: int | None) -> None:
    """Bind the names, loading each producer's bundle once; remember what came
    from which bundle, for the mutation check (:func:`_check_mutations`)."""
    bundles = _context["loader"] = _Bundles(run_dir, maps)
    for name, producer in inputs.items():
        if is_generator(name):
            _restore_generator(name, producer, run_dir, maps, item)
        elif producer in maps:
            namespace[name] = [bundles.get(producer, i).get(name) for i in range(maps[producer])]
        elif name in bundles.get(producer):
            # A name the producer deleted (``del x``) was not shipped: the reader
            # then fails with NameError, as it would in serial execution.
            namespace[name] = bundles.get(producer)[name]
    _context["bundles"] = {p: bundles.get(p) for p in set(inputs.values()) if p in bundles}
    _context["received"] = {n: (p, namespace[n]) for n, p in inputs.items() if p not in maps and n in namespace}


def _show_figures_inline() -> None:
    """A figure arrived: show it as an image, as the app that drew it would have.

    Drawing loaded the inline backend there, which makes the shell format
    figures as PNG; in a serial run that already happened.
    """
    import matplotlib

    if "inline" in matplotlib.get_backend():
        import matplotlib_inline.backend_inline  # noqa: F401  (configures the shell)


def _restore_generator(name: str, producer: str, run_dir: str, maps: dict[str, int],
                       item: int | None) -> None:
    """Set a global random generator to the state ``producer`` left it in (the
    last item's, for a ``map:`` producer); in a map item, mixed with the item."""
    stem = generator_file(name)
    store = Store(run_dir)
    paths = ([store.value(producer, stem, i) for i in range(maps[producer])]
             if producer in maps else [store.value(producer, stem)])
    shipped = [p for p in paths if p.exists()]
    if shipped:
        set_generator_state(name, _load(shipped[-1]), item)


def _ship_generator(name: str, consumers: list[str]) -> None:
    value = generator_state(name)
    if value is not None:
        run_dir, app, item = _context["run_dir"], _context["app"], _context.get("item")
        _ship(value, Store(run_dir).value(app, generator_file(name), item), name, app, consumers)


def _bind_globals(value: Any, namespace: dict[str, Any]) -> None:
    """Give functions and classes that came by value this app's globals.

    In serial execution every function of the notebook looks its globals up in
    the one namespace, when it is called. cloudpickle gives a function shipped
    by value a private copy of the globals it had when it was shipped instead.
    Rebinding restores the serial behaviour (late binding); names only that
    copy had stay available as a fallback.
    """
    if isinstance(value, types.FunctionType):
        rebound = _rebound(value, namespace)
        for name, bound in list(namespace.items()):
            if bound is value:
                namespace[name] = rebound
        return
    cls = value if isinstance(value, type) else type(value)
    if cls.__module__ != "__main__" or cls.__dict__.get("__nbpipe_bound__"):
        return
    for attr, member in list(vars(cls).items()):
        if isinstance(member, types.FunctionType):
            setattr(cls, attr, _rebound(member, namespace))
    try:
        setattr(cls, "__nbpipe_bound__", True)
    except (TypeError, AttributeError):
        pass


def rebind(value: Any, namespace: dict[str, Any]) -> None:
    """A function or class of the notebook that came by value: make it look its globals
    up in ``namespace`` (:func:`_bind_globals`); ``--pull`` uses it in the driver."""
    _bind_globals(value, namespace)


def _rebound(function: types.FunctionType, namespace: dict[str, Any]) -> types.FunctionType:
    if function.__module__ != "__main__" or function.__globals__ is namespace:
        return function
    for name, value in function.__globals__.items():
        if not name.startswith("__"):
            namespace.setdefault(name, value)
    rebound = types.FunctionType(function.__code__, namespace, function.__name__,
                                 function.__defaults__, function.__closure__)
    rebound.__kwdefaults__ = function.__kwdefaults__
    rebound.__dict__.update(function.__dict__)
    rebound.__qualname__, rebound.__doc__ = function.__qualname__, function.__doc__
    rebound.__module__, rebound.__annotations__ = function.__module__, function.__annotations__
    return rebound


def split(namespace: dict[str, Any], iterable: str, item: str) -> None:
    """The first step of a ``map:`` app: store each element of ``iterable`` apart."""
    if not _context:
        return
    app, run_dir = _context["app"], _context["run_dir"]
    if iterable not in namespace:
        raise NameError(f"map:{item}={iterable} of app {app!r}: {iterable!r} is not defined "
                        "by an app above or by the parameters")
    value = namespace[iterable]
    where = f"map:{item}={iterable} of app {app!r}"
    if not hasattr(value, "__iter__"):
        raise TypeError(f"{where}: {iterable} is {_type_name(value)}, which is not iterable; "
                        "give it a list, tuple, range or array of the items to map over")
    if isinstance(value, (str, bytes, dict)):
        raise TypeError(f"{where}: {iterable} is a {type(value).__name__}; map over a list of "
                        f"items instead (e.g. list({iterable}))")
    labels, store = [], Store(run_dir)
    for index, element in enumerate(value):
        _ship(element, store.element(app, index), f"{iterable}[{index}]", app, [app])
        labels.append(_label(element))
    path = store.split_count(app)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"count": len(labels), "labels": labels}))


class _Bundles:
    """The bundles an app loads, each once: names from one producer share objects."""

    def __init__(self, run_dir: str, maps: dict[str, int]) -> None:
        self.run_dir, self.maps = run_dir, maps
        self.loaded: dict[tuple[str, int | None], dict[str, Any]] = {}

    def get(self, producer: str, item: int | None = None) -> dict[str, Any]:
        key = (producer, item)
        if key not in self.loaded:
            path = bundle_path(self.run_dir, producer, item)
            self.loaded[key] = _load(path) if path.exists() else {}
        return self.loaded[key]

    def __contains__(self, producer: str) -> bool:
        return (producer, None) in self.loaded


def leave(namespace: dict[str, Any], ships: dict[str, list[str]], metrics: list[str] | None = None,
          pull: list[str] | tuple[str, ...] = ()) -> None:
    """Ship the names in ``ships`` (name -> consuming apps), in one bundle; record metrics;
    ``pull``: also ship these names' values for the driver (``--pull``, :func:`_ship_pulled`)."""
    if not _context:
        return
    run_dir, app, item = _context["run_dir"], _context["app"], _context.get("item")
    bundle, consumers = {}, {}
    for name, readers in ships.items():
        if is_generator(name):
            _ship_generator(name, readers)
        elif name in namespace:
            bundle[name], consumers[name] = namespace[name], readers
    changed = _check_mutations(namespace, run_dir, app, item)
    _refer_to_received(changed)
    if item is None:
        for name, value in changed.items():
            bundle.setdefault(name, value)
            consumers.setdefault(name, ["(apps reading it later)"])
    if bundle:
        _ship_bundle(bundle, bundle_path(run_dir, app, item), app, consumers)
    if pull:
        _ship_pulled({n: namespace[n] for n in pull if n in namespace}, Store(run_dir).value(app, PULL, item))
    if metrics:
        values = {m: _jsonable(namespace[m]) for m in metrics if m in namespace}
        path = Store(run_dir).metrics(app)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=1, sort_keys=True))


def _refer_to_received(changed: dict[str, Any]) -> None:
    """Ship the received values this app did not change as references to the
    bundles they came from, so that an app reading them from there too and
    from this app gets one object (``b = [a]`` here, ``a`` and ``b`` read below)."""
    digests = _context.get("digests", {})
    for name, (producer, value) in _context.get("received", {}).items():
        if digests.get(name) is not None and name not in changed:
            _shared.setdefault(id(value), ("app", producer, name))


def _check_mutations(namespace: dict[str, Any], run_dir: str, app: str, item: int | None) -> dict[str, Any]:
    """Report received names whose value changed although the graph did not
    predict it, and the names shipped with a changed one that share objects
    with it (``name@producer``); return them with their values, to ship."""
    mutated = digest.changed(namespace, _context.get("digests", {}))
    watched = set(_context.get("digests", {}))
    received = _context.get("received", {})
    # predicted to change (not watched) and still bound to what it received: changed in place
    changed = {n: received[n] for n in received
               if n in mutated or n not in watched and namespace.get(n) is received[n][1]}
    entries, values = list(mutated), {n: namespace[n] for n in mutated}
    # an item of a map: app changes its own copy: only unpredicted changes are its error
    bundles = _context.get("bundles", {}) if item is None else {}
    for name, (producer, value) in sharing.companions(changed, bundles, namespace).items():
        entries.append(name if received.get(name, (None,))[0] == producer else f"{name}@{producer}")
        values[name] = value
    digest.write_report(Store(run_dir).mutation_report(app, item), sorted(set(entries)))
    return values


def _ship_bundle(bundle: dict[str, Any], path: Path, app: str, consumers: dict[str, list[str]]) -> None:
    """Ship ``bundle`` as one pickle; when it cannot be, name the value that cannot."""
    try:
        data, buffers = _pickled(bundle, "", app, [])
    except ShipError:
        for name, value in bundle.items():
            _pickled(value, name, app, consumers.get(name, []))
        raise
    _store(path, data, buffers)


def _ship_pulled(values: dict[str, Any], path: Path) -> None:
    """Ship ``values`` for the driver, by value (it has none of the bundles a reference
    would name); a value that cannot be pickled is left out, with the reason, and the
    app goes on: the driver warns about it."""
    try:
        _store(path, *_pickle({"values": values, "skipped": {}}, by_reference=False))
        return
    except Exception:
        pass
    kept, skipped = {}, {}
    for name, value in values.items():
        try:
            _pickle(value, by_reference=False)
            kept[name] = value
        except Exception as exc:
            skipped[name] = (str(exc).strip() or f"{_type_name(value)}: {type(exc).__name__}").splitlines()[0]
    _store(path, *_pickle({"values": kept, "skipped": skipped}, by_reference=False))


def load_pulled(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """What :func:`_ship_pulled` wrote: the values, and the names left out with why."""
    if not path.exists():
        return {}, {}
    data = _load(path)
    return dict(data["values"]), dict(data["skipped"])


def _ship(value: Any, path: Path, name: str, app: str, consumers: list[str]) -> None:
    _store(path, *_pickled(value, name, app, consumers))


def _pickled(value: Any, name: str, app: str, consumers: list[str]) -> tuple[bytes, list[pickle.PickleBuffer]]:
    try:
        return _pickle(value)
    except Unshippable as exc:
        raise ShipError(variable=name, type_name=_type_name(value), producer=app,
                        consumers=list(consumers), reason=str(exc),
                        fix=exc.fix.format(readers=", ".join(consumers))) from None
    except Exception as exc:
        raise ShipError(variable=name, type_name=_type_name(value), producer=app,
                        consumers=list(consumers), reason=f"{type(exc).__name__}: {exc}") from None


def _pickle(value: Any, by_reference: bool = True) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """The pickle of ``value``; views of an array other views of which it holds
    ship as views (a second pass, only then). ``by_reference``: what :data:`_shared`
    lists goes as a reference to its bundle or setup name."""
    # Only a Pickler with a persistent_id is asked about every int and float.
    pickler_type = _shared_pickler() if _shared and by_reference else pickler_class()
    views: frozenset[int] = frozenset()
    while True:
        buffers: list[pickle.PickleBuffer] = []
        out = io.BytesIO()
        pickler = pickler_type(out, protocol=5, buffer_callback=buffers.append, views=views)
        pickler.dump(value)
        shared = shared_roots(pickler)
        if views or not shared:
            return out.getvalue(), buffers
        views = shared


def _label(element: Any, limit: int = 60) -> str:
    text = repr(element)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _store(path: Path, data: bytes, buffers: list[pickle.PickleBuffer]) -> None:
    """Write a pickle and its out-of-band buffers (numpy/pandas data) as raw files.

    Large arrays go to disk straight from their memory and come back
    memory-mapped (:func:`_read_buffer`): no copy through the pickle stream.
    """
    try:
        _write_pickle(path, data, buffers)
    except FileNotFoundError:  # made on first use: a split writes thousands of files into one
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_pickle(path, data, buffers)


def _write_pickle(path: Path, data: bytes, buffers: list[pickle.PickleBuffer]) -> None:
    for i, buffer in enumerate(buffers):
        # Each file is written beside and renamed: a cache entry may hold a hard link to the old one.
        part, written = path.with_suffix(f".buf{i}"), path.with_suffix(f".buf{i}.tmp")
        with open(written, "wb") as f:
            f.write(buffer.raw())
        os.replace(written, part)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(buffers).to_bytes(4, "little"))
        f.write(data)
    os.replace(tmp, path)  # the pickle appears last, complete


def _load(path: Path) -> Any:
    with open(path, "rb") as f:
        count = int.from_bytes(f.read(4), "little")
        data = f.read()
    buffers = [_read_buffer(path.with_suffix(f".buf{i}")) for i in range(count)]
    unpickler = pickle.Unpickler(io.BytesIO(data), buffers=buffers)
    unpickler.persistent_load = _shared_by_name  # type: ignore[assignment]
    return unpickler.load()


#: Buffers from this size on are memory-mapped instead of read.
MMAP_FROM = 1 << 20


def _read_buffer(part: Path) -> Any:
    """One out-of-band buffer: a private copy-on-write mapping of the file for
    large ones (pages come from the page cache as the app touches them; writing
    to the array never reaches the file), a plain read for small ones."""
    size = part.stat().st_size
    with open(part, "rb", buffering=0) as f:
        if size >= MMAP_FROM:
            mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
            digest.track_mapping(mapping)  # the mutation check need not read it while unwritten
            return mapping
        buffer = bytearray(size)
        view = memoryview(buffer)
        while view:
            n = f.readinto(view)
            if not n:
                raise EOFError(f"{part} is shorter than it was written")
            view = view[n:]
        return buffer


def _shared_by_name(pid: Any) -> Any:
    if pid[0] == "app" and "loader" in _context:
        _, producer, name = pid
        return _context["loader"].get(producer)[name]
    name = pid[-1]
    namespace = _context.get("namespace", {})
    if pid[0] != "setup" or name not in namespace:
        raise pickle.UnpicklingError(f"{name!r} from a setup cell is not defined in this app")
    return namespace[name]


@functools.lru_cache(maxsize=1)
def _shared_pickler() -> type:
    """The serializers' Pickler, writing what :data:`_shared` lists by reference."""

    class SharedPickler(pickler_class()):  # type: ignore[misc]
        def persistent_id(self, obj: Any) -> Any:
            return _shared.get(id(obj))

    return SharedPickler


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
