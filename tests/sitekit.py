"""Helpers for the site suites: sites files, reference runs, output comparison."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from conftest import normalise_outputs

import nbpipe

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"


def copy_example(name: str, into: Path) -> Path:
    """Copy an example notebook (and its data) into ``into``; return its path."""
    shutil.copy(EXAMPLES / name, into)
    if (EXAMPLES / "data").exists() and not (into / "data").exists():
        shutil.copytree(EXAMPLES / "data", into / "data")
    return into / name


def outputs_by_cell(nb: Any) -> dict[str, list[dict[str, Any]]]:
    """Normalised outputs of every code cell, by cell id."""
    return {c.id: normalise_outputs(c.outputs) for c in nb.cells if c.cell_type == "code"}


def assert_same_outputs(a: nbpipe.RunResult, b: nbpipe.RunResult) -> None:
    left, right = outputs_by_cell(a.notebook), outputs_by_cell(b.notebook)
    assert left.keys() == right.keys()
    for cell_id in left:
        assert left[cell_id] == right[cell_id], f"cell {cell_id} differs"


PARSL_LOCAL = """
[sites.htex]
engine = "parsl"
provider = "local"
start_timeout = 120
[sites.htex.provider_options]
init_blocks = 1
max_blocks = 1
[sites.htex.executor_options]
max_workers_per_node = 2
address = "127.0.0.1"
"""

SLURM = """
[sites.cluster]
engine = "parsl"
provider = "slurm"
start_timeout = {timeout}
[sites.cluster.provider_options]
partition = "debug"
nodes_per_block = 1
init_blocks = 1
max_blocks = 1
walltime = "00:10:00"
exclusive = false
cores_per_node = 2
[sites.cluster.executor_options]
max_workers_per_node = 2
address = "127.0.0.1"
"""


#: The image scripts/build-test-image.sh builds (Python with nbpipe's task runtime, numpy, matplotlib).
TEST_IMAGE = "localhost/nbpipe-test"


def container_skip_reason(image: str = TEST_IMAGE, run: bool = False) -> str | None:
    """Why the container tests cannot run here (no podman, no test image, and with ``run``
    podman cannot start a container of it), or None."""
    import subprocess

    if shutil.which("podman") is None:
        return "podman is not installed (scripts/build-test-image.sh installs it and builds the test images)"
    try:
        found = subprocess.run(["podman", "image", "exists", image], capture_output=True, text=True, timeout=60)
        if found.returncode == 1:
            return f"the test image {image} is missing: bash scripts/build-test-image.sh builds it"
        if found.returncode != 0:
            return f"podman cannot run here: {found.stderr.strip()}"
        ran = subprocess.run(["podman", "run", "--rm", "--pull=never", image, "true"], capture_output=True,
                             text=True, timeout=120) if run else None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman does not answer here: {exc}"
    return f"podman cannot start a container here: {ran.stderr.strip()}" if ran and ran.returncode else None
