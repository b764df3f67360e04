"""Between the tasks of a batch: put the process back as the fork left it.

A forked child runs one task and exits, so nothing an app changes reaches the
next. A batch (:mod:`.batch`) runs several items of a map app one after
another in one child; before each item after the first, :meth:`Fresh.restore`
undoes what the previous one changed in the process, as far as Python lets it:
the working directory, ``sys.path``, ``sys.argv``, the environment, warning
filters and the warnings already shown, IPython's loaded extensions, event
callbacks, input transformers and inline-figure settings, matplotlib's settings, backend and open
figures, numpy's print and error options, pandas' options, the random
generators (reseeded, as after a fork), and the modules the zygote forgot on
purpose because importing them prints. The shell's namespace is reset by the
engine (``ipython.py``), as for any second task in a process.

What it cannot undo: a thread an item started, a changed attribute of a
preloaded module, a C library's global state. A notebook whose items depend
on such state runs one item per process with the site option ``batch = false``.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import warnings
from typing import Any

__all__ = ["Fresh"]


class Fresh:
    """A snapshot of the process state a task may change, taken before the first task."""

    def __init__(self, forgotten: frozenset[str] = frozenset()) -> None:
        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.argv = list(sys.argv)
        self.environ = dict(os.environ)
        self.filters = list(warnings.filters)
        self.forgotten = forgotten
        self.modules = set(sys.modules)
        self.shell = _shell_state()
        self.matplotlib = _matplotlib_state()
        self.numpy = _numpy_state()
        self.pandas = _pandas_state()

    def restore(self) -> None:
        os.chdir(self.cwd)
        sys.path[:] = self.path
        sys.argv[:] = self.argv
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        warnings.filters[:] = self.filters
        # A new filters version empties every "already shown" registry (each
        # module's, and the "once" action's) when it is next consulted.
        warnings._filters_mutated()  # type: ignore[attr-defined]
        for name in self.forgotten & set(sys.modules) - self.modules:
            del sys.modules[name]  # importing it prints: the next item shows that, as a fork would
        _restore_shell(self.shell)
        _restore_matplotlib(self.matplotlib)
        _restore_numpy(self.numpy)
        _restore_pandas(self.pandas)
        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()


def _shell_state() -> dict[str, Any] | None:
    from IPython.core.interactiveshell import InteractiveShell

    if not InteractiveShell.initialized():
        return None
    shell = InteractiveShell.instance()
    state: dict[str, Any] = {"loaded": set(shell.extension_manager.loaded),
                             "callbacks": {name: list(found) for name, found in shell.events.callbacks.items()},
                             "transforms": [(found, list(found)) for found in _transform_lists(shell)]}
    inline = sys.modules.get("matplotlib_inline.config")
    if inline is not None and inline.InlineBackend.initialized():
        state["inline"] = dict(inline.InlineBackend.instance().trait_values())
    return state


def _restore_shell(state: dict[str, Any] | None) -> None:
    if state is None:
        return
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.extension_manager.loaded.intersection_update(state["loaded"])
    for name, found in state["callbacks"].items():
        shell.events.callbacks[name][:] = found
    for found, kept in state["transforms"]:
        found[:] = kept
    inline = sys.modules.get("matplotlib_inline.config")
    if "inline" in state and inline is not None:
        backend = inline.InlineBackend.instance()
        for name, value in state["inline"].items():
            if getattr(backend, name) != value:
                setattr(backend, name, value)


def _transform_lists(shell: Any) -> list[list[Any]]:
    """The input transformers a cell's code (or an extension) may register."""
    manager = shell.input_transformer_manager
    return [manager.cleanup_transforms, manager.line_transforms, manager.token_transformers,
            shell.input_transformers_post]


def _matplotlib_state() -> dict[str, Any] | None:
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return None
    return dict(dict.items(mpl.rcParams))  # RcParams' own lookup of "backend" would resolve it


def _restore_matplotlib(rc: dict[str, Any] | None) -> None:
    mpl = sys.modules.get("matplotlib")
    if mpl is None:
        return
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    if rc is None:
        return
    backend, now = rc.get("backend"), dict.get(mpl.rcParams, "backend")
    if pyplot is not None and isinstance(backend, str) and isinstance(now, str) and now != backend:
        pyplot.switch_backend(backend)
    dict.update(mpl.rcParams, rc)  # the values were valid when taken: no need to validate again


def _numpy_state() -> tuple[dict[str, Any], dict[str, Any]] | None:
    np = sys.modules.get("numpy")
    if np is None:
        return None
    return np.get_printoptions(), np.geterr()


def _restore_numpy(state: tuple[dict[str, Any], dict[str, Any]] | None) -> None:
    np = sys.modules.get("numpy")
    if np is None or state is None:
        return
    printing, errors = state
    if np.get_printoptions() != printing:
        np.set_printoptions(**printing)
    np.seterr(**errors)


def _pandas_state() -> dict[str, Any] | None:
    config = sys.modules.get("pandas._config.config")
    return None if config is None else copy.deepcopy(config._global_config)


def _restore_pandas(options: dict[str, Any] | None) -> None:
    config = sys.modules.get("pandas._config.config")
    if config is None or options is None or config._global_config == options:
        return
    _replace(config._global_config, options)


def _replace(target: dict[str, Any], source: dict[str, Any]) -> None:
    """Put ``source``'s values into the nested dict ``target`` in place (pandas keeps references to it)."""
    for key in list(target):
        if key not in source:
            del target[key]
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _replace(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
