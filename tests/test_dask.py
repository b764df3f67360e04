"""The Dask engine: a real scheduler and two workers on 127.0.0.1, and a local cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sitekit import assert_same_outputs, copy_example

import nbpipe
from nbpipe.errors import WorkerError

pytest.importorskip("distributed", reason="the Dask engine needs the dask extra: pip install -e '.[dask]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` and two ``dask worker`` processes, stopped by PID afterwards."""
    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    port = address.rsplit(":", 1)[1]
    commands = [[sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", port, "--no-dashboard"]]
    commands += [[sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                  "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"]
                 for i in range(2)]
    procs = []
    for i, command in enumerate(commands):
        with open(logs / f"{i}.log", "wb") as log:
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        _stop(procs)


def _sites(tmp_path: Path, address: str) -> Path:
    path = tmp_path / "nbpipe.toml"
    path.write_text(f'[sites.dask]\nengine = "dask"\naddress = "{address}"\n'
                    '[sites.dasklocal]\nengine = "dask"\nworkers = 2\n'
                    '[sites.nowhere]\nengine = "dask"\naddress = "tcp://127.0.0.1:9"\nstart_timeout = 3\n')
    return path


def test_quickstart_on_a_dask_scheduler_matches_the_local_site(tmp_path: Path, scheduler: str) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    _sites(tmp_path, scheduler)
    local = nbpipe.execute(nb, output=tmp_path / "local.ipynb", workers=2)
    remote = nbpipe.execute(nb, output=tmp_path / "dask.ipynb", site="dask")
    assert local.ok and remote.ok
    assert_same_outputs(local, remote)
    assert remote.notebook.metadata["nbpipe"]["site"] == "dask"


@pytest.mark.slow
def test_hep_example_on_a_local_dask_cluster(tmp_path: Path) -> None:
    pytest.importorskip("uproot")
    nb = copy_example("zmumu.ipynb", tmp_path)
    _sites(tmp_path, "tcp://unused:1")
    run = nbpipe.execute(nb, site="dasklocal")
    assert run.ok and run.metrics["z_mass"] == pytest.approx(90.8, abs=0.1)


def test_an_unreachable_scheduler_fails_clearly_and_quickly(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    _sites(tmp_path, "tcp://unused:1")
    start = time.time()
    with pytest.raises(WorkerError, match="site 'nowhere'"):
        nbpipe.execute(nb, site="nowhere")
    assert time.time() - start < 30
    assert not (tmp_path / "quickstart.merged.ipynb").exists()


def test_a_local_dask_cluster_leaves_the_callers_environment_alone(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    _sites(tmp_path, "tcp://unused:1")
    before = dict(os.environ)
    run = nbpipe.execute(nb, site="dasklocal")
    assert run.ok
    assert dict(os.environ) == before  # LocalCluster alone would set OMP_NUM_THREADS=1


def test_the_workers_zygote_preloads_before_their_first_task_one_per_node(tmp_path: Path) -> None:
    """The probe starts the node's zygote (one for the local cluster's workers, :mod:`node`)."""
    import os

    from nbpipe.sites import get_site

    _sites(tmp_path, "tcp://unused:1")
    executor = get_site("dasklocal", tmp_path / "nb.ipynb").executor(engine="ipython", preload=("json",))

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])

    def zygotes(workers: set[int]) -> int:
        found = 0
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                if b"nbpipe.execution.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found += parent(parent(pid)) in workers  # zygote <- node server <- a worker
            except OSError:
                continue
        return found

    try:
        executor.ready()
        workers = set(executor.client.run(os.getpid).values())
        assert len(workers) == 2
        deadline = time.time() + 30  # each probe starts its node's zygote in the background
        while zygotes(workers) != 1 and time.time() < deadline:
            time.sleep(0.1)
        assert zygotes(workers) == 1
    finally:
        executor.shutdown()


def test_short_items_travel_several_to_a_dask_task_unless_the_site_says_batch_false(
        tmp_path: Path, scheduler: str) -> None:
    from nbbuild import code, write

    n = 60
    nb = write(tmp_path / "nb.ipynb", code(f"items = list(range({n}))", "app:load"),
               code("import os\npid = os.getpid()\nsquare = i * i", "app:work", "map:i=items"),
               code("pids = sorted(set(pid))\ntotal = sum(square)", "app:total"))
    (tmp_path / "nbpipe.toml").write_text(f'[sites.dask]\nengine = "dask"\naddress = "{scheduler}"\n'
                                          f'[sites.single]\nengine = "dask"\naddress = "{scheduler}"\n'
                                          'batch = false\n')
    batched = nbpipe.execute(nb, site="dask", cache=False, pull=True)
    single = nbpipe.execute(nb, site="single", cache=False, pull=True)
    for run in (batched, single):
        assert run.ok, {name: r.error for name, r in run.apps.items()}
        assert run.values["total"] == sum(i * i for i in range(n))
        assert [item.status.value for item in run.apps["work"].items or []] == ["completed"] * n
    assert len(batched.values["pids"]) <= n // 3  # one fork per Dask task of several items
    assert len(single.values["pids"]) == n  # one fork per item
