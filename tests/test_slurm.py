"""Parsl on a real single-node Slurm cluster (scripts/slurm-up.sh), behind the slow marker."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbbuild import code, text_of, write
from sitekit import SLURM, TEST_IMAGE, assert_same_outputs, container_skip_reason, copy_example

import nbpipe
from nbpipe.errors import WorkerError

pytestmark = pytest.mark.slow
pytest.importorskip("parsl", reason="the Slurm site runs on Parsl: pip install -e '.[parsl]'")
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _slurm(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A running single-node Slurm; the tests skip, saying why, where it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("starting Slurm and munge needs root")
    if shutil.which("apt-get") is None and shutil.which("sinfo") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    up = _slurm("slurm-up.sh")
    if up.returncode != 0:
        pytest.skip(f"a single-node Slurm could not start here: {(up.stdout + up.stderr)[-500:]}")
    yield


def _queue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _wait_for_empty_queue(seconds: float = 30) -> list[str]:
    deadline = time.time() + seconds
    while _queue() and time.time() < deadline:
        time.sleep(0.5)
    return _queue()


@pytest.mark.parametrize("example", ["quickstart.ipynb", "zmumu.ipynb"])
def test_examples_on_slurm_match_the_local_site_and_run_in_slurm_jobs(
        tmp_path: Path, slurm: None, example: str) -> None:
    if example == "zmumu.ipynb":
        pytest.importorskip("uproot")
    nb = copy_example(example, tmp_path)
    (tmp_path / "nbpipe.toml").write_text(SLURM.format(timeout=120))
    local = nbpipe.execute(nb, output=tmp_path / "local.ipynb", workers=2)
    remote = nbpipe.execute(nb, output=tmp_path / "slurm.ipynb", site="cluster")
    assert local.ok and remote.ok, {n: r.error for n, r in remote.apps.items()}
    assert_same_outputs(local, remote)
    jobs = {c.metadata["nbpipe"].get("job_id") for c in remote.notebook.cells
            if c.cell_type == "code" and c.metadata["nbpipe"].get("status") == "completed"}
    assert len(jobs) == 1 and None not in jobs and next(iter(jobs)).isdigit()
    assert all(r.job_id in jobs for r in remote.apps.values())
    # the block (batch job) was cancelled when the run ended
    assert _wait_for_empty_queue() == []


def test_a_stopped_slurm_fails_clearly_within_bounded_time(tmp_path: Path, slurm: None) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    (tmp_path / "nbpipe.toml").write_text(SLURM.format(timeout=45))
    down = _slurm("slurm-down.sh")
    assert down.returncode == 0, down.stderr
    try:
        start = time.time()
        with pytest.raises(WorkerError) as info:
            nbpipe.execute(nb, site="cluster")
        took = time.time() - start
    finally:
        assert _slurm("slurm-up.sh").returncode == 0
    assert took < 60, f"took {took:.0f} s"
    message = str(info.value)
    assert "site 'cluster'" in message
    assert "Unable to contact slurm controller" in message or "no worker started" in message


@pytest.mark.parametrize("sig,code", [(2, 130), (15, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_slurm_run_and_cancels_its_job(tmp_path: Path, slurm: None, sig: int, code: int) -> None:
    from test_signals import Run, assert_stopped

    (tmp_path / "nbpipe.toml").write_text(SLURM.format(timeout=120))
    run = Run(tmp_path, "--site", "cluster")
    family = run.wait_running(timeout=180)
    assert _queue(), "the apps should run in a Slurm job"
    assert_stopped(run, family, run.stop(sig, timeout=120), code)
    assert _wait_for_empty_queue() == []


@pytest.mark.cache
def test_a_cache_filled_on_slurm_serves_a_laptop_run_and_back(tmp_path: Path, slurm: None) -> None:
    """Keys do not depend on the site: what batch jobs stored, the local site restores,
    and an edit made on the laptop runs on the cluster for the app it reaches only."""
    nb = copy_example("quickstart.ipynb", tmp_path)
    (tmp_path / "nbpipe.toml").write_text(SLURM.format(timeout=120))
    remote = nbpipe.execute(nb, output=tmp_path / "slurm.ipynb", site="cluster")
    assert remote.ok and all(r.status.value == "completed" for r in remote.apps.values())
    local = nbpipe.execute(nb, output=tmp_path / "local.ipynb")
    assert {r.status.value for r in local.apps.values()} == {"cached"}
    assert_same_outputs(remote, local)
    jobs = {c.metadata["nbpipe"].get("job_id") for c in local.notebook.cells if c.cell_type == "code"}
    assert jobs - {None}, "a restored app keeps the batch job it ran in"
    again = nbpipe.execute(nb, output=tmp_path / "again.ipynb", site="cluster", keep_run_dir=True)
    assert {r.status.value for r in again.apps.values()} == {"cached"}
    assert {r.job_id for r in again.apps.values()} == {r.job_id for r in remote.apps.values()}
    assert again.run_dir is not None and not (again.run_dir / "parsl").exists(), \
        "a run the cache served whole starts no Parsl executor, so submits no batch job"
    shutil.rmtree(again.run_dir)


def test_a_container_app_runs_in_podman_inside_the_slurm_job(tmp_path: Path, slurm: None) -> None:
    """The worker in the batch job starts the app's warm container itself; values cross
    into it and back; no container is left when the job ends."""
    reason = container_skip_reason()
    if reason:
        pytest.skip(reason)
    src = write(tmp_path / "nb.ipynb",
                code("import numpy as np\nx = np.arange(6)", "app:load"),
                code("import os\nboxed = os.path.exists('/run/.containerenv')\ny = x * 2\n"
                     "job = os.environ.get('SLURM_JOB_ID')\nprint(boxed, y.sum(), job)",
                     "app:inside", f"container:{TEST_IMAGE}"),
                code("print(y.tolist(), boxed)", "app:after"))
    (tmp_path / "nbpipe.toml").write_text(SLURM.format(timeout=120))
    run = nbpipe.execute(src, site="cluster", keep_run_dir=True)
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    assert run.run_dir is not None
    shutil.rmtree(run.run_dir)
    cells = {c.metadata["nbpipe"]["app"]: c for c in run.notebook.cells if c.cell_type == "code"}
    assert text_of(cells["inside"]) == f"True 30 {run.apps['inside'].job_id}\n"
    assert text_of(cells["after"]) == "[0, 2, 4, 6, 8, 10] True\n"
    assert cells["inside"].metadata["nbpipe"]["container"]["digest"].startswith("sha256:")
    assert cells["inside"].metadata["nbpipe"]["job_id"] == run.apps["inside"].job_id is not None
    assert _wait_for_empty_queue() == []
    left = subprocess.run(["podman", "ps", "--all", "--quiet", "--filter", f"label=nbpipe.run={run.run_dir.name}"],
                          capture_output=True, text=True, timeout=60)
    assert left.stdout.strip() == ""
