"""Sites: where apps run (SPEC §5).

A :class:`Site` is a validated definition from a sites file (or the built-in
``local`` site). It checks, before anything runs, that the apps ask only for
what it can give, and it builds a fresh executor for each run: the embedded
local pool, a Parsl DataFlowKernel of nbpipe's own, or a Dask client.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SiteError, UnsupportedTagError
from ..execution.base import Executor
from ..graph import Pipeline
from .load import PROVIDERS, discover

__all__ = ["Capacity", "Site", "get_site", "known_sites"]


@dataclass(frozen=True)
class Capacity:
    """What one executor of a site can give one app; None where it is not known."""

    cpus: int | None = None
    memory: int | None = None  # bytes
    gpus: int | None = None


@dataclass(frozen=True)
class Site:
    """A named place to run apps."""

    name: str
    engine: str  # "local", "parsl" or "dask"
    defined_in: str
    options: dict[str, Any] = field(default_factory=dict)
    base_dir: Path | None = None  # where relative paths in the definition start

    @property
    def describe(self) -> str:
        """One line for ``nbpipe sites``."""
        opts = self.options
        if self.engine == "parsl":
            if "config" in opts:
                return f"parsl, config {opts['config']}"
            providers = [opts.get("provider", "")] + [e.get("provider", "local")
                                                      for e in opts.get("executors", {}).values()]
            return "parsl, provider " + ", ".join(p for p in providers if p)
        if self.engine == "dask":
            return f"dask, scheduler {opts['address']}" if "address" in opts else "dask, local cluster"
        return f"local pool of {opts.get('workers', os.cpu_count())} worker processes"

    @property
    def start_timeout(self) -> float:
        """Seconds to wait for a first worker (a batch queue may be slow)."""
        return float(self.options.get("start_timeout", 300 if self.engine == "parsl" else 60))

    def run_root(self, notebook_dir: Path) -> Path | None:
        """Where run directories go: the system's temp dir for local runs; for
        parsl and dask sites a folder beside the notebook, which batch jobs on
        a shared filesystem can reach, unless ``run_dir`` says otherwise."""
        if "run_dir" in self.options:
            return (self.base_dir or notebook_dir) / os.path.expanduser(self.options["run_dir"])
        return None if self.engine == "local" else notebook_dir / ".nbpipe-runs"

    def capacities(self) -> dict[str, Capacity]:
        """Executor label -> what it can give one app. The first label is the default."""
        machine = Capacity(os.cpu_count() or 1, _total_memory(), 0)
        if self.engine == "local":
            return {"local": machine}
        if self.engine == "dask":
            return {"dask": Capacity()}
        if "config" in self.options:
            from ..execution.parsl import load_config

            return {label: Capacity() for label in load_config(self).labels}
        out = {}
        for label, table in _parsl_executors(self.options).items():
            provider = table.get("provider", "local")
            popts, eopts = table.get("provider_options", {}), table.get("executor_options", {})
            local = provider == "local"
            memory = popts.get("mem_per_node")
            accelerators = eopts.get("available_accelerators", popts.get("gpus_per_node"))
            out[label] = Capacity(
                cpus=popts.get("cores_per_node") or (machine.cpus if local else None),
                memory=int(memory * 2**30) if memory else (machine.memory if local else None),
                gpus=len(accelerators) if isinstance(accelerators, list) else
                accelerators if isinstance(accelerators, int) else (0 if local else None),
            )
        return out

    def executor(self, workers: int | None = None, *, engine: str = "ipython",
                 preload: tuple[str, ...] = (), run_dir: Path | None = None,
                 kernel_name: str | None = None, debug: bool = False) -> Executor:
        """A fresh executor for one run; ``shutdown`` releases everything it started."""
        if debug:
            from ..execution.sync import SyncExecutor

            return SyncExecutor()
        if self.engine == "parsl":
            from ..execution.parsl import ParslExecutor

            return ParslExecutor(self, run_dir=run_dir, engine=engine, preload=preload,
                                 kernel_name=kernel_name)
        if self.engine == "dask":
            from ..execution.dask import DaskExecutor

            return DaskExecutor(self, workers=workers, engine=engine, preload=preload,
                                kernel_name=kernel_name)
        from ..execution.local import LocalExecutor

        return LocalExecutor(workers or self.options.get("workers"), engine=engine, preload=preload,
                             batch=self.options.get("batch", True))

    def check(self, pipeline: Pipeline) -> None:
        """Refuse, before anything runs, an app that asks for what this site cannot give."""
        capacities = self.capacities()
        default = next(iter(capacities))
        for name in pipeline.order:
            spec = pipeline.apps[name].spec
            cells = pipeline.parsed.cells

            def refuse(key: str, tag: str, problem: str) -> UnsupportedTagError:
                index = spec.origin.get(key, spec.cells[0])
                return UnsupportedTagError(f"app {name!r}: {problem}", cell_index=index,
                                           cell_id=cells[index].id, tag=spec.tags.get(key, tag))

            label = spec.executor or default
            if label not in capacities:
                raise refuse("executor", f"executor:{spec.executor}",
                             f"site {self.name!r} has no executor labelled {spec.executor!r} "
                             f"(it has: {', '.join(capacities)})")
            cap, res = capacities[label], spec.resources
            where = f"site {self.name!r}" + (f" executor {label!r}" if len(capacities) > 1 else "")
            if res.gpus and cap.gpus is not None and res.gpus > cap.gpus:
                raise refuse("gpus", f"gpus:{res.gpus}", f"{where} has no GPUs to give" if not cap.gpus
                             else f"asks for {res.gpus} GPUs; {where} has {cap.gpus}")
            if res.cpus and cap.cpus is not None and res.cpus > cap.cpus:
                raise refuse("cpus", f"cpus:{res.cpus}", f"asks for {res.cpus} CPUs; {where} has {cap.cpus}")
            if res.memory and cap.memory is not None and res.memory > cap.memory:
                raise refuse("memory", "memory:", f"asks for {res.memory / 2**30:.1f} GiB of memory; "
                             f"{where} has {cap.memory / 2**30:.1f} GiB")


def _parsl_executors(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Executor label -> provider and options, for the provider form of a parsl site."""
    out = {}
    if "provider" in options:
        out[options.get("label", "htex")] = {k: options[k] for k in
                                            ("provider", "provider_options", "executor_options")
                                            if k in options}
    out.update(options.get("executors", {}))
    return out


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def known_sites(notebook: Path | None = None, sites_file: Path | None = None) -> dict[str, Site]:
    """Every site known here, by name; the first definition of a name wins."""
    sites: dict[str, Site] = {}
    for name, table, path in discover(notebook, sites_file):
        if name not in sites:
            sites[name] = Site(name, table["engine"], str(path), dict(table), path.parent)
    sites.setdefault("local", Site("local", "local", "built in"))
    return sites


def get_site(name: str, notebook: Path | None = None, sites_file: Path | None = None) -> Site:
    sites = known_sites(notebook, sites_file)
    if name in sites:
        return sites[name]
    close = difflib.get_close_matches(name, list(sites), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SiteError(f"unknown site {name!r} (known: {', '.join(sorted(sites))}){hint}")


__all__ += ["PROVIDERS"]
