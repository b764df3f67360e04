"""Sites: where apps run (SPEC §5).

A :class:`Site` knows its engine and turns into an executor for one run. Only
the built-in ``local`` site exists in this version; lookups of any other name
fail with a did-you-mean.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import SiteError, UnsupportedTagError
from ..execution.base import Executor
from ..graph import Pipeline

__all__ = ["Site", "get_site", "known_sites"]


@dataclass(frozen=True)
class Site:
    """A named place to run apps."""

    name: str
    engine: str
    defined_in: str
    options: dict[str, Any] = field(default_factory=dict)
    executors: tuple[str, ...] = ("local",)

    def executor(self, workers: int | None = None, *, engine: str = "ipython",
                 preload: tuple[str, ...] = (), debug: bool = False) -> Executor:
        if debug:
            from ..execution.sync import SyncExecutor

            return SyncExecutor()
        from ..execution.local import LocalExecutor

        return LocalExecutor(workers, engine=engine, preload=preload)

    def check(self, pipeline: Pipeline) -> None:
        """Refuse, before anything runs, an app that asks for what this site cannot give."""
        cores = os.cpu_count() or 1
        memory = _total_memory()
        for name in pipeline.order:
            spec = pipeline.apps[name].spec
            cells = pipeline.parsed.cells

            def refuse(key: str, tag: str, problem: str) -> UnsupportedTagError:
                index = spec.origin.get(key, spec.cells[0])
                return UnsupportedTagError(f"app {name!r}: {problem}", cell_index=index,
                                           cell_id=cells[index].id, tag=spec.tags.get(key, tag))

            if spec.container is not None:
                raise refuse("container", f"container:{spec.container}",
                             f"site {self.name!r} has no container runtime configured, "
                             "so this app cannot run inside an image")
            if spec.executor is not None and spec.executor not in self.executors:
                raise refuse("executor", f"executor:{spec.executor}",
                             f"site {self.name!r} has no executor labelled {spec.executor!r} "
                             f"(it has: {', '.join(self.executors)})")
            res = spec.resources
            if res.gpus:
                raise refuse("gpus", f"gpus:{res.gpus}", f"site {self.name!r} has no GPUs to give")
            if res.cpus and res.cpus > cores:
                raise refuse("cpus", f"cpus:{res.cpus}",
                             f"asks for {res.cpus} CPUs; site {self.name!r} has {cores}")
            if res.memory and memory and res.memory > memory:
                raise refuse("memory", "memory:", f"asks for {res.memory / 2**30:.1f} GiB of memory; "
                             f"site {self.name!r} has {memory / 2**30:.1f} GiB")


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def known_sites() -> dict[str, Site]:
    """Every site known here, by name."""
    return {"local": Site("local", "local", "built in")}


def get_site(name: str) -> Site:
    sites = known_sites()
    if name in sites:
        return sites[name]
    close = difflib.get_close_matches(name, list(sites), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SiteError(f"unknown site {name!r} (known: {', '.join(sorted(sites))}){hint}")
