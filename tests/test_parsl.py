"""The Parsl engine on a real DataFlowKernel with a local HighThroughputExecutor."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sitekit import PARSL_LOCAL, assert_same_outputs, copy_example

import nbpipe
from nbpipe.errors import SiteError, WorkerError

parsl = pytest.importorskip("parsl", reason="the Parsl engine needs the parsl extra: pip install -e '.[parsl]'")


def _leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (a test's own tmp path)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(pid) != os.getpid() and (marker in cmdline or marker in environ):
            found.append(f"{pid}: {cmdline[:120]}")
    return found


def test_quickstart_on_parsl_htex_matches_the_local_site_and_cleans_up(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)
    local = nbpipe.execute(nb, output=tmp_path / "local.ipynb", workers=2)
    remote = nbpipe.execute(nb, output=tmp_path / "parsl.ipynb", site="htex")
    assert local.ok and remote.ok, {n: r.error for n, r in remote.apps.items()}
    assert_same_outputs(local, remote)
    assert remote.first_result is not None and remote.first_result < remote.duration
    # nbpipe owned its DataFlowKernel: nothing global is left loaded
    with pytest.raises(parsl.errors.NoDataFlowKernelError):
        parsl.dfk()
    time.sleep(1)
    assert _leftovers(str(tmp_path)) == []
    # the run directory for a batch site sits beside the notebook and is removed
    assert list((tmp_path / ".nbpipe-runs").iterdir()) == []


def test_config_from_a_python_file(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "mine.py").write_text(
        "from parsl.config import Config\n"
        "from parsl.executors import HighThroughputExecutor\n"
        "from parsl.providers import LocalProvider\n\n"
        "def config():\n"
        "    return Config(executors=[HighThroughputExecutor(label='cpu', address='127.0.0.1',\n"
        "        max_workers_per_node=2, provider=LocalProvider(init_blocks=1, max_blocks=1))])\n")
    (tmp_path / "nbpipe.toml").write_text('[sites.theta]\nengine = "parsl"\nconfig = "sites/mine.py:config"\n')
    run = nbpipe.execute(nb, site="theta")
    assert run.ok
    assert run.notebook.metadata["nbpipe"]["site"] == "theta"


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    (tmp_path / "nbpipe.toml").write_text('[sites.a]\nengine = "parsl"\nconfig = "nothere.py:config"\n'
                                          '[sites.b]\nengine = "parsl"\nconfig = "bad.py:config"\n')
    (tmp_path / "bad.py").write_text("def config():\n    return 42\n")
    with pytest.raises(SiteError, match="sites.a.config: no file"):
        nbpipe.execute(nb, site="a")
    with pytest.raises(SiteError, match="config gave int, not a parsl Config"):
        nbpipe.execute(nb, site="b")


def test_a_worker_without_nbpipe_is_detected_with_the_fix(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    # A worker environment in which `import nbpipe` fails, as on a node where it is not installed.
    fake = tmp_path / "no-nbpipe" / "nbpipe"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'nbpipe'\", name='nbpipe')\n")
    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL.replace(
        "max_blocks = 1", f"max_blocks = 1\nworker_init = \"export PYTHONPATH={fake.parent}\""))
    start = time.time()
    with pytest.raises(WorkerError) as info:
        nbpipe.execute(nb, site="htex")
    assert "the workers cannot import nbpipe" in str(info.value) and "worker_init" in str(info.value)
    assert time.time() - start < 120
    time.sleep(1)
    assert _leftovers(str(tmp_path)) == []


def test_ctrl_c_during_a_parsl_run_leaves_nothing_behind(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)
    import nbformat

    book = nbformat.read(nb, as_version=4)
    slow = nbformat.v4.new_code_cell("import time\ntime.sleep(60)")
    slow.metadata["tags"] = ["app:slow"]
    book.cells.append(slow)
    nbformat.write(book, nb)
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(nb), "--site", "htex"],
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    assert proc.stderr is not None
    for line in proc.stderr:
        if "started   slow" in line or time.time() > deadline:
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    proc.stderr.close()
    assert (tmp_path / "quickstart.merged.ipynb").exists()
    # A worker's processes stop themselves once the worker is gone (a running app
    # first saves what it printed), within the zygote's grace period of 5 s.
    deadline = time.time() + 10
    while _leftovers(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.2)
    assert _leftovers(str(tmp_path)) == []


def test_executor_tag_routes_an_app_to_the_executor_with_that_label(tmp_path: Path) -> None:
    from nbbuild import code, text_of, write

    def executor(label: str) -> str:
        return (f"[sites.two.executors.{label}]\nprovider = 'local'\n"
                f"provider_options = {{ init_blocks = 1, max_blocks = 1, worker_init = 'export WHICH={label}' }}\n"
                "executor_options = { max_workers_per_node = 1, address = '127.0.0.1' }\n")

    (tmp_path / "nbpipe.toml").write_text("[sites.two]\nengine = 'parsl'\n" + executor("small") + executor("big"))
    default, routed = code("import os\nprint(os.environ['WHICH'])", "app:a"), \
        code("import os\nprint(os.environ['WHICH'])", "app:b", "executor:big")
    nb = write(tmp_path / "nb.ipynb", default, routed)
    run = nbpipe.execute(nb, site="two")
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    cells = {c.id: c for c in run.notebook.cells}
    assert text_of(cells[default.id]) == "small\n"  # the first executor is the default
    assert text_of(cells[routed.id]) == "big\n"


def test_the_first_app_reaches_the_interchange_before_the_probe_returns(tmp_path: Path) -> None:
    """No round trip before the first app: it travels with the probe, not after its answer."""
    from nbbuild import code, write

    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:a"))
    # worker_debug: the interchange logs each task it receives and each result it returns.
    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL + "worker_debug = true\n")
    run = nbpipe.execute(nb, site="htex", keep_run_dir=True)
    assert run.ok and run.run_dir is not None
    log = next((run.run_dir / "parsl").glob("*/htex/interchange.log")).read_text()
    received = re.findall(r"Put task (\d+) onto pending_task_queue", log)
    assert len(received) == 2  # the probe, then app a
    probe, app = received
    probe_returned = log.index(f"Removing task {probe} from manager")
    assert log.index(f"Put task {app} onto pending_task_queue") < probe_returned


def test_the_site_counts_the_workers_of_every_block(tmp_path: Path) -> None:
    """8 blocks of 8 workers are 64 workers (batches are sized by it), not 8."""
    from nbpipe.execution.parsl import load_config, site_workers
    from nbpipe.sites import known_sites

    (tmp_path / "nbpipe.toml").write_text(
        "[sites.blocks]\nengine = 'parsl'\nprovider = 'local'\n"
        "provider_options = { init_blocks = 2, min_blocks = 2, max_blocks = 8, nodes_per_block = 1 }\n"
        "executor_options = { max_workers_per_node = 8, address = '127.0.0.1' }\n"
        "[sites.two]\nengine = 'parsl'\n[sites.two.executors.a]\nprovider = 'local'\nprovider_options = { init_blocks = 1, max_blocks = 3 }\n"
        "executor_options = { max_workers_per_node = 2, address = '127.0.0.1' }\n"
        "[sites.two.executors.b]\nprovider = 'local'\nprovider_options = { init_blocks = 1, max_blocks = 1 }\n"
        "executor_options = { max_workers_per_node = 5, address = '127.0.0.1' }\n")
    sites = known_sites(tmp_path / "x.ipynb")
    assert site_workers(load_config(sites["blocks"]).config) == 8 * 8  # as many as its largest allocation
    assert site_workers(load_config(sites["two"]).config) == 3 * 2 + 1 * 5


def test_short_items_travel_several_to_a_parsl_task_each_with_its_own_result(tmp_path: Path) -> None:
    """Once an app's items are measured short, a Parsl task carries several, run in one
    forked process on the worker; every item keeps its own status, output and value."""
    from nbbuild import code, write

    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)
    n = 60
    nb = write(tmp_path / "nb.ipynb", code(f"items = list(range({n}))", "app:load"),
               code("import os\npid = os.getpid()\nsquare = i * i\nprint('item', i)", "app:work", "map:i=items"),
               code("pids = sorted(set(pid))\ntotal = sum(square)", "app:total"))
    run = nbpipe.execute(nb, output=tmp_path / "merged.ipynb", site="htex", cache=False, pull=True)
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    assert run.values["total"] == sum(i * i for i in range(n))
    items = run.apps["work"].items or []
    assert [item.status.value for item in items] == ["completed"] * n
    # One fork per site task: far fewer processes than items (2 workers, the first 4 items alone).
    assert len(run.values["pids"]) <= n // 3, run.values["pids"]
    # Each item's printed text is in the merged notebook (shown, or folded into the cell's metadata).
    merged = (tmp_path / "merged.ipynb").read_text()
    assert all(f"item {i}\\n" in merged for i in range(n))


def test_the_workers_of_a_block_share_one_zygote(tmp_path: Path) -> None:
    """A block's workers fork their tasks from one preloaded zygote (one per node), not one each."""
    from nbbuild import code, write

    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)  # one block of two workers
    nb = write(tmp_path / "nb.ipynb", code("items = list(range(8))", "app:load"),
               code("import os, time\ntime.sleep(0.3)\nzygote = os.getppid()", "app:work", "map:i=items"),
               code("zygotes = sorted(set(zygote))", "app:total"))
    run = nbpipe.execute(nb, site="htex", cache=False, pull=True)
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    assert len(run.values["zygotes"]) == 1, run.values["zygotes"]
    time.sleep(1)
    assert _leftovers(str(tmp_path)) == []  # the node's server ended with its block
