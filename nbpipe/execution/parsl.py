"""The Parsl engine: apps run on the executors of a Parsl configuration.

nbpipe owns its DataFlowKernel for the run (no global ``parsl.load``), builds
a fresh Config every run, turns usage tracking off, asks for the first block
at once, and always cleans up: ``shutdown`` stops the interchange and cancels
the batch jobs, on success, on error and on Ctrl-C.

The interchange starts in a session of its own (Parsl's local provider
already starts each block in a process group of its own), so the terminal's
Ctrl-C reaches only nbpipe, which then stops them in order. Parsl's cleanup
is bounded: if it has not returned within ``CLEANUP_SECONDS`` (or at once
after a second Ctrl-C), the interchange is killed and the blocks cancelled
directly through their provider (``kill`` of the block's process group,
``scancel``...).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import stop
from ..errors import SiteError, WorkerError
from ..store import Store
from .base import TaskResult, TaskSpec
from .dispatch import Dispatch
from .remote import await_results, probe, run_batch, worker_fix

__all__ = ["ParslExecutor", "load_config", "site_workers"]

#: How long Parsl's own cleanup may take before nbpipe kills what it started.
CLEANUP_SECONDS = 20.0

#: How often Parsl's scaling strategy runs: the first block waits for its first run.
STRATEGY_SECONDS = 0.1

#: Runs a command in a new session: ``python -c SETSID command...``.
SETSID = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"


@dataclass
class LoadedConfig:
    config: Any  # parsl.config.Config
    labels: list[str]


def load_config(site: Any, run_dir: Path | None = None) -> LoadedConfig:
    """A fresh parsl Config for ``site``: from ``config = "file.py:function"`` or built
    from ``provider``/``provider_options``/``executor_options``."""
    if importlib.util.find_spec("parsl") is None:
        raise SiteError(f"site {site.name!r} uses Parsl, which is not installed here: "
                        "pip install 'nbpipe[parsl]'")
    options = site.options
    if "config" in options:
        config = _config_from_file(site)
    else:
        config = _config_from_provider(site)
    config.usage_tracking = 0
    # Parsl asks for the init_blocks at the strategy's first poll after the executors
    # are added, one period after the DataFlowKernel starts; its polls are cheap.
    config.strategy_period = STRATEGY_SECONDS
    # Parsl's own log set-up adds a file handler to the "parsl" logger that it
    # never closes; ParslExecutor attaches one for the run and removes it after.
    config.initialize_logging = False
    if run_dir is not None:
        config.run_dir = str(Store(run_dir).parsl_logs)
    for executor in config.executors:
        command = getattr(executor, "interchange_launch_cmd", None)
        if command and list(command[:2]) != [sys.executable, "-c"]:
            executor.interchange_launch_cmd = [sys.executable, "-c", SETSID, *command]
    return LoadedConfig(config, [executor.label for executor in config.executors])


def _config_from_file(site: Any) -> Any:
    from parsl.config import Config

    file, _, function = site.options["config"].rpartition(":")
    path = (site.base_dir or Path.cwd()) / file
    if not path.exists():
        raise SiteError(f"{site.defined_in}: sites.{site.name}.config: no file {path}")
    spec = importlib.util.spec_from_file_location(f"nbpipe_site_{site.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SiteError(f"{path}: cannot load the site's config: {type(exc).__name__}: {exc}") from None
    make = getattr(module, function, None)
    if make is None:
        raise SiteError(f"{path}: has no {function!r} for sites.{site.name}.config")
    config = make() if callable(make) else make
    if not isinstance(config, Config):
        raise SiteError(f"{path}: {function} gave {type(config).__name__}, not a parsl Config")
    return config


def _config_from_provider(site: Any) -> Any:
    import parsl.providers
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    from ..sites import PROVIDERS, _parsl_executors

    executors = []
    for label, table in _parsl_executors(site.options).items():
        provider_class = getattr(parsl.providers, PROVIDERS[table.get("provider", "local")])
        provider_options = dict(table.get("provider_options", {}))
        if isinstance(provider_options.get("launcher"), str):
            provider_options["launcher"] = _launcher(site, provider_options["launcher"])
        try:
            provider = provider_class(**provider_options)
            executor = HighThroughputExecutor(label=label, provider=provider,
                                              **table.get("executor_options", {}))
        except TypeError as exc:
            raise SiteError(f"{site.defined_in}: sites.{site.name}: {exc}") from None
        executors.append(executor)
    return Config(executors=executors)


def site_workers(config: Any) -> int:
    """How many tasks the site runs at once at most: each executor's workers per node
    times the nodes of its largest allocation (``max_blocks`` x ``nodes_per_block``).

    A HighThroughputExecutor without ``max_workers_per_node`` (nor a provider's
    ``cores_per_node``) starts one worker per ``cores_per_worker`` of its node;
    its node is taken to be like this machine.
    """
    total = 0
    for executor in config.executors:
        provider = getattr(executor, "provider", None)
        nodes = max(getattr(provider, "max_blocks", 1), getattr(provider, "init_blocks", 1)) * \
            getattr(provider, "nodes_per_block", 1) if provider is not None else 1
        total += nodes * _workers_per_node(executor)
    return max(1, total)


def _workers_per_node(executor: Any) -> int:
    if getattr(executor, "max_workers_per_node", None) == float("inf") and \
            getattr(getattr(executor, "provider", None), "cores_per_node", None) is None:
        return max(1, int((os.cpu_count() or 1) / getattr(executor, "cores_per_worker", 1.0)))
    per_node = getattr(executor, "workers_per_node", None) or getattr(executor, "max_threads", None) or 1
    return max(1, int(per_node))


#: Parsl launchers by the name a site file uses (``launcher = "srun"``).
LAUNCHERS = {"single": "SingleNodeLauncher", "srun": "SrunLauncher", "mpiexec": "MpiExecLauncher",
             "mpirun": "MpiRunLauncher", "aprun": "AprunLauncher", "simple": "SimpleLauncher",
             "gnuparallel": "GnuParallelLauncher", "jsrun": "JsrunLauncher"}


def _launcher(site: Any, name: str) -> Any:
    import parsl.launchers

    if name not in LAUNCHERS:
        raise SiteError(f"{site.defined_in}: sites.{site.name}.provider_options.launcher: unknown "
                        f"launcher {name!r}; one of {', '.join(sorted(LAUNCHERS))}")
    return getattr(parsl.launchers, LAUNCHERS[name])()


class ParslExecutor:
    """Tasks as Parsl apps on a DataFlowKernel that this executor owns."""

    def __init__(self, site: Any, *, run_dir: Path | None, engine: str = "ipython",
                 preload: tuple[str, ...] = (), kernel_name: str | None = None) -> None:
        from parsl.app.python import PythonApp
        from parsl.dataflow.dflow import DataFlowKernel

        self.site, self.engine, self.preload = site, engine, list(preload)
        loaded = load_config(site, run_dir)
        self.labels = loaded.labels
        # HTEX starts interchange.py and process_worker_pool.py from PATH: make it
        # this environment's, which jobs inherit too.
        bindir = str(Path(sys.executable).parent)
        self._path = os.environ.get("PATH")
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        self._log = None
        if run_dir is not None:
            logs = Store(run_dir).parsl_logs
            logs.mkdir(parents=True, exist_ok=True)
            self._log = logging.FileHandler(logs / "parsl.log")
            self._log.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            self._log.setLevel(logging.DEBUG)
            logging.getLogger("parsl").addHandler(self._log)
        self.dfk = DataFlowKernel(loaded.config)
        self._closed = False
        self._running: dict[Future[TaskResult], TaskSpec] = {}  # to wait for when stopped
        self._lock = threading.Lock()
        self.workers = site_workers(loaded.config)
        self._apps = {label: PythonApp(run_batch, data_flow_kernel=self.dfk, executors=[label])
                      for label in self.labels}
        self._dispatch = Dispatch(self._send, lambda: self.workers, site.name,
                                  batch=site.options.get("batch", True) and engine == "ipython")
        # The probe goes now; the first app follows it without waiting for its answer
        # (see ready), and the worker that runs it starts preloading its zygote.
        self._started = time.time()
        try:
            self._probe = PythonApp(probe, data_flow_kernel=self.dfk, executors=[self.labels[0]])(
                kernel_name if engine == "kernel" else None, engine, self.preload)
        except BaseException:
            self.shutdown()
            raise
        self.first_worker: dict[str, Any] | None = None

    def ready(self) -> None:
        """Wait for the probe: a worker exists and has what nbpipe needs, within the
        site's ``start_timeout``; else raise WorkerError (the caller shuts down)."""
        if self.first_worker is None:
            self.first_worker = self._wait_for_worker(self.site.start_timeout)

    def _wait_for_worker(self, timeout: float) -> dict[str, Any]:
        executor = self.dfk.executors[self.labels[0]]
        while not wait([self._probe], timeout=0.2).done:
            if getattr(executor, "bad_state_is_set", False):
                raise WorkerError(f"site {self.site.name!r}: Parsl could not start workers: "
                                  f"{executor.executor_exception}")
            if time.time() - self._started > timeout:
                raise WorkerError(f"site {self.site.name!r}: no worker started within {timeout:g} s "
                                  "(start_timeout); check the batch queue and the provider options")
        try:
            report = self._probe.result()
        except Exception as exc:
            raise WorkerError(worker_fix(self.site.name, exc)) from None
        if report["missing"] or report["kernel"]:
            lacks = report["missing"] + ([f"the Jupyter kernel {report['kernel']!r}"] if report["kernel"] else [])
            raise WorkerError(f"site {self.site.name!r}: the workers (python {report['python']} on "
                              f"{report['host']}) lack {', '.join(lacks)}; install them in the workers' "
                              "environment or activate this one with worker_init")
        report["seconds"] = time.time() - self._started
        return report

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        future = self._dispatch.submit(spec)
        with self._lock:
            self._running[future] = spec
        future.add_done_callback(self._settled)
        return future

    def _send(self, specs: list[TaskSpec]) -> Any:
        """One Parsl task for ``specs`` (one task, or a batch of items of one app and executor)."""
        label = specs[0].executor or self.labels[0]
        return self._apps[label]([spec.to_dict() for spec in specs], self.preload)

    def _settled(self, future: Future[TaskResult]) -> None:
        with self._lock:
            self._running.pop(future, None)

    def shutdown(self, *, cancel: bool = False) -> None:
        # cleanup() stops the interchange and cancels the blocks (batch jobs); once.
        if self._closed:
            return
        self._closed = True
        never = set(self._dispatch.close())  # items held back for a batch: never sent
        with self._lock:
            stopped = [spec for future, spec in self._running.items() if future not in never]
        try:
            self._cleanup()
            if cancel:
                await_results(stopped)
        finally:
            if self._path is not None:
                os.environ["PATH"] = self._path
            if self._log is not None:
                logging.getLogger("parsl").removeHandler(self._log)
                self._log.close()

    def _cleanup(self) -> None:
        """Parsl's cleanup, bounded: it can block for ever on an interchange that died."""
        done = threading.Event()
        failure: list[BaseException] = []

        def clean() -> None:
            try:
                self.dfk.cleanup()
            except BaseException as exc:  # reported in this thread, not lost in that one
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=clean, name="nbpipe-parsl-cleanup", daemon=True).start()
        if not stop.wait(done, CLEANUP_SECONDS):
            logging.getLogger("nbpipe").warning("Parsl's cleanup did not finish; killing its processes")
            for executor in self.dfk.executors.values():
                _force_stop(executor)
        elif failure:
            raise failure[0]


def _force_stop(executor: Any) -> None:
    """Kill an executor's interchange and cancel its blocks through the provider."""
    proc = getattr(executor, "interchange_proc", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
    provider = getattr(executor, "provider", None)
    jobs = list(getattr(executor, "blocks_to_job_id", {}).values())
    if provider is not None and jobs:
        try:
            provider.cancel(jobs)
        except Exception as exc:
            logging.getLogger("nbpipe").warning("could not cancel Parsl blocks %s: %s", jobs, exc)
