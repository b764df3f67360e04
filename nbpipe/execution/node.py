"""One zygote per node, shared by the node's workers of a Parsl or Dask site.

A worker of a batch site would otherwise keep a zygote of its own: a node
of 64 workers would preload 64 (each about 0.6 s of CPU and 130 MB), all at
once, when the first tasks come. Instead the first worker of a worker pool
(the worker processes of one parent: Parsl's ``process_worker_pool``, a
Dask nanny or local cluster) starts a node server, ``python -m
nbpipe.execution.node``, which keeps the pool's one
:class:`~.local.LocalExecutor` and its zygote; every worker of the pool hands
its tasks to it through a Unix socket in the node's temporary directory,
one connection per site task: a line of JSON (the task specs) in, a line of
JSON (their results) out.

The server lives as long as the worker that started it (it watches that
process), and dies with it when the batch system or Parsl kills the block:
its zygote then stops the running tasks, which save what they printed, as
when a worker's own zygote lost its worker.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["ask", "main", "socket_path", "warm"]

#: How long a worker waits for the node server it started to listen.
START_SECONDS = 120.0


def socket_path(engine: str, preload: list[str]) -> Path:
    """The socket of this worker pool's server for ``engine`` and ``preload`` (a short path:
    Unix sockets allow about 100 bytes)."""
    key = json.dumps([sys.executable, engine, sorted(preload), os.environ.get("PYTHONPATH", "")])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"nbpipe-node-{os.getuid()}-{os.getppid()}-{digest}.sock"


def ask(specs: list[dict[str, Any]], engine: str, preload: list[str]) -> list[dict[str, Any]]:
    """Run ``specs`` on this node's server (started now if there is none); their result dicts."""
    with _connect(engine, preload) as conn:
        conn.sendall(json.dumps(specs).encode() + b"\n")
        answer = conn.makefile("rb").readline()
    if not answer:
        raise RuntimeError("the node's task server (python -m nbpipe.execution.node) ended during the task; "
                           "its error is in the worker's log")
    got = json.loads(answer)
    if isinstance(got, dict):
        raise RuntimeError(f"the node's task server failed: {got['error']}")
    return got


def warm(engine: str, preload: list[str]) -> None:
    """Start this node's server (and so its zygote's preload) if none runs yet."""
    _connect(engine, preload).close()


def _connect(engine: str, preload: list[str]) -> socket.socket:
    path = socket_path(engine, preload)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker of the pool starts the server
        conn = _try(path)
        if conn is not None:
            return conn
        path.unlink(missing_ok=True)  # a server that ended
        server = subprocess.Popen([sys.executable, "-m", "nbpipe.execution.node", str(path),
                                   f"{os.getpid()}", engine, *preload], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and server.poll() is None:
            conn = _try(path)
            if conn is not None:
                return conn
            time.sleep(0.02)
    raise RuntimeError(f"the node's task server did not start (exit status {server.poll()}); "
                       "its error is in the worker's log")


def _try(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def main(argv: list[str]) -> int:
    from .local import LocalExecutor
    from .zygote import process_start

    path, owner, engine, preload = Path(argv[0]), int(argv[1]), argv[2], argv[3:]
    started = process_start(owner)
    # Killed with its block (SIGTERM): still remove the socket and stop the tasks as a zygote would.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Concurrency is the site's business (its workers); this pool never limits it.
    executor = LocalExecutor(256, engine=engine, preload=preload)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1024)
    threading.Thread(target=_accept, args=(listener, executor), name="nbpipe-node", daemon=True).start()
    try:
        while process_start(owner) == started:  # the worker that started this server lives
            time.sleep(0.5)
    finally:
        path.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)  # a worker still starting one binds it again
        executor.shutdown(cancel=True)
    return 0


def _accept(listener: socket.socket, executor: Any) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn, executor), name="nbpipe-node-task", daemon=True).start()


def _answer(conn: socket.socket, executor: Any) -> None:
    from .base import TaskSpec

    with conn:
        line = conn.makefile("rb").readline()
        if not line:
            return
        try:
            tasks = [TaskSpec(**spec) for spec in json.loads(line)]
            answer: Any = [result.to_dict() for result in executor.run_together(tasks)]
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass  # the worker is gone; the task's files are in the run directory all the same


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
