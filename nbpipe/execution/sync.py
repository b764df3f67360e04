"""An in-process synchronous executor, for tests and ``--debug``.

Each task runs to completion inside :meth:`SyncExecutor.submit`, in this
process, so a debugger sees it and no pool is needed (like Dask's
``get_sync``). App timeouts are per cell here (papermill's
``execution_timeout``): there is no process to stop from outside.
"""

from __future__ import annotations

from concurrent.futures import Future

from .base import TaskResult, TaskSpec
from .task import run_task

__all__ = ["SyncExecutor"]


class SyncExecutor:
    workers = 1

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        future: Future[TaskResult] = Future()
        try:
            future.set_result(run_task(spec))
        except BaseException as exc:
            future.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
        return future

    def shutdown(self, *, cancel: bool = False) -> None:
        pass
