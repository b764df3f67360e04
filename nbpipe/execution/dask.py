"""The Dask engine: apps run on the workers of a Dask cluster.

``address`` names an existing scheduler; without it a local cluster of worker
processes is started for the run and closed after it.
"""

from __future__ import annotations

import importlib.util
import os
import time
import uuid
from concurrent.futures import Future
from typing import Any

from ..errors import SiteError, WorkerError
from .base import TaskResult, TaskSpec
from .dispatch import Dispatch
from .remote import await_results, probe, run_batch, worker_fix

__all__ = ["DaskExecutor"]

#: How long closing the client and the cluster nbpipe started may take.
CLOSE_SECONDS = 20


class DaskExecutor:
    """Tasks as Dask futures; one task per worker thread at a time."""

    def __init__(self, site: Any, *, workers: int | None = None, engine: str = "ipython",
                 preload: tuple[str, ...] = (), kernel_name: str | None = None) -> None:
        if importlib.util.find_spec("distributed") is None:
            raise SiteError(f"site {site.name!r} uses Dask, which is not installed here: "
                            "pip install 'nbpipe[dask]'")
        from distributed import Client, LocalCluster

        self.site, self.preload = site, list(preload)
        self._closed = False
        timeout = site.start_timeout
        self.cluster = None
        address = site.options.get("address")
        try:
            if address:
                self.client = Client(address, timeout=timeout, set_as_default=False)
            else:
                n = workers or site.options.get("workers") or os.cpu_count() or 1
                environ = dict(os.environ)
                try:
                    self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                dashboard_address=":0")
                finally:
                    # LocalCluster sets OMP_NUM_THREADS=1 and friends in this process's
                    # environment, for good; the user's session must not inherit that.
                    os.environ.clear()
                    os.environ.update(environ)
                self.client = Client(self.cluster, set_as_default=False)
        except OSError as exc:
            raise WorkerError(f"site {site.name!r}: cannot reach the Dask scheduler at {address}: {exc}") from None
        self._futures: list[Any] = []
        self._specs: dict[str, list[TaskSpec]] = {}
        self._kernel_name = kernel_name if engine == "kernel" else None
        self._engine = engine
        self.workers = 1
        self.first_worker: dict[str, Any] | None = None
        self._dispatch = Dispatch(self._send, lambda: self.workers, site.name,
                                  batch=site.options.get("batch", True) and engine == "ipython")

    def ready(self) -> None:
        """Wait for a worker and probe every worker there is (each starts preloading
        its zygote); raise WorkerError if one lacks what nbpipe needs."""
        if self.first_worker is not None:
            return
        timeout = self.site.start_timeout
        try:
            start = time.time()
            self.client.wait_for_workers(1, timeout=timeout)
            # Run directly on every worker, not as a task: no task waits for the probe's
            # round trip, and every worker's zygote starts now, not at its first task.
            reports = self.client.run(probe, self._kernel_name, self._engine, self.preload)
        except Exception as exc:
            raise WorkerError(worker_fix(self.site.name, exc)) from None
        if not reports:
            raise WorkerError(f"site {self.site.name!r}: the Dask workers left before they could be probed")
        for report in reports.values():
            if report["missing"] or report["kernel"]:
                lacks = report["missing"] + ([f"the Jupyter kernel {report['kernel']!r}"]
                                             if report["kernel"] else [])
                raise WorkerError(f"site {self.site.name!r}: the Dask workers (python {report['python']} on "
                                  f"{report['host']}) lack {', '.join(lacks)}; install them there")
        self.first_worker = next(iter(reports.values()))
        self.first_worker["seconds"] = time.time() - start
        self.workers = sum(self.client.nthreads().values()) or 1

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        return self._dispatch.submit(spec)

    def _send(self, specs: list[TaskSpec]) -> Any:
        """One Dask task for ``specs`` (one task, or a batch of items of one app)."""
        first = specs[0]
        key = f"nbpipe-{first.app}-{first.item if first.item is not None else 'app'}-{uuid.uuid4().hex[:8]}"
        future = self.client.submit(run_batch, [spec.to_dict() for spec in specs], self.preload, pure=False,
                                    key=key)
        self._futures.append(future)
        self._specs[future.key] = specs
        return future

    def shutdown(self, *, cancel: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self._dispatch.close()
        running = [spec for f in self._futures if not f.done() for spec in self._specs[f.key]] if cancel else []
        if cancel and self._futures:
            self.client.cancel(self._futures)
        # Bounded: a cluster whose workers a terminal's Ctrl-C already stopped must not hang the stop.
        self.client.close(timeout=CLOSE_SECONDS)
        if self.cluster is not None:
            self.cluster.close(timeout=CLOSE_SECONDS)
        await_results(running)  # tasks stopped with their workers save what they printed
