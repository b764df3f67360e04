"""Containers with real podman (issue 11, SPEC §8): ``container:IMAGE`` apps run in the image.

Every test here runs the test images ``scripts/build-test-image.sh`` builds
(``localhost/nbpipe-test``: Python with nbpipe's task runtime; ``-bare``:
Python only; ``-empty``: no Python) and skips, with the reason, where podman
or the image is missing. The notebooks are written as a scientist writes them:
magics, plots, a class defined in a cell, values going in and out of the
image. Containers a test's run started are named ``nbpipe-PID-N`` (PID: the
``nbpipe`` process), so a check for leftovers sees only its own.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nbbuild import code, md, nbpipe_cli, read, text_of, write
from sitekit import container_skip_reason

import nbpipe
from nbpipe.compare import normalise_outputs

IMAGE = "localhost/nbpipe-test"
BARE = "localhost/nbpipe-test-bare"
EMPTY = "localhost/nbpipe-test-empty"
BUILD = "build it with scripts/build-test-image.sh"


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _ours() -> set[str]:
    done = _podman("ps", "--all", "--filter", "label=nbpipe=1", "--format", "{{.ID}} {{.Names}}")
    return set(done.stdout.splitlines())


@pytest.fixture(scope="module", autouse=True)
def podman_ready() -> Iterator[None]:
    """Every test of this module needs podman that can run ``localhost/nbpipe-test``; and
    when they are done, no container nbpipe started is left (names say whose it was)."""
    reason = container_skip_reason(IMAGE, run=True)
    if reason:
        pytest.skip(reason)
    before = _ours()
    yield
    deadline = time.time() + 15
    while _ours() - before and time.time() < deadline:
        time.sleep(0.5)
    assert sorted(_ours() - before) == []


def need(image: str) -> None:
    if _podman("image", "exists", image).returncode != 0:
        pytest.skip(f"the image {image} is absent; {BUILD}")


def image_id(reference: str) -> str:
    done = _podman("image", "inspect", "--format", "{{.Id}}", reference)
    assert done.returncode == 0, done.stderr
    return "sha256:" + done.stdout.strip().removeprefix("sha256:")


def containers_of(pid: int) -> list[str]:
    """Containers (running or not) that the nbpipe process ``pid`` started, probes too."""
    done = _podman("ps", "-a", "--format", "{{.Names}}")
    assert done.returncode == 0, done.stderr
    return [n for n in done.stdout.split() if n.startswith((f"nbpipe-{pid}-", f"nbpipe-probe-{pid}-"))]


def processes_in(directory: Path) -> list[str]:
    """Live processes working in ``directory`` (a container's zygote and apps work in the
    notebook's directory; with ``--pid=host`` they are processes of this machine)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/cwd") != str(directory):
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            line = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z" and int(entry) != os.getpid():
            found.append(f"{entry}: {line}")
    return found


def cell_with(nb: Any, text: str) -> Any:
    found = [c for c in nb.cells if c.cell_type == "code" and text in c.source]
    assert len(found) == 1, text
    return found[0]


def statuses(run: nbpipe.RunResult) -> dict[str, str]:
    return {app: r.status.value for app, r in run.apps.items()}


def run_api(nb_path: Path, **options: Any) -> nbpipe.RunResult:
    """``nbpipe.execute``, the merged notebook beside as ``nb.merged.ipynb``."""
    return nbpipe.execute(nb_path, output=nb_path.with_name("nb.merged.ipynb"), **options)


# ------------------------------------------------------------------ values in and out

MAKE = '''\
import numpy as np

class Point:
    """A small class defined in the notebook itself (it crosses by value)."""
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
    def __repr__(self):
        return f"Point({self.x}, {self.y})"

arr = np.linspace(0, 1, 5)
conf = {"bins": 4, "label": "pt", "nested": {"a": [1, 2]}}
def scale(v, k=3):
    return v * k
shift = lambda v: v + 0.5
p = Point(3, 4)
arr'''

INSIDE = '''\
%precision 3
scaled = scale(arr)
moved = shift(arr).round(2)
q = Point(p.y, p.x + 1)
summary = {**conf, "norm": p.norm2(), "q": q.norm2()}
grow = lambda n: [scale(i, conf["bins"] * factor) for i in range(n)]

class Fit:  # defined in the image, used on the host
    def __init__(self, slope):
        self.slope = slope
    def __call__(self, x):
        return self.slope * x

fit = Fit(np.polyfit(arr, scaled, 1)[0].round(6))
print(type(p).__name__, p, q, scaled.sum(), moved)
summary'''

OBSERVE = "import os\nos.path.exists('/run/.containerenv')"

AFTER = '''\
print(scaled, moved)
print(grow(3), q, type(q).__name__, q.norm2(), type(fit).__name__, fit(2))
summary["norm"] + summary["q"], 1.0 / 3'''


def values_notebook(path: Path, *box_tags: str) -> Path:
    return write(path,
                 md("# values across the boundary"),
                 code("factor = 2", "parameters"),
                 code(MAKE, "app:make"),
                 code(INSIDE, "app:box", *box_tags),
                 code(OBSERVE),
                 md("and back on the host"),
                 code(AFTER, "app:after"))


def test_values_cross_into_the_image_and_back_as_between_host_apps(tmp_path: Path) -> None:
    boxed, plain = tmp_path / "boxed", tmp_path / "plain"
    boxed.mkdir(), plain.mkdir()
    in_box = run_api(values_notebook(boxed / "nb.ipynb", f"container:{IMAGE}"), workers=2,
                     parameters={"factor": 5})
    on_host = run_api(values_notebook(plain / "nb.ipynb"), workers=2, parameters={"factor": 5})
    assert statuses(in_box) == statuses(on_host) == {"make": "completed", "box": "completed",
                                                      "after": "completed"}
    # the same cells in the same order: compare them by position (ids are random)
    pairs = [(a, b) for a, b in zip(in_box.notebook.cells, on_host.notebook.cells)]
    assert [a.source for a, _ in pairs] == [b.source for _, b in pairs]
    # what the code observes of the container differs, and only that
    assert text_of(cell_with(in_box.notebook, OBSERVE)) == "True"
    assert text_of(cell_with(on_host.notebook, OBSERVE)) == "False"
    for boxed_cell, plain_cell in pairs:
        if boxed_cell.cell_type == "code" and boxed_cell.source != OBSERVE:
            assert normalise_outputs(boxed_cell.outputs) == normalise_outputs(plain_cell.outputs), \
                boxed_cell.source
    # the values were used (not just equal because both are empty)
    assert "Point(4, 4)" in text_of(cell_with(in_box.notebook, AFTER))
    assert "[0, 20, 40]" in text_of(cell_with(in_box.notebook, AFTER))  # the parameter, in the image
    assert "Fit 6.0" in text_of(cell_with(in_box.notebook, AFTER))
    assert containers_of(os.getpid()) == []  # the warm container went with the run


# ------------------------------------------------------------------ what the app sees

SEES = '''\
import json, os
mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
with open("result.txt", "w") as f:
    f.write("written inside\\n")
facts = {"cwd": os.getcwd(), "uid": os.getuid(), "gid": os.getgid(), "mounts": mounts,
         "data": open("data.txt").read(), "boxed": os.path.exists("/run/.containerenv")}
print(json.dumps(facts))'''


def test_the_app_sees_the_notebook_and_run_dirs_at_the_same_paths_as_the_invoking_user(
        tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("beside the notebook\n")
    nb = write(tmp_path / "nb.ipynb",
               code(SEES, "app:inside", f"container:{IMAGE}", "inputs:data.txt", "outputs:result.txt"),
               code("print(open('result.txt').read().strip())", "app:reader", "inputs:result.txt"))
    run = run_api(nb, keep_run_dir=True)
    try:
        assert run.ok, statuses(run)
        facts = json.loads(text_of(cell_with(run.notebook, "mountinfo")))
        assert facts["boxed"] is True
        assert facts["cwd"] == str(tmp_path)
        assert (facts["uid"], facts["gid"]) == (os.getuid(), os.getgid())
        assert str(tmp_path) in facts["mounts"] and str(run.run_dir) in facts["mounts"]
        assert facts["data"] == "beside the notebook\n"
        written = tmp_path / "result.txt"
        assert written.read_text() == "written inside\n"
        assert written.stat().st_uid == os.getuid()
        assert text_of(cell_with(run.notebook, "open('result.txt')")) == "written inside\n"
    finally:
        shutil.rmtree(run.run_dir or tmp_path / "none", ignore_errors=True)


def test_a_site_mounts_a_folder_beside_the_notebook_and_nothing_else_of_the_host(tmp_path: Path) -> None:
    project, shared, private = tmp_path / "project", tmp_path / "shared", tmp_path / "private"
    for folder in (project, shared, private):
        folder.mkdir()
    (shared / "calib.txt").write_text("1.5")
    (private / "secret.txt").write_text("x")
    (project / "nbpipe.toml").write_text("[sites.box]\nengine = 'local'\n[sites.box.containers]\n"
                                         "mounts = ['../shared']\n")
    nb = write(project / "nb.ipynb",
               code(f"import os\ncal = float(open({str(shared / 'calib.txt')!r}).read())\n"
                    f"print(cal, os.path.exists({str(private)!r}))", "app:box", f"container:{IMAGE}"),
               code("print(cal * 2)", "app:host"))
    run = run_api(nb, site="box")
    assert run.ok, statuses(run)
    assert text_of(cell_with(run.notebook, "cal = ")) == "1.5 False\n"
    assert text_of(cell_with(run.notebook, "cal * 2")) == "3.0\n"


def test_declared_files_outside_the_notebook_folder_are_mounted_and_nothing_else(tmp_path: Path) -> None:
    """``inputs:`` and ``outputs:`` by absolute path or ``..``: their folders are mounted, so
    a container app reads and writes them as a host app does; a sibling folder stays out."""
    project, data, results, private = (tmp_path / n for n in ("project", "data", "results", "private"))
    for folder in (project, data, results, private):
        folder.mkdir()
    (data / "run1.csv").write_text("1\n2\n3\n")
    nb = write(project / "nb.ipynb",
               code(f"import os\nrows = [int(x) for x in open({str(data / 'run1.csv')!r})]\n"
                    "open('../results/sum.txt', 'w').write(str(sum(rows)))\n"
                    f"print(os.path.exists({str(private)!r}))",
                    "app:box", f"container:{IMAGE}", f"inputs:{data}/*.csv", "outputs:../results/sum.txt"),
               code("print(open('../results/sum.txt').read())", "app:host", "inputs:../results/sum.txt"))
    run = run_api(nb)
    assert run.ok, statuses(run)
    assert text_of(cell_with(run.notebook, "rows = ")) == "False\n"
    assert text_of(cell_with(run.notebook, "results/sum.txt').read()")) == "6\n"
    assert (results / "sum.txt").read_text() == "6"


@pytest.mark.parametrize("folder", ["run:2024-05-01T10:00", "my data, v2"], ids=["colon", "space-comma"])
def test_a_notebook_in_a_folder_with_a_colon_or_a_comma_runs_in_the_image(tmp_path: Path, folder: str) -> None:
    """A run folder named by its time has colons, which ``--volume SRC:DST`` cannot take."""
    home = tmp_path / folder
    home.mkdir()
    (home / "data.txt").write_text("41")
    nb = write(home / "nb.ipynb",
               code("import os\nn = int(open('data.txt').read()) + 1\nprint(os.getcwd())\n" + CONTAINED,
                    "app:box", f"container:{IMAGE}", "inputs:data.txt"),
               code("print(n)", "app:back"))
    run = run_api(nb)
    assert run.ok, statuses(run)
    assert text_of(cell_with(run.notebook, "int(open")) == f"{home}\nTrue"
    assert text_of(cell_with(run.notebook, "print(n)")) == "42\n"


# ------------------------------------------------------------------ plots, map, kernel engine

PLOT = '''\
%matplotlib inline
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot(xs, [x * x for x in xs], "o-")
ax.set_title("in the image");'''


def test_a_plot_made_in_the_image_shows_as_a_png_in_the_merged_notebook(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("xs = list(range(6))", "app:data"),
               code(PLOT, "app:plot", f"container:{IMAGE}"))
    run = run_api(nb)
    assert run.ok, statuses(run)
    outputs = cell_with(run.notebook, "%matplotlib inline").outputs
    pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1, outputs
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert not [o for o in outputs if o["output_type"] == "stream"], outputs  # no font-cache chatter


HELPERS = '''\
%%writefile helpers.py
def square(v):
    return v * v'''

MAPPED = '''\
import os
from helpers import square
sq = square(c)
print("item", c, os.path.exists("/run/.containerenv"))'''


def test_a_map_app_runs_every_item_in_the_image(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("chunks = [2, 3, 5]", "app:prepare"),
               code(HELPERS, "app:prepare"),
               code(MAPPED, "app:sq", "map:c=chunks", f"container:{IMAGE}"),
               code("print(sum(sq), sq)", "app:total"))
    run = run_api(nb, workers=2)
    assert run.ok, statuses(run)
    shown = text_of(cell_with(run.notebook, "sq = square(c)"))
    for c in (2, 3, 5):
        assert f"item {c} True" in shown, shown
    assert text_of(cell_with(run.notebook, "sum(sq)")) == "38 [4, 9, 25]\n"
    assert [i.status.value for i in run.apps["sq"].items or []] == ["completed"] * 3


@pytest.mark.slow
def test_the_kernel_engine_runs_a_container_app_in_a_kernel_in_the_image(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("base = {'n': 3}", "app:host"),
               code("import os, sys\nboxed = os.path.exists('/run/.containerenv')\nn = base['n'] * 2\n"
                    "print(boxed, 'ipykernel' in sys.modules)", "app:box", f"container:{IMAGE}"),
               code("print(n + 1)", "app:back"))
    run = run_api(nb, engine="kernel")
    assert run.ok, statuses(run)
    assert text_of(cell_with(run.notebook, "boxed = ")) == "True True\n"
    assert text_of(cell_with(run.notebook, "n + 1")) == "7\n"


#: site -> (the extra it needs, its definition)
WORKER_SITES = {"htex": ("parsl", None),
                "dasklocal": ("distributed", '[sites.dasklocal]\nengine = "dask"\nworkers = 2\n')}


@pytest.mark.slow
@pytest.mark.parametrize("site", sorted(WORKER_SITES))
def test_a_parsl_or_dask_worker_runs_a_container_app_in_the_image(tmp_path: Path, site: str) -> None:
    module, definition = WORKER_SITES[site]
    pytest.importorskip(module, reason=f"the site needs {module}: pip install -e '.[parsl,dask]'")
    from sitekit import PARSL_LOCAL

    (tmp_path / "nbpipe.toml").write_text(definition or PARSL_LOCAL)
    nb = write(tmp_path / "nb.ipynb",
               code("import numpy as np\nweights = np.array([1.0, 2.0, 3.0])", "app:host"),
               code("total = float(weights.sum())\n" + CONTAINED, "app:box", f"container:{IMAGE}"),
               code("print(total)", "app:back"))
    run = run_api(nb, site=site)
    assert run.ok, statuses(run)
    assert text_of(cell_with(run.notebook, "total = ")) == "True"
    assert text_of(cell_with(run.notebook, "print(total)")) == "6.0\n"
    assert cell_with(run.notebook, "total = ").metadata["nbpipe"]["container"]["digest"] == image_id(IMAGE)


# ------------------------------------------------------------------ errors before anything runs

MARK = "open('marker.txt', 'w').write('ran')"


def _refusal(tmp_path: Path, box_tags: tuple[str, ...], *args: str, sites: str | None = None,
             env: dict[str, str] | None = None, meta: dict[str, Any] | None = None) -> str:
    """Run a notebook whose first app writes a marker and whose second has ``box_tags``;
    assert the run is refused before anything ran, in one line; return that line."""
    nb = write(tmp_path / "nb.ipynb", code(MARK, "app:first"), code("y = 2", "app:box", *box_tags), nbpipe=meta)
    if sites is not None:
        (tmp_path / "nbpipe.toml").write_text(sites)
    done = nbpipe_cli("execute", nb, *args, cwd=tmp_path, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("nbpipe: error: "), done.stderr
    assert not (tmp_path / "marker.txt").exists(), "an app ran"
    assert not (tmp_path / "nb.merged.ipynb").exists()
    return lines[0]


def test_a_missing_image_stops_the_run_naming_the_cell_and_how_to_get_it(tmp_path: Path) -> None:
    line = _refusal(tmp_path, ("container:localhost/no-such-image",))
    assert "cell 1" in line and "container:localhost/no-such-image" in line, line
    assert "'localhost/no-such-image'" in line and "podman pull localhost/no-such-image" in line, line
    checked = nbpipe_cli("check", tmp_path / "nb.ipynb", cwd=tmp_path)  # says so too, running nothing
    assert checked.returncode == 2 and checked.stderr.strip() == line, checked.stderr
    good = write(tmp_path / "good.ipynb", code(MARK, "app:first"), code("y = 2", "app:box", f"container:{IMAGE}"))
    checked = nbpipe_cli("check", good, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert not (tmp_path / "marker.txt").exists()


def test_no_runtime_on_path_stops_the_run(tmp_path: Path) -> None:
    line = _refusal(tmp_path, (f"container:{IMAGE}",), env={"PATH": str(Path(sys.executable).parent)})
    assert "cell 1" in line and "no container runtime found" in line and "install" in line, line


def test_a_site_runtime_that_is_not_installed_stops_the_run(tmp_path: Path) -> None:
    if shutil.which("apptainer") or shutil.which("singularity"):
        pytest.skip("apptainer is installed here")
    line = _refusal(tmp_path, (f"container:{IMAGE}",), "--site", "hpc",
                    sites="[sites.hpc]\nengine = 'local'\n[sites.hpc.containers]\nruntime = 'apptainer'\n")
    assert "cell 1" in line and "apptainer" in line and "install apptainer" in line, line


def test_an_image_without_python_fails_the_probe(tmp_path: Path) -> None:
    need(EMPTY)
    line = _refusal(tmp_path, (f"container:{EMPTY}",))
    assert "cell 1" in line and f"'{EMPTY}'" in line and "no working python3" in line, line
    assert "Python 3.10" in line and "papermill" in line, line


def test_an_image_without_papermill_says_what_to_pip_install(tmp_path: Path) -> None:
    need(BARE)
    line = _refusal(tmp_path, (f"container:{BARE}",))
    assert "cell 1" in line and f"'{BARE}'" in line, line
    assert "pip install" in line and "papermill" in line and "cloudpickle" in line, line


def test_docker_without_an_engine_says_the_engine_is_not_running(tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker client is not installed")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0:
        pytest.skip("a docker engine runs here")
    line = _refusal(tmp_path, (f"container:{IMAGE}",), "--site", "dock",
                    sites="[sites.dock]\nengine = 'local'\n[sites.dock.containers]\nruntime = 'docker'\n")
    assert "cell 1" in line and "docker" in line, line
    assert "daemon" in line or "engine" in line, line
    assert "not found" not in line and "docker pull" not in line, f"says the image is missing: {line}"


SITE = "[sites.s]\nengine = 'local'\n"


@pytest.mark.parametrize("containers, said", [
    ("options = ['--no-such-flag']", "unknown flag: --no-such-flag"),
    ("mounts = ['not-there']", "not-there"),
], ids=["bad-option", "missing-mount"])
def test_a_container_the_runtime_cannot_start_is_not_blamed_on_the_image(
        tmp_path: Path, containers: str, said: str) -> None:
    line = _refusal(tmp_path, (f"container:{IMAGE}",), "--site", "s",
                    sites=SITE + f"[sites.s.containers]\n{containers}\n")
    assert "cell 1" in line and "podman could not start" in line and said in line, line
    assert "containers.options" in line and "containers.mounts" in line, line
    assert "python3" not in line, f"blames the image: {line}"


@pytest.mark.parametrize("tags, sites, meta, wanted", [
    (("container:--privileged",), None, None, ("cell 1", "container:--privileged", "not starting with '-'")),
    (("container:localhost/nbpipe-test --privileged",), None, None, ("cell 1", "image reference")),
    ((), None, {"container": "--privileged"}, ("metadata.nbpipe.container", "not starting with '-'")),
    ((), SITE + "container = '--rm'\n", None, ("sites.s.container", "not starting with '-'")),
    ((f"container:{IMAGE}",), SITE + "[sites.s.containers]\noptions = '--privileged'\n", None,
     ("sites.s.containers.options",)),
    ((f"container:{IMAGE}",), SITE + "[sites.s.containers]\noptions = ['-v', 1]\n", None,
     ("sites.s.containers.options", "list of strings")),
    ((f"container:{IMAGE}",), SITE + "[sites.s.containers]\nmounts = '/'\n", None,
     ("sites.s.containers.mounts",)),
], ids=["tag-option", "tag-with-space", "notebook-default-option", "site-default-option", "options-string",
        "options-not-strings", "mounts-string"])
def test_hostile_container_values_are_refused_before_anything_runs(
        tmp_path: Path, tags: tuple[str, ...], sites: str | None, meta: dict[str, Any] | None,
        wanted: tuple[str, ...]) -> None:
    args = ("--site", "s") if sites else ()
    line = _refusal(tmp_path, tags, *args, sites=sites, meta=meta)
    assert all(w in line for w in wanted), line


# ------------------------------------------------------------------ defaults

CONTAINED = "import os\nos.path.exists('/run/.containerenv')"


def test_the_notebook_default_and_the_tag_choose_the_image_the_tag_first(tmp_path: Path) -> None:
    """The site says ``localhost/nbpipe-test``, the notebook ``...:latest``, one app's tag
    the image's id: each app runs in the image its nearest setting names."""
    ident = image_id(IMAGE).removeprefix("sha256:")
    (tmp_path / "nbpipe.toml").write_text(f"[sites.boxed]\nengine = 'local'\ncontainer = '{IMAGE}'\n")
    nb = write(tmp_path / "nb.ipynb",
               code("a = 1\n" + CONTAINED, "app:default"),
               code("b = 2\n" + CONTAINED, "app:tagged", f"container:{ident}"),
               nbpipe={"container": f"{IMAGE}:latest"})
    run = run_api(nb, site="boxed")
    assert run.ok, statuses(run)
    for source, image in (("a = 1", f"{IMAGE}:latest"), ("b = 2", ident)):
        cell = cell_with(run.notebook, source)
        assert text_of(cell) == "True", source
        assert cell.metadata["nbpipe"]["container"]["image"] == image
    assert run.notebook.metadata["nbpipe"]["provenance"]["containers"] == {
        f"{IMAGE}:latest": image_id(IMAGE), ident: image_id(IMAGE)}


def test_a_site_default_runs_untagged_apps_in_the_image(tmp_path: Path) -> None:
    (tmp_path / "nbpipe.toml").write_text(f"[sites.boxed]\nengine = 'local'\ncontainer = '{IMAGE}'\n")
    nb = write(tmp_path / "nb.ipynb", code("a = 1\n" + CONTAINED, "app:one"), code("print(a)", "app:two"))
    run = run_api(nb, site="boxed")
    assert run.ok, statuses(run)
    assert text_of(cell_with(run.notebook, "a = 1")) == "True"
    assert cell_with(run.notebook, "print(a)").metadata["nbpipe"]["container"]["image"] == IMAGE
    local = run_api(nb)  # the same notebook on the local site runs on the host
    assert text_of(cell_with(local.notebook, "a = 1")) == "False"


# ------------------------------------------------------------------ reproducible


@pytest.fixture
def alias(tmp_path: Path) -> Any:
    """A reference of this test's own (``localhost/nbpipe-ctest-PID``), first the test image;
    ``retag()`` points it at a derived image with one more label. Both are removed after."""
    name, derived = f"localhost/nbpipe-ctest-{os.getpid()}", f"localhost/nbpipe-ctest-derived-{os.getpid()}"
    assert _podman("tag", IMAGE, name).returncode == 0

    def retag() -> str:
        context = tmp_path / "derived"
        context.mkdir()
        (context / "Containerfile").write_text(f"FROM {IMAGE}\nLABEL nbpipe.test.derived={os.getpid()}\n")
        built = _podman("build", "--pull=never", "-t", derived, str(context), timeout=300)
        assert built.returncode == 0, built.stderr
        assert _podman("tag", derived, name).returncode == 0
        return image_id(name)

    yield name, retag
    _podman("untag", name)
    _podman("rmi", derived)


@pytest.mark.cache
def test_the_digest_is_recorded_and_keys_the_cache(tmp_path: Path, alias: Any) -> None:
    name, retag = alias
    nb = write(tmp_path / "nb.ipynb",
               code("x = 20", "app:up"),
               code("print('beside')", "app:side"),
               code("y = x + 1\n" + CONTAINED, "app:box", f"container:{name}"),
               code("print(y)", "app:down"))
    first = run_api(nb)
    assert statuses(first) == dict.fromkeys(["up", "side", "box", "down"], "completed")
    digest = image_id(IMAGE)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    merged = read(tmp_path / "nb.merged.ipynb")
    recorded = {"image": name, "digest": digest, "runtime": "podman"}
    assert cell_with(merged, "y = x + 1").metadata["nbpipe"]["container"] == recorded
    assert merged.metadata["nbpipe"]["apps"]["box"]["container"] == recorded
    assert merged.metadata["nbpipe"]["provenance"]["containers"] == {name: digest}
    assert "container" not in cell_with(merged, "x = 20").metadata["nbpipe"]

    assert statuses(run_api(nb)) == dict.fromkeys(["up", "side", "box", "down"], "cached")
    restored = cell_with(read(tmp_path / "nb.merged.ipynb"), "y = x + 1")
    assert restored.metadata["nbpipe"]["container"] == recorded and text_of(restored) == "True"

    changed = retag()
    assert changed != digest
    third = run_api(nb)
    assert statuses(third) == {"up": "cached", "side": "cached", "box": "completed", "down": "completed"}
    assert text_of(cell_with(third.notebook, "y = x + 1")) == "True"
    merged = read(tmp_path / "nb.merged.ipynb")
    assert merged.metadata["nbpipe"]["provenance"]["containers"] == {name: changed}


# ------------------------------------------------------------------ cleanup


def test_a_failing_container_app_fails_alone_and_leaves_no_container(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("raise ValueError('bad calibration')", "app:broken", f"container:{IMAGE}"),
               code("z = 3\n" + CONTAINED, "app:fine", f"container:{IMAGE}"),
               code("print('host fine')", "app:host"),
               code("print(z)", "app:after_fine"))
    run = run_api(nb, workers=2)
    assert statuses(run) == {"broken": "failed", "fine": "completed", "host": "completed",
                             "after_fine": "completed"}
    assert "ValueError: bad calibration" in text_of(cell_with(run.notebook, "bad calibration"))
    assert text_of(cell_with(run.notebook, "print(z)")) == "3\n"
    assert containers_of(os.getpid()) == []
    assert processes_in(tmp_path) == []


@pytest.mark.slow
def test_two_runs_at_once_in_one_process_each_get_their_own_containers(tmp_path: Path) -> None:
    """As from a notebook that starts two pipelines in threads: container names must not clash."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for side in ("left", "right"):
        (tmp_path / side).mkdir()
        paths.append(write(tmp_path / side / "nb.ipynb",
                           code(f"import time\ntime.sleep(1)\nside = {side!r}\n" + CONTAINED, "app:box",
                                f"container:{IMAGE}"),
                           code("print(side)", "app:host")))
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(run_api, paths))
    for side, run in zip(("left", "right"), runs):
        assert run.ok, (side, run.apps["box"].error)
        assert text_of(cell_with(run.notebook, "print(side)")) == f"{side}\n"
    assert containers_of(os.getpid()) == []


FLAKY = """\
import os, pathlib
tries = pathlib.Path("tries")
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if len(tries.read_text()) < 2:
    raise RuntimeError("the detector was busy")
print("attempt", len(tries.read_text()), os.path.exists("/run/.containerenv"))"""


def test_a_container_app_is_retried_in_the_image(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", code(FLAKY, "app:flaky", f"container:{IMAGE}", "retries:2"))
    run = run_api(nb)
    assert statuses(run) == {"flaky": "completed"}
    assert run.apps["flaky"].attempts == 2
    assert text_of(cell_with(run.notebook, "tries =")) == "attempt 2 True\n"


def test_an_app_that_kills_the_warm_zygote_fails_and_the_next_app_gets_a_new_container(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("import os, signal, time\nprint('killing', flush=True)\nos.kill(os.getppid(), signal.SIGKILL)\n"
                    "time.sleep(30)", "app:rogue", f"container:{IMAGE}"),
               code("v = 7\n" + CONTAINED, "app:later", f"container:{IMAGE}"),
               code("print(v * 6)", "app:host"))
    run = run_api(nb, workers=1)
    assert statuses(run) == {"rogue": "failed", "later": "completed", "host": "completed"}
    assert "zygote" in (run.apps["rogue"].error or {}).get("evalue", ""), run.apps["rogue"].error
    assert text_of(cell_with(run.notebook, "v = 7")) == "True"
    assert text_of(cell_with(run.notebook, "v * 6")) == "42\n"
    assert containers_of(os.getpid()) == []
    assert processes_in(tmp_path) == []


def test_a_container_app_past_its_timeout_is_stopped_and_the_next_one_still_runs(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("import time\nprint('started', flush=True)\ntime.sleep(120)", "app:stuck",
                    f"container:{IMAGE}", "timeout:2"),
               code("w = 5\n" + CONTAINED, "app:next", f"container:{IMAGE}"))
    started = time.monotonic()
    run = run_api(nb, workers=1)
    assert time.monotonic() - started < 60
    assert statuses(run) == {"stuck": "timed_out", "next": "completed"}
    assert "started" in text_of(cell_with(run.notebook, "time.sleep(120)"))
    assert text_of(cell_with(run.notebook, "w = 5")) == "True"
    assert containers_of(os.getpid()) == []
    assert processes_in(tmp_path) == []


SLEEPER = '''\
import os, pathlib, subprocess, time
print("partial output", flush=True)
child = subprocess.Popen(["sleep", "300"])
pathlib.Path("running").write_text(f"{os.getpid()} {child.pid}")
time.sleep(300)'''


@pytest.mark.parametrize("sig, code_, engine", [
    (signal.SIGINT, 130, "ipython"),
    pytest.param(signal.SIGTERM, 143, "ipython", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, 130, "kernel", marks=pytest.mark.slow),
], ids=["SIGINT", "SIGTERM", "SIGINT-kernel"])
def test_a_signal_while_a_container_app_runs_leaves_no_container_and_no_process(
        tmp_path: Path, sig: int, code_: int, engine: str) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("print('quick done')", "app:quick"),
               code(SLEEPER, "app:slow", "after:quick", f"container:{IMAGE}"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb), "--engine", engine], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    flag, deadline = tmp_path / "running", time.time() + 120
    try:
        while not (flag.exists() and flag.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the container app never started"
            time.sleep(0.1)
        time.sleep(0.5)
        pids = [int(p) for p in flag.read_text().split()]
        assert len(processes_in(tmp_path)) >= 3  # the zygote, the app, its sleep
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # as a terminal does: to the foreground process group
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code_, err
    merged = read(tmp_path / "nb.merged.ipynb")
    assert text_of(cell_with(merged, "print('quick done')")) == "quick done\n"
    assert "partial output" in text_of(cell_with(merged, "partial output"))
    assert containers_of(proc.pid) == [], err
    deadline = time.time() + 10
    while processes_in(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    assert processes_in(tmp_path) == []
    assert not [p for p in pids if Path(f"/proc/{p}").exists()
                and Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]


def derived_image(tmp_path_factory: pytest.TempPathFactory, kind: str, pth: str = "", run: str = "") -> Any:
    """An image derived from the test image with one ``.pth`` line (run by every start of
    its Python, before anything else) or one ``RUN`` step (``{site}``: its site-packages):
    ``localhost/nbpipe-ctest-KIND-PID``, removed after."""
    name = f"localhost/nbpipe-ctest-{kind}-{os.getpid()}"
    where = _podman("run", "--rm", "--pull=never", IMAGE, "python3", "-c",
                    "import site; print(site.getsitepackages()[0])")
    assert where.returncode == 0, where.stderr
    site = where.stdout.strip()
    context = tmp_path_factory.mktemp(kind)
    (context / "zz.pth").write_text(pth + "\n")
    step = f"RUN {run.format(site=site)}" if run else f"COPY zz.pth {site}/zz-{kind}.pth"
    (context / "Containerfile").write_text(f"FROM {IMAGE}\n{step}\n")
    built = _podman("build", "--pull=never", "-t", name, str(context), timeout=300)
    assert built.returncode == 0, built.stderr
    yield name
    _podman("rmi", "--force", name)


@pytest.fixture(scope="module")
def slow_start(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Python in this image, started in a directory holding ``slow-start``, sleeps a minute
    first: a probe, or a zygote, that is still starting."""
    yield from derived_image(tmp_path_factory, "slow",
                             "import os, time; time.sleep(60) if os.path.exists('slow-start') else None")


@pytest.fixture(scope="module")
def chatty(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Python in this image greets on stdout when it starts, as some images' site hooks do."""
    yield from derived_image(tmp_path_factory, "chatty", "import sys; print('Welcome to the analysis image!')")


@pytest.fixture(scope="module")
def no_ipykernel(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The test image without ipykernel: enough for the ipython engine, not the kernel engine."""
    yield from derived_image(tmp_path_factory, "nokernel", run="rm -rf {site}/ipykernel {site}/ipykernel_launcher.py")


@pytest.mark.parametrize("engine", ["ipython", "kernel"])
def test_an_image_without_ipykernel_is_refused_before_anything_runs(
        tmp_path: Path, no_ipykernel: str, engine: str) -> None:
    """Both engines need it in the image: the ``ipython`` engine's shell compiles cells
    with ipykernel's compiler, the ``kernel`` engine starts an ipykernel."""
    line = _refusal(tmp_path, (f"container:{no_ipykernel}",), "--engine", engine)
    assert "cell 1" in line and "pip install ipykernel" in line, line


@pytest.mark.slow
def test_an_image_whose_python_greets_on_start_still_runs_apps(tmp_path: Path, chatty: str) -> None:
    nb = write(tmp_path / "nb.ipynb", code("a = 1", "app:host"),
               code("b = a + 1\n" + CONTAINED, "app:box", f"container:{chatty}"), code("print(b)", "app:back"))
    done = nbpipe_cli("execute", nb, cwd=tmp_path, timeout=90)  # (it used to hang: a subprocess)
    assert done.returncode == 0, done.stderr
    merged = read(tmp_path / "nb.merged.ipynb")
    assert text_of(cell_with(merged, "b = a + 1")) == "True"
    assert text_of(cell_with(merged, "print(b)")) == "2\n"


def _stop_when(proc: subprocess.Popen[str], ready: Any, sig: int) -> str:
    """Once ``ready()``, send ``sig`` as a terminal (SIGINT: to the process group) or a batch
    system (to nbpipe) would; return what nbpipe printed."""
    deadline = time.time() + 60
    try:
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "never ready"
            time.sleep(0.2)
        time.sleep(1)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _nothing_left(proc: subprocess.Popen[str], box: Path, err: str) -> None:
    deadline = time.time() + 10
    while (containers_of(proc.pid) or processes_in(box)) and time.time() < deadline:
        time.sleep(0.2)
    assert containers_of(proc.pid) == [], err
    assert processes_in(box) == [], err


STOPS = [pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow, id="SIGINT"),
         pytest.param(signal.SIGTERM, 143, id="SIGTERM")]


@pytest.mark.parametrize("sig, code_", STOPS)
def test_a_signal_while_the_image_is_probed_leaves_no_container(
        tmp_path: Path, slow_start: str, sig: int, code_: int) -> None:
    (tmp_path / "slow-start").write_text("")
    nb = write(tmp_path / "nb.ipynb", code(MARK, "app:first"), code("y = 2", "app:box", f"container:{slow_start}"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = _stop_when(proc, lambda: containers_of(proc.pid), sig)
    assert proc.returncode == code_, err
    assert not (tmp_path / "marker.txt").exists()
    _nothing_left(proc, tmp_path, err)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code_", STOPS)
def test_a_signal_while_the_warm_container_starts_leaves_no_container(
        tmp_path: Path, slow_start: str, sig: int, code_: int) -> None:
    """The probe is quick; the host app then makes the image's Python slow to start, so
    the signal comes while the warm container's zygote is starting."""
    nb = write(tmp_path / "nb.ipynb",
               code("open('slow-start', 'w').close()\nseed = 1", "app:first"),
               code("y = seed + 1", "app:box", f"container:{slow_start}"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err = _stop_when(proc, lambda: [n for n in containers_of(proc.pid) if "probe" not in n], sig)
    assert proc.returncode == code_, err
    assert (tmp_path / "nb.merged.ipynb").exists(), err
    _nothing_left(proc, tmp_path, err)


def _commands() -> list[tuple[int, list[str]]]:
    """Each live process and its argv (the program by its name)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and argv[0]:
            out.append((int(pid), [os.path.basename(argv[0]), *argv[1:]]))
    return out


@pytest.mark.parametrize("client", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["nbpipe", "nbpipe-and-podman"])
def test_a_killed_nbpipe_leaves_no_container_behind(tmp_path: Path, client: bool) -> None:
    """SIGKILL (a batch system's last word): nbpipe cannot clean up, so the zygote in the
    container, seeing its input end, stops the app and ends, and the container goes. A
    cancelled batch job also kills podman's client, which leaves the input open: the
    zygote sees its driver's pid go."""
    nb = write(tmp_path / "nb.ipynb", code(SLEEPER, "app:slow", f"container:{IMAGE}"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    flag, deadline = tmp_path / "running", time.time() + 60
    while not (flag.exists() and flag.read_text()):
        assert proc.poll() is None and time.time() < deadline, "the container app never started"
        time.sleep(0.1)
    assert containers_of(proc.pid) and processes_in(tmp_path)
    clients = [pid for pid, argv in _commands() if argv[:2] == ["podman", "run"]
               and any(a.startswith(f"nbpipe-{proc.pid}-") for a in argv)] if client else []
    assert clients or not client
    proc.kill()
    for pid in clients:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while (containers_of(proc.pid) or processes_in(tmp_path)) and time.time() < deadline:
        time.sleep(0.3)
    assert containers_of(proc.pid) == []
    assert processes_in(tmp_path) == []


# ------------------------------------------------------------------ the warm container

PARENT = '''\
import os
parent = os.getppid()
print(parent, open(f"/proc/{parent}/cmdline").read().replace("\\0", " "))'''


def test_container_apps_of_one_image_fork_from_one_warm_zygote(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb",
               code("first = 1\n" + PARENT, "app:one", f"container:{IMAGE}"),
               code("second = 2\n" + PARENT, "app:two", f"container:{IMAGE}"),
               code(PARENT, "app:host"),
               code("third = first + second\n" + PARENT, "app:three", f"container:{IMAGE}"))
    run = run_api(nb, workers=2)
    assert run.ok, statuses(run)
    cells = [c for c in run.notebook.cells if c.cell_type == "code"]
    said = {app: text_of(cell).split(" ", 1) for app, cell in zip(("one", "two", "host", "three"), cells)}
    assert all("nbpipe.execution.zygote" in cmd for _, cmd in said.values()), said
    assert said["one"][0] == said["two"][0] == said["three"][0], said
    assert said["host"][0] != said["one"][0], said


def test_what_is_left_of_a_runs_containers_is_removed_by_its_label() -> None:
    """A batch job cancelled under a worker kills podman's monitor, which leaves the container
    recorded as running; after the run nbpipe removes whatever carries the run's label."""
    from nbpipe.containers import Container, remove_run_containers

    run = f"nbpipe-run-test{os.getpid()}"
    made = _podman("create", "--label", f"nbpipe.run={run}", "--label", "nbpipe=1", IMAGE, "true")
    other = _podman("create", "--label", "nbpipe.run=someone-else", IMAGE, "true")
    assert made.returncode == 0 and other.returncode == 0, made.stderr + other.stderr
    try:
        remove_run_containers([Container("podman", shutil.which("podman") or "podman", IMAGE, "sha256:x")], run)
        left = _podman("ps", "--all", "--quiet", "--no-trunc").stdout.split()
        assert made.stdout.strip() not in left and other.stdout.strip() in left
    finally:
        _podman("rm", "--force", "--ignore", made.stdout.strip(), other.stdout.strip())
