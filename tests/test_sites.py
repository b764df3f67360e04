"""Sites files (SPEC §5): discovery order, listing, did-you-mean, malformed files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from nbbuild import code, nbpipe_cli, write

from nbpipe.errors import SiteError
from nbpipe.sites import get_site, known_sites

DASK = '[sites.{name}]\nengine = "dask"\naddress = "{address}"\n'


def test_discovery_order_first_definition_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside, work = tmp_path / "project", tmp_path / "work"
    beside.mkdir(), work.mkdir()
    notebook = beside / "nb.ipynb"
    (tmp_path / "explicit.toml").write_text(DASK.format(name="a", address="tcp://explicit:1"))
    (beside / "nbpipe.toml").write_text(DASK.format(name="a", address="tcp://beside:1")
                                        + DASK.format(name="b", address="tcp://beside:2"))
    (work / "nbpipe.toml").write_text(DASK.format(name="b", address="tcp://work:2")
                                      + DASK.format(name="c", address="tcp://work:3"))
    (work / "pyproject.toml").write_text("[tool.nbpipe.sites.c]\nengine = 'dask'\naddress = 'tcp://py:3'\n"
                                         "[tool.nbpipe.sites.d]\nengine = 'local'\nworkers = 3\n")
    monkeypatch.chdir(work)
    sites = known_sites(notebook, tmp_path / "explicit.toml")
    assert sites["a"].options["address"] == "tcp://explicit:1"
    assert sites["b"].options["address"] == "tcp://beside:2"
    assert sites["c"].options["address"] == "tcp://work:3"
    assert sites["d"].options["workers"] == 3 and sites["d"].defined_in.endswith("pyproject.toml")
    assert sites["local"].defined_in == "built in"
    assert list(sites) == ["a", "b", "c", "d", "local"]


def test_nbpipe_sites_lists_every_site_with_where_it_is_defined(tmp_path: Path) -> None:
    (tmp_path / "nbpipe.toml").write_text(
        DASK.format(name="dask1", address="tcp://127.0.0.1:9") +
        '[sites.theta]\nengine = "parsl"\nconfig = "theta.py:config"\n')
    done = nbpipe_cli("sites", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("dask1") and "scheduler tcp://127.0.0.1:9" in line
               and str(tmp_path / "nbpipe.toml") in line for line in lines)
    assert any(line.startswith("theta") and "config theta.py:config" in line for line in lines)
    assert any(line.startswith("local") and "built in" in line for line in lines)


def test_unknown_site_exits_2_with_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "nbpipe.toml").write_text(DASK.format(name="cluster", address="tcp://x:1"))
    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:a"))
    done = nbpipe_cli("execute", nb, "--site", "clustre", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown site 'clustre'" in done.stderr and "did you mean 'cluster'?" in done.stderr
    assert not (tmp_path / "nb.merged.ipynb").exists()


@pytest.mark.parametrize("text, problem", [
    ("[sites.a\nengine = 'dask'", "not valid TOML"),
    ("[sites.a]\naddress = 'tcp://x:1'", "sites.a.engine: missing; set it to one of local, parsl, dask"),
    ("[sites.a]\nengine = 'parsel'", "sites.a.engine: unknown engine 'parsel' (did you mean 'parsl'?)"),
    ("[sites.a]\nengine = 'dask'\nadress = 'tcp://x:1'", "sites.a.adress: unknown key (did you mean 'address'?)"),
    ("[sites.a]\nengine = 'local'\nworkers = 'four'", "sites.a.workers: must be a whole number, got str 'four'"),
    ("[sites.a]\nengine = 'local'\nworkers = 0", "sites.a.workers: must be at least 1"),
    ("[sites.a]\nengine = 'parsl'", "sites.a: give either config"),
    ("[sites.a]\nengine = 'parsl'\nconfig = 'x.py:c'\nprovider = 'slurm'", "sites.a: give either config"),
    ("[sites.a]\nengine = 'parsl'\nconfig = 'theta.py'", "sites.a.config: 'theta.py' must name a file and a function"),
    ("[sites.a]\nengine = 'parsl'\nprovider = 'slurmm'", "sites.a.provider: unknown provider 'slurmm' (did you mean 'slurm'?)"),
    ("[sites.a]\nengine = 'parsl'\nprovider = 'slurm'\nprovider_options = 3", "sites.a.provider_options: must be a table"),
    ("[sites.a]\nengine = 'local'\n[sites.a.containers]\nruntime = 'podmn'", "sites.a.containers.runtime: unknown runtime 'podmn' (did you mean 'podman'?)"),
    ("sites = 3", "sites: must be a table of sites"),
])
def test_a_malformed_sites_file_gives_one_line_naming_file_key_and_problem(
        tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "nbpipe.toml"
    path.write_text(text)
    with pytest.raises(SiteError) as info:
        known_sites(sites_file=path)
    assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)
    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:a"))
    done = nbpipe_cli("execute", nb, "--sites", path, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert problem in done.stderr


def test_a_missing_sites_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="no such sites file"):
        get_site("local", sites_file=tmp_path / "nope.toml")


def test_parsl_site_checks_executor_labels_and_resources_before_running(tmp_path: Path) -> None:
    pytest.importorskip("parsl")
    (tmp_path / "nbpipe.toml").write_text(
        "[sites.hpc]\nengine = 'parsl'\n"
        "[sites.hpc.executors.cpu]\nprovider = 'slurm'\nprovider_options = {cores_per_node = 8, mem_per_node = 16}\n"
        "[sites.hpc.executors.gpu]\nprovider = 'slurm'\n"
        "provider_options = {cores_per_node = 4}\nexecutor_options = {available_accelerators = ['0', '1']}\n")
    site = get_site("hpc", sites_file=tmp_path / "nbpipe.toml")
    caps = site.capacities()
    assert list(caps) == ["cpu", "gpu"]
    assert caps["cpu"].cpus == 8 and caps["cpu"].memory == 16 * 2**30 and caps["gpu"].gpus == 2
    for tags, problem in [(("executor:tpu",), "no executor labelled 'tpu' (it has: cpu, gpu)"),
                          (("cpus:9",), "asks for 9 CPUs; site 'hpc' executor 'cpu' has 8"),
                          (("executor:gpu", "gpus:3"), "asks for 3 GPUs; site 'hpc' executor 'gpu' has 2"),
                          (("memory:32GiB",), "asks for 32.0 GiB of memory; site 'hpc' executor 'cpu' has 16.0 GiB")]:
        nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", *tags))
        done = nbpipe_cli("check", nb, "--site", "hpc", cwd=tmp_path)
        assert done.returncode == 2, done.stdout
        assert problem in done.stderr and repr(tags[-1]) in done.stderr
    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", "executor:gpu", "gpus:2", "cpus:4"))
    assert nbpipe_cli("check", nb, "--site", "hpc", cwd=tmp_path).returncode == 0


ZYGOTE_CHILDREN = """
import os, pathlib, time
from nbpipe.execution.remote import probe



def parent(pid):
    return int(pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def zygotes():  # the node's zygote: a child of the node server this worker started
    found = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"nbpipe.execution.zygote" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                found += parent(parent(int(pid))) == os.getpid()
        except OSError:
            continue
    return found


assert probe(None, "ipython", ["json"])["missing"] == []
deadline = time.time() + 30  # the probe starts it in the background
while not zygotes() and time.time() < deadline:
    time.sleep(0.05)
print(zygotes())
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
def test_probing_a_batch_worker_starts_its_zygote() -> None:
    """A Parsl or Dask worker starts preloading its node's zygote when probed, not when its first app comes."""
    done = subprocess.run([sys.executable, "-c", ZYGOTE_CHILDREN], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
