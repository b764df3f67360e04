"""How values that cloudpickle cannot ship travel between apps.

A :class:`Serializer` names the classes it handles by qualified name
(``"xgboost.core.DMatrix"``), so nbpipe never imports a library to register
it; a value matches when its class or a base class has that name. ``dump``
turns the value into a small picklable recipe (bytes, a path, a tuple) and
``load`` turns the recipe back into a value in the consuming app. The
:class:`Pickler` applies the registry to every object it meets, so a
registered value inside a list, a dict or an instance ships too.

What never ships (generators, locks, threads, sockets) has entries too,
whose ``dump`` raises :class:`Unshippable` with the fix. The pickler also
pickles a class or function of a submodule that is importable but not yet
imported by reference, as it would had the module been imported
(``numpy.rec.recarray`` is the common case).

Register your own in a ``setup`` cell, before the producing app ships::

    import nbpipe.serializers

    nbpipe.serializers.register("mylib.Handle", dump=lambda h: h.path, load=mylib.Handle.open)
"""

from __future__ import annotations

import difflib
import functools
import importlib
import linecache
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Serializer", "Registry", "Unshippable", "register", "registry", "pickler_class", "shared_roots"]


@dataclass(frozen=True)
class Serializer:
    """Ships values of the classes named in ``types`` (and of their subclasses).

    ``dump(value)`` returns a picklable recipe; ``load(recipe)`` rebuilds the
    value in the consuming app. ``load`` ships with the value (by reference
    when it is a module's function, by value when a notebook defines it), so
    the consuming app needs no registration of its own.
    """

    types: tuple[str, ...]
    dump: Callable[[Any], Any]
    load: Callable[[Any], Any]


class Registry:
    """Serializers by the qualified class names they handle; the last registered wins."""

    def __init__(self, serializers: tuple[Serializer, ...] = ()) -> None:
        self._by_name: dict[str, Serializer] = {}
        self._by_type: dict[type, Serializer | None] = {}
        for serializer in serializers:
            self.add(serializer)

    def add(self, serializer: Serializer) -> None:
        for name in serializer.types:
            self._by_name[name] = serializer
        self._by_type.clear()

    def find(self, cls: type) -> Serializer | None:
        """The serializer for instances of ``cls``: the one of its nearest named class."""
        found = self._by_type.get(cls, _MISSING)
        if found is _MISSING:
            found = self._by_type[cls] = self._lookup(cls)
        return found  # type: ignore[return-value]

    def _lookup(self, cls: type) -> Serializer | None:
        for klass in getattr(cls, "__mro__", ()):
            found = self._by_name.get(f"{klass.__module__}.{klass.__qualname__}")
            if found is not None:
                return found
        return None


_MISSING = object()


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The registry the runtime ships with: the built-ins and what :func:`register` added."""
    return Registry(NEVER + BUILTINS)


def register(type_name: str | tuple[str, ...], dump: Callable[[Any], Any],
             load: Callable[[Any], Any]) -> None:
    """Ship values of ``type_name`` (``"module.QualName"``) as ``load(dump(value))``."""
    names = (type_name,) if isinstance(type_name, str) else tuple(type_name)
    registry().add(Serializer(tuple(dict.fromkeys(_canonical(n) for n in names)), dump, load))


def _canonical(name: str) -> str:
    """The name of the class where it is defined, when its module is imported.

    ``xgboost.DMatrix`` is the class ``xgboost.core.DMatrix``: a value matches
    by the name of its class, so a public alias alone would never match.
    """
    module, _, qualname = name.rpartition(".")
    if not module:
        raise ValueError(f"register({name!r}): name the class with its module, "
                         f"e.g. 'mylib.{name}' (see type(value).__module__)")
    owner = sys.modules.get(module)
    if owner is None or module == "__main__":
        return name  # not imported here: taken as written
    cls = getattr(owner, qualname, None)
    if isinstance(cls, type):
        return f"{cls.__module__}.{cls.__qualname__}"
    close = difflib.get_close_matches(qualname, [n for n in dir(owner) if not n.startswith("_")], n=1)
    hint = f"; did you mean {module}.{close[0]}?" if close else ""
    raise ValueError(f"register({name!r}): module {module} has no class {qualname}{hint}")


# --------------------------------------------------------------------- what never ships


class Unshippable(TypeError):
    """A value of a kind that no serializer can move; carries the fix."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason, self.fix = reason, fix


def _never(what: str, fix: str) -> Callable[[Any], Any]:
    """A dump that refuses: the registry entry of a kind that never ships."""

    def refuse(value: Any) -> Any:
        cls = type(value)
        name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        raise Unshippable(f"{name}: {what}", fix)

    return refuse


def _unreachable(recipe: Any) -> Any:
    raise AssertionError("a value that never ships was loaded")


_RECREATE = "recreate it in the app(s) {readers} that use it, or create it in a 'setup' cell"
#: Kinds that belong to the process that made them; {readers} becomes the consuming apps.
NEVER: tuple[Serializer, ...] = (
    Serializer(("builtins.generator", "builtins.async_generator", "builtins.coroutine"),
               _never("a generator runs once, in the process that created it, and cannot be pickled",
                      "convert it with list(...) in the app that produces it, or create the generator "
                      "in the app(s) {readers} that use it (recreate it there)"), _unreachable),
    Serializer(("_thread.lock", "_thread.RLock", "threading.Condition", "threading.Semaphore",
                "threading.Event"),
               _never("a lock belongs to the process that created it", _RECREATE), _unreachable),
    Serializer(("threading.Thread",),
               _never("a thread belongs to the process that created it", _RECREATE), _unreachable),
    Serializer(("socket.socket",),
               _never("an open socket belongs to the process that created it", _RECREATE), _unreachable),
)


# --------------------------------------------------------------------- the pickler


_tried: set[str] = set()


def _import_owner(obj: Any) -> None:
    """Import the module a class or function says it lives in, if it is not yet.

    cloudpickle copies a class by value when its module is missing from
    ``sys.modules``: a ``numpy.recarray`` made by ``arr.view(np.recarray)``
    before anything imported ``numpy.rec`` arrives as a copy of the class,
    whose ``rec['age']`` then fails. Importing the module first (only a
    submodule of a package already imported) lets it go by reference.
    """
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str) or module in sys.modules or module in _tried:
        return
    _tried.add(module)
    if module.partition(".")[0] in sys.modules:
        try:
            importlib.import_module(module)
        except Exception:  # not importable after all: cloudpickle copies it by value
            pass


def _cell_lines(filename: str) -> list[str] | None:
    """The lines of the notebook cell compiled as ``filename`` (IPython caches
    them with no modification time), or None for any other file."""
    entry = linecache.cache.get(filename)
    return list(entry[2]) if entry is not None and len(entry) == 4 and entry[1] is None else None


def _cell_code(code: types.CodeType, reduce: Callable[[Any], Any]) -> tuple[Any, ...]:
    """Ship the code of a function defined in a cell with its file name, its
    lines and its cell's number: a warning or traceback raised in it in another
    app then reads as in a serial run (cloudpickle names the file
    ``<dynamic-code>`` and the source line is lost)."""
    rebuild, args = reduce(code)  # cloudpickle's reduction
    shell = _shell()
    number = shell.compile._filename_map.get(code.co_filename) if shell is not None else None
    return _rebuilt_code, (rebuild, args, code.co_filename, _cell_lines(code.co_filename), number)


def _rebuilt_code(rebuild: Any, args: tuple[Any, ...], filename: str, lines: list[str],
                  number: int | None) -> types.CodeType:
    linecache.cache.setdefault(filename, (sum(map(len, lines)), None, lines, filename))
    shell = _shell()
    if shell is not None and number is not None:
        shell.compile._filename_map.setdefault(filename, number)
    return rebuild(*args).replace(co_filename=filename)  # type: ignore[no-any-return]


def _shell() -> Any:
    """The running IPython shell, if any (its compiler numbers the cells' files)."""
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if hasattr(getattr(shell, "compile", None), "_filename_map") else None


@functools.lru_cache(maxsize=1)
def pickler_class() -> type:
    """cloudpickle's Pickler, applying :func:`registry` to every object it meets."""
    import cloudpickle

    base = cloudpickle.Pickler.reducer_override

    class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
        """``views``: ids of the arrays whose views ship as views (:func:`shared_roots`);
        ``roots`` collects, for every array met, its root's id -> the arrays' ids."""

        def __init__(self, *args: Any, views: frozenset[int] = frozenset(), **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._find = registry().find
            self.views, self.roots = views, {}

        def reducer_override(self, obj: Any) -> Any:
            serializer = self._find(type(obj))
            if serializer is not None:
                return serializer.load, (serializer.dump(obj),)
            if isinstance(obj, types.CodeType) and _cell_lines(obj.co_filename) is not None:
                return _cell_code(obj, self.dispatch_table[types.CodeType])
            if isinstance(obj, (type, types.FunctionType)):
                _import_owner(obj)
            elif isinstance(obj, functools._lru_cache_wrapper) and _by_value(obj):
                return _reduce_cache(obj)
            elif _is_array(obj):
                return _reduce_array(self, obj)
            return base(self, obj)

    return Pickler


def shared_roots(pickler: Any) -> frozenset[int]:
    """The arrays two or more of the arrays a pickler met are views of (or are)."""
    return frozenset(root for root, arrays in pickler.roots.items() if len(arrays) > 1)


# --------------------------------------------------------------------- identity


def _is_array(obj: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(obj, numpy.ndarray)


def _reduce_array(pickler: Any, array: Any) -> Any:
    """A view of an array whose other views ship in the same pickle ships as a
    view of it (pickle copies a view otherwise), so writes through one name
    show through the other, as in serial execution."""
    root = array
    while _is_array(root.base):
        root = root.base
    pickler.roots.setdefault(id(root), set()).add(id(array))
    if id(root) in pickler.views and array is not root:
        recipe = _view_recipe(array, root)
        if recipe is not None:
            return _array_view, recipe
    return NotImplemented


def _view_recipe(array: Any, root: Any) -> tuple[Any, ...] | None:
    numpy = sys.modules["numpy"]
    if type(array) is not numpy.ndarray or array.dtype.hasobject or not root.flags.c_contiguous:
        return None
    bounds = getattr(numpy, "byte_bounds", None) or numpy.lib.array_utils.byte_bounds  # numpy 2 moved it
    (low, high), (start, end) = bounds(array), bounds(root)
    if low < start or high > end:
        return None
    offset = array.__array_interface__["data"][0] - start
    return root, offset, array.shape, array.strides, array.dtype, array.flags.writeable


def _array_view(root: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...],
                dtype: Any, writeable: bool) -> Any:
    numpy = sys.modules["numpy"]
    view = numpy.ndarray(shape, dtype, buffer=root, offset=offset, strides=strides)
    if not writeable:
        view.flags.writeable = False
    return view


def _by_value(obj: Any) -> bool:
    """Whether ``obj`` cannot be pickled by name (the notebook defines it)."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    return module is None or module.__name__ == "__main__" or \
        getattr(module, getattr(obj, "__qualname__", ""), None) is not obj


class _Deferred:
    """The function a shipped cache wraps, known once unpickling reaches it."""

    function: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)


def _reduce_cache(wrapper: Any) -> Any:
    """An ``functools.lru_cache``/``cache`` of a notebook function: a new cache
    around the function (its entries stay behind: the C wrapper hides them).
    The function arrives after the cache, so a recursive one finds it."""
    parameters = wrapper.cache_parameters()
    attributes = {k: v for k, v in vars(wrapper).items() if k != "cache_parameters"}
    return _empty_cache, (parameters["maxsize"], parameters["typed"]), attributes, None, None, _fill_cache


def _empty_cache(maxsize: int | None, typed: bool) -> Any:
    return functools.lru_cache(maxsize=maxsize, typed=typed)(_Deferred())


def _fill_cache(wrapper: Any, attributes: dict[str, Any]) -> None:
    wrapper.__wrapped__.function = attributes["__wrapped__"]
    vars(wrapper).update(attributes)


# --------------------------------------------------------------------- built-ins


def _via_file(save: Callable[[str], Any], suffix: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "value" + suffix)
        save(path)
        return Path(path).read_bytes()


def _from_file(data: bytes, suffix: str, open_: Callable[[str], Any]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "value" + suffix)
        Path(path).write_bytes(data)
        return open_(path)


def _where(path: str) -> tuple[str, str]:
    """A file's path as the app gave it, and absolute (for a reader in another directory)."""
    return path, path if "://" in path else os.path.abspath(path)


def _found(where: tuple[str, str]) -> str:
    """The path as given when it names the same file here, so ``f.filename`` reads the same."""
    given, absolute = where
    return given if "://" in given or os.path.abspath(given) == absolute else absolute


def _dump_dmatrix(matrix: Any) -> bytes:
    return _via_file(lambda path: matrix.save_binary(path, silent=True), ".buffer")


def _load_dmatrix(data: bytes) -> Any:
    import xgboost

    return _from_file(data, ".buffer", xgboost.DMatrix)


def _dump_h5py(obj: Any) -> tuple[tuple[str, str], str, bool]:
    """An open HDF5 file, group or dataset -> (file path, object name, is the file)."""
    import h5py

    file = obj.file
    if file.driver == "core":
        raise ValueError("an in-memory HDF5 file (driver='core') cannot be reopened by path; "
                         "write it to disk, or ship the arrays it holds (dataset[()])")
    if file.mode == "r+":
        file.flush()  # the consuming app reopens the file: it must see what was written
    return _where(file.filename), obj.name, isinstance(obj, h5py.File)


def _load_h5py(recipe: tuple[tuple[str, str], str, bool]) -> Any:
    import h5py

    where, name, is_file = recipe
    file = h5py.File(_found(where), "r")
    return file if is_file else file[name]


def _dump_uproot(obj: Any) -> tuple[tuple[str, str], str | None, bool]:
    """An open ROOT file, directory, tree or branch -> (file path, object path, is the file)."""
    import uproot

    if isinstance(obj, uproot.reading.ReadOnlyFile):
        return _where(obj.file_path), None, True
    if isinstance(obj, uproot.reading.ReadOnlyDirectory):
        return _where(obj.file.file_path), "/".join(obj.path) or None, False
    return _where(obj.file.file_path), obj.object_path, False


def _load_uproot(recipe: tuple[tuple[str, str], str | None, bool]) -> Any:
    import uproot

    where, object_path, is_file = recipe
    opened = uproot.open({_found(where): object_path})
    return opened.file if is_file else opened


def _dump_keras(model: Any) -> tuple[str, bytes]:
    """A Keras model -> (its Keras package, the bytes of its ``.keras`` file)."""
    return type(model).__module__.partition(".")[0], _via_file(model.save, ".keras")


def _load_keras(recipe: tuple[str, bytes]) -> Any:
    package, data = recipe
    return _from_file(data, ".keras", importlib.import_module(package).models.load_model)


BUILTINS: tuple[Serializer, ...] = (
    Serializer(("xgboost.core.DMatrix",), _dump_dmatrix, _load_dmatrix),
    Serializer(("h5py._hl.base.HLObject",), _dump_h5py, _load_h5py),
    Serializer(("uproot.reading.ReadOnlyFile", "uproot.reading.ReadOnlyDirectory",
                "uproot.behaviors.TBranch.HasBranches"), _dump_uproot, _load_uproot),
    Serializer(("keras.src.models.model.Model", "keras.src.engine.training.Model",
                "keras.engine.training.Model", "tf_keras.src.engine.training.Model"),
               _dump_keras, _load_keras),
)
