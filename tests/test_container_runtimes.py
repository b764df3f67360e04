"""The runtimes besides podman, run for real where they are installed: charliecloud on a
directory image, apptainer on a ``.sif`` file. Each is made from the podman test image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from nbbuild import code, text_of, write
from sitekit import TEST_IMAGE, container_skip_reason

import nbpipe

pytestmark = pytest.mark.slow

SITE = """
[sites.boxed]
engine = "local"
[sites.boxed.containers]
runtime = "{runtime}"
"""


def _needs(executable: str, why: str) -> None:
    if shutil.which(executable) is None:
        pytest.skip(why)
    reason = container_skip_reason()
    if reason:
        pytest.skip(f"the images are made from the podman test image: {reason}")


def _export(into: Path) -> Path:
    """The test image's file system as a directory, with its environment where ch-run reads it."""
    into.mkdir()
    made = subprocess.run(["podman", "create", TEST_IMAGE, "true"], capture_output=True, text=True, check=True)
    cid = made.stdout.strip()
    try:
        with subprocess.Popen(["podman", "export", cid], stdout=subprocess.PIPE) as export:
            subprocess.run(["tar", "-x", "-C", str(into)], stdin=export.stdout, check=True)
        assert export.returncode == 0
    finally:
        subprocess.run(["podman", "rm", cid], capture_output=True)
    env = subprocess.run(["podman", "image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}",
                          TEST_IMAGE], capture_output=True, text=True, check=True).stdout
    (into / "ch").mkdir(exist_ok=True)
    (into / "ch" / "environment").write_text(env)
    return into


def _run_values_through(tmp_path: Path, runtime: str, image: str) -> nbpipe.RunResult:
    work = tmp_path / "analysis"
    work.mkdir()
    (work / "nbpipe.toml").write_text(SITE.format(runtime=runtime))
    src = write(work / "nb.ipynb",
                code("import numpy as np\nx = np.arange(5)\nscale = lambda v: v * 3", "app:load"),
                code("import os, sys\ny = scale(x)\nprint(sys.executable, os.getcwd() == os.path.dirname("
                     "os.path.abspath('nb.ipynb')), y.tolist())", "app:inside", f"container:{image}"),
                code("print(int(y.sum()))", "app:after"))
    run = nbpipe.execute(src, site="boxed", workers=2)
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    cells = {c.metadata["nbpipe"]["app"]: c for c in run.notebook.cells}
    assert text_of(cells["inside"]) == "/opt/venv/bin/python3 True [0, 3, 6, 9, 12]\n"
    assert text_of(cells["after"]) == "30\n"
    meta = cells["inside"].metadata["nbpipe"]["container"]
    assert meta["runtime"] == runtime and meta["digest"].startswith("sha256:") and len(meta["digest"]) == 71
    return run


def test_charliecloud_runs_an_app_in_an_image_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs("ch-run", "charliecloud is not installed (Debian: apt-get install charliecloud-runtime)")
    monkeypatch.setenv("USER", os.environ.get("USER", "root"))  # ch-run refuses to start without it
    image = _export(tmp_path / "image")
    run = _run_values_through(tmp_path, "charliecloud", str(image))
    # The mount points ch-run needs were made in the image; its digest ignores them.
    assert (image / str(tmp_path / "analysis").lstrip("/")).is_dir()
    (tmp_path / "again").mkdir()
    again = _run_values_through(tmp_path / "again", "charliecloud", str(image))
    digests = [r.notebook.cells[1].metadata["nbpipe"]["container"]["digest"] for r in (run, again)]
    assert digests[0] == digests[1]


def test_apptainer_runs_an_app_in_a_sif_file(tmp_path: Path) -> None:
    exe = shutil.which("apptainer") or shutil.which("singularity")
    _needs(exe or "apptainer", "apptainer/singularity is not installed here (not packaged in Debian 12); "
                               "its command line is checked in test_container_argv.py")
    archive = tmp_path / "image.tar"
    subprocess.run(["podman", "save", "--format", "docker-archive", "-o", str(archive), TEST_IMAGE], check=True)
    sif = tmp_path / "nbpipe-test.sif"
    subprocess.run([str(exe), "build", str(sif), f"docker-archive://{archive}"], check=True, capture_output=True)
    _run_values_through(tmp_path, "apptainer", str(sif))
