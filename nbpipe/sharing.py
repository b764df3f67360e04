"""Which shipped names share objects: a change through one is a change of the others.

An app ships every name it ships in one pickle (a bundle), so names that share
objects in the producer (``fig`` and ``ax``, an array and its view, ``a = b =
[]``) share them in every app that loads the bundle. An app that changes one
of them (``ax.plot(...)``, ``x_sub[0] = 1``, ``a.append(1)``) thereby changes
the others, even ones it does not read: :func:`companions` finds them, the app
ships them and reports them, and the mutation check re-wires their readers to
it (:mod:`nbpipe.mutations`), as for any value changed unpredicted.

Two values share when one is reachable from the other (``ax`` from ``fig``, a
list from both its names), walking what pickle would save, or when one is an
array whose memory the other reaches (an array and its views); classes, functions
and modules are not walked (they stand for themselves). Objects both merely
refer to do not count (a library's constant, copied once for the bundle): a
change deep inside a commonly referenced mutable object (two models holding
one config dict) is not seen this way, only by the digest of a name the app
received.
"""

from __future__ import annotations

import enum
import functools
import sys
import types
from typing import Any

from .serializers import pickler_class

__all__ = ["companions"]

#: Objects that are what they are by identity: not walked, never shared state.
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           enum.Enum, functools.partial)
_CONTAINERS = (list, dict, set, bytearray)


def companions(changed: dict[str, tuple[str, Any]], bundles: dict[str, dict[str, Any]],
               namespace: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The names of ``bundles`` (producer -> name -> value) that share objects with
    a ``changed`` name (name -> (producer, value as received)) of the same bundle.

    A name the app bound to another object is left out: the app redefined it.
    """
    out = {}
    for producer, bundle in bundles.items():
        mine = [value for name, (source, value) in changed.items() if source == producer]
        others = {name: value for name, value in bundle.items()
                  if name not in changed and namespace.get(name, value) is value}
        if not mine or not others:
            continue
        touched = _Reach(mine)
        for name, value in others.items():
            if touched.shares(_Reach([value])):
                out[name] = (producer, value)
    return out


class _Reach:
    """What a change through ``values`` can reach: the mutable objects
    reachable from them, and the memory of the writable arrays among them."""

    def __init__(self, values: list[Any]) -> None:
        walker = _walker()(_Sink(), protocol=5, buffer_callback=lambda buffer: None)
        try:
            walker.dump(values)
        except Exception:  # what cannot be walked further shares nothing more
            pass
        # the objects stay referenced: no id is reused while this lives
        self.tops, self.objects, self.memory = values, walker.seen, walker.memory

    def shares(self, other: _Reach) -> bool:
        """One holds the other's value itself, or the memory of the other's array.

        Objects both merely refer to (a library's constants, which unpickling
        copied once for the whole bundle) do not count: neither changes them.
        """
        return self._holds(other) or other._holds(self)

    def _holds(self, other: _Reach) -> bool:
        return any(id(top) in self.objects or id(_root(top)) in self.memory for top in other.tops)


def _root(obj: Any) -> Any:
    """The array whose memory the array ``obj`` uses; None for what is no array."""
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(obj, numpy.ndarray):
        return None
    while isinstance(obj.base, numpy.ndarray):
        obj = obj.base
    return obj


class _Sink:
    def write(self, data: Any) -> int:
        return len(data)


@functools.lru_cache(maxsize=1)
def _walker() -> type:
    class Walker(pickler_class()):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seen: dict[int, Any] = {}
            self.memory: dict[int, Any] = {}

        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, _OPAQUE):
                return "opaque"  # stands for itself: not walked
            root = _root(obj)
            if root is not None:
                self.memory[id(root)] = root
            elif isinstance(obj, _CONTAINERS) or hasattr(obj, "__dict__"):
                self.seen[id(obj)] = obj
            return None

    return Walker
