"""One zygote per node, shared by the node's workers of a Parsl or Dask site.

A worker of a batch site would otherwise keep a zygote of its own: a node
of 64 workers would preload 64 (each about 0.6 s of CPU and 130 MB), all at
once, when the first tasks come. Instead the first worker of a worker pool
(the worker processes of one parent: Parsl's ``process_worker_pool``, a
Dask nanny or local cluster) starts a node server, ``python -m
nbpipe.execution.node``, which keeps the pool's one
:class:`~.local.LocalExecutor` and its zygote; every worker of the pool hands
its tasks to it through a Unix socket (Linux's abstract namespace: no file
to leave behind), one connection per site task: a line of JSON (the task specs) in, a line of
JSON (their results) out.

The server lives as long as the worker that started it (it watches that
process), and dies with it when the batch system or Parsl kills the block:
its zygote then stops the running tasks, which save what they printed, as
when a worker's own zygote lost its worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["address", "ask", "main", "shared", "warm"]

#: How long a worker waits for its node's server to answer a connection.
START_SECONDS = 120.0
#: The servers this worker started (it watches none of them: each watches it).
_servers: list[subprocess.Popen[bytes]] = []


def shared() -> bool:
    """Whether this system gives the node's server an address that needs no file (Linux's
    abstract sockets: gone with the server, however it ends); elsewhere each worker keeps
    a zygote of its own."""
    return sys.platform.startswith("linux")


def address(engine: str, preload: list[str]) -> str:
    """The address of this worker pool's server for ``engine`` and ``preload``."""
    key = json.dumps([sys.executable, engine, sorted(preload), os.environ.get("PYTHONPATH", "")])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"\0nbpipe-node-{os.getuid()}-{os.getppid()}-{digest}"


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
    """A connection to the pool's server. The worker that binds its address first starts
    it, handing it the listening socket: connections wait in its backlog until it accepts."""
    where = address(engine, preload)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(where)
            return conn
        except OSError:
            conn.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with listener:
            try:
                listener.bind(where)
                listener.listen(1024)
            except OSError:  # another worker of the pool bound it first: its server comes
                time.sleep(0.02)
                continue
            _servers.append(subprocess.Popen([sys.executable, "-m", "nbpipe.execution.node", str(listener.fileno()),
                              str(os.getpid()), engine, *preload],
                             stdin=subprocess.DEVNULL, pass_fds=(listener.fileno(),)))
    raise RuntimeError(f"the node's task server did not answer within {START_SECONDS:g} s; "
                       "its error is in the worker's log")


def main(argv: list[str]) -> int:
    from .local import LocalExecutor
    from .zygote import process_start

    listener = socket.socket(fileno=int(argv[0]))  # bound and listening: see _connect
    owner, engine, preload = int(argv[1]), argv[2], argv[3:]
    started = process_start(owner)
    # Killed with its block (SIGTERM): stop the tasks first, as a zygote whose driver is gone would.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Concurrency is the site's business (its workers); this pool never limits it.
    executor = LocalExecutor(256, engine=engine, preload=preload)
    threading.Thread(target=_accept, args=(listener, executor), name="nbpipe-node", daemon=True).start()
    try:
        while process_start(owner) == started:  # the worker that started this server lives
            time.sleep(0.5)
    finally:
        listener.close()  # the address is free again: a worker still running starts a new server
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
