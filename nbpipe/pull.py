"""``--pull``: the final value of every name the notebook defines, brought back to the driver.

A serial run leaves each name bound to what the last cell defining it made.
:func:`plan` says which app holds that value (the app of that cell; for a name
only the parameters or setup cells define, the last plain app, which ran them);
the compiled save step of that app ships those names by value into its own
file (``values/<app>/pull.pkl``, see :func:`nbpipe.runtime.leave`), leaving out
what cannot be pickled; :func:`collect` reads them back after the run, and
:func:`into_namespace` binds them in a kernel's namespace as the notebook's
own cells would have.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

from .execution.base import AppResult
from .graph import Pipeline
from .runtime import PULL, load_pulled, rebind
from .store import Store

__all__ = ["collect", "into_namespace", "plan"]

#: IPython's own history names (``_``, ``__``, ``___``, ``_7``): the calling kernel keeps its own
_HISTORY = re.compile(r"_{1,3}|_\d+")


def plan(pipeline: Pipeline) -> dict[str, list[str]]:
    """App -> the names whose final value it holds, sorted."""
    out: dict[str, list[str]] = {}
    for name, app in pipeline.last_definer.items():
        if _pullable(name):
            out.setdefault(app, []).append(name)
    plain = [a for a in pipeline.apps if pipeline.apps[a].spec.map is None]  # the notebook's order
    everywhere = (pipeline.parameter_names | pipeline.setup_names) - set(pipeline.last_definer)
    if plain:
        out.setdefault(plain[-1], []).extend(n for n in everywhere if _pullable(n))
    return {app: sorted(names) for app, names in out.items() if names}


def _pullable(name: str) -> bool:
    return name.isidentifier() and not _HISTORY.fullmatch(name)


def collect(plan: Mapping[str, list[str]], results: Mapping[str, AppResult],
            store: Store) -> tuple[dict[str, Any], list[str]]:
    """The pulled values (a ``map:`` app's as lists, in item order), and one warning per
    reason some were not: their app did not complete, or they could not be pickled."""
    values: dict[str, Any] = {}
    warnings: list[str] = []
    for app, names in plan.items():
        result = results.get(app)
        if result is None or not result.status.ok:
            status = result.status.value if result else "not run"
            warnings.append(f"not pulled: {', '.join(names)} (app {app!r} {status})")
            continue
        if result.items is None:
            got, skipped = load_pulled(store.value(app, PULL))
        else:
            got, skipped = _items(store, app, len(result.items), names)
        values.update(got)
        if skipped:
            why = "; ".join(f"{n}: {reason}" for n, reason in sorted(skipped.items()))
            warnings.append(f"not pulled from app {app!r}, cannot be pickled: {why}")
    return dict(sorted(values.items())), warnings


def _items(store: Store, app: str, count: int, names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    loaded = [load_pulled(store.value(app, PULL, i)) for i in range(count)]
    skipped = {n: reason for _, s in loaded for n, reason in s.items()}
    return {n: [got.get(n) for got, _ in loaded] for n in names if n not in skipped}, skipped


def into_namespace(values: Mapping[str, Any], namespace: dict[str, Any]) -> None:
    """Bind ``values`` in ``namespace``; functions and classes defined in the notebook
    look their globals up there, as they would had their cells run in it."""
    namespace.update(values)
    for value in values.values():
        rebind(value, namespace)


def warn(warnings: list[str]) -> None:
    for line in warnings:
        print(f"nbpipe: warning: {line}", file=sys.stderr, flush=True)
