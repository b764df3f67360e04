"""Runs on a worker of a Parsl or Dask site: tasks and the environment probe.

A task on a worker runs exactly as on the ``local`` site, through a
:class:`~.local.LocalExecutor`: with the ``ipython`` engine the one of the
worker's node (:mod:`.node`: the node's workers fork from one preloaded
zygote), with the ``kernel`` engine the worker's own, which starts a
kernel per task. Both functions here are imported by reference on the
worker, which is why a worker without nbpipe fails to run them; the driver
turns that failure into a message saying how to fix the environment.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import node

__all__ = ["REQUIRED", "await_results", "failed", "probe", "run_batch", "worker_fix"]

#: What a worker needs besides nbpipe, by import name -> distribution name.
REQUIRED = {"papermill": "papermill", "ipykernel": "ipykernel", "IPython": "ipython",
            "nbformat": "nbformat", "cloudpickle": "cloudpickle"}
_executors: dict[tuple[str, tuple[str, ...]], Any] = {}
_lock = threading.Lock()


def probe(kernel_name: str | None = None, engine: str | None = None,
          preload: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Describe this worker: where it runs and what of nbpipe's needs it lacks.

    With the ``ipython`` engine a worker that has what it needs also starts
    its node's zygote (:mod:`.node`), in the background: the probe returns at
    once, and the first task finds the zygote already preloading.
    """
    from ..version import __version__

    missing = [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if engine == "ipython" and not missing:
        threading.Thread(target=node.warm if node.shared() else _executor, args=(engine, list(preload)), name="nbpipe-warm", daemon=True).start()
    kernel_ok = True
    if kernel_name and "jupyter_client" not in missing:
        try:
            from jupyter_client.kernelspec import KernelSpecManager

            kernel_ok = kernel_name in KernelSpecManager().find_kernel_specs() or kernel_name == "python3"
        except Exception:
            kernel_ok = False
    return {"host": socket.gethostname(), "python": sys.executable, "nbpipe": __version__,
            "missing": missing, "kernel": kernel_name if not kernel_ok else None,
            "job_id": batch_job_id()}


def batch_job_id() -> str | None:
    """The batch system's id of the job this process runs in, if any."""
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "COBALT_JOBID", "FLUX_JOB_ID"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def run_batch(specs: list[dict[str, Any]], preload: list[str]) -> list[dict[str, Any]]:
    """Run tasks on this worker: one alone, or several items of one map app one after
    another in one forked process (see :mod:`.dispatch`); their results (:class:`TaskResult` as dicts)."""
    from .base import TaskSpec

    engine = specs[0]["engine"]
    if engine == "ipython" and node.shared():  # forked from the node's one zygote
        return node.ask(specs, engine, preload)
    tasks = [TaskSpec(**spec) for spec in specs]
    return [result.to_dict() for result in _executor(engine, preload).run_together(tasks)]


def _executor(engine: str, preload: list[str]) -> Any:
    """This worker process's own executor for ``engine`` (the ``kernel`` engine: a
    kernel per task; the ``ipython`` engine uses the node's, :mod:`.node`)."""
    from .local import LocalExecutor

    key = (engine, tuple(preload))
    with _lock:
        executor = _executors.get(key)
        if executor is None:
            # Concurrency is the site's business (its workers); this pool never limits it.
            executor = _executors[key] = LocalExecutor(256, engine=engine, preload=preload)
    return executor


def await_results(specs: list[Any]) -> None:
    """Give tasks stopped on the workers the grace period to save what they printed.

    Their workers are gone: the tasks notice, save, and write their result
    files to the run directory (on a shared filesystem), which is all the
    driver can watch.
    """
    from .. import stop
    from .local import result_path

    deadline = time.monotonic() + stop.GRACE_SECONDS + 2.0
    waiting = [result_path(spec) for spec in specs]
    while waiting and time.monotonic() < deadline and not stop.hurried():
        waiting = [path for path in waiting if not path.exists()]
        time.sleep(0.1)


def failed(spec: Any, message: str) -> Any:
    from .base import AppStatus, TaskResult

    now = time.time()
    return TaskResult(spec.app, AppStatus.FAILED, now, now, "", spec.attempt, None,
                      {"ename": "WorkerError", "evalue": message})


def worker_fix(site: str, exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "Failed to start block" in text:
        # Parsl repeats the provider's error once per block; its last stderr says why.
        reason = text.rpartition("stderr=")[2].strip().splitlines()[0] if "stderr=" in text else text
        return f"site {site!r}: Parsl could not start a block of workers: {reason}"
    for module in ("nbpipe", "papermill", "ipykernel", "cloudpickle"):
        if f"No module named '{module}'" in text:
            return (f"site {site!r}: the workers cannot import {module}: install nbpipe in the "
                    "workers' environment, or set worker_init in the site's provider_options to "
                    f"activate this one (e.g. \"source {Path(sys.executable).parent}/activate\")")
    return f"site {site!r}: {text}"


@atexit.register
def _close() -> None:
    for executor in _executors.values():
        executor.shutdown(cancel=True)
