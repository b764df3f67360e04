"""The scale test bed: bench/scale.py's machinery at a tiny size, and a map on many Parsl blocks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbbuild import code, write

import nbpipe
from nbpipe.sites import known_sites

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import scale  # noqa: E402  (bench/ is not a package)


def test_a_tiny_map_on_the_local_site_gives_every_figure(tmp_path: Path) -> None:
    row = scale.measure(scale.Case("local", "trivial", 20), tmp_path)
    printed = scale.table([row]).splitlines()
    assert printed[0].split() == [word for column in scale.COLUMNS for word in column.split()]
    assert printed[1].split()[:3] == ["local", "trivial", "20"]
    assert row.completed == 20
    assert row.items_per_s > 0 and row.steady and row.steady > 0
    assert row.first is not None and 0 < row.first < row.wall
    assert row.first_end is not None and 0 < row.first_end <= row.first  # the driver hears of it after
    assert row.merged > 0 and row.rss > 0
    assert row.files > 0 and row.run_bytes > 0  # sampled while the run went on
    assert not row.left  # the run directory is gone after the run
    assert row.ideal is None  # no ideal for trivial items: their work is the overhead


def test_a_run_past_its_limit_is_stopped_and_shown_as_failed(tmp_path: Path) -> None:
    row = scale.measure(scale.Case("local", "sleep", 200), tmp_path, limit=2)  # 10 s of sleep on 2 workers
    assert row.failure == "no result within 2 s: stopped"
    assert row.completed == 0 and row.merged == 0
    assert not row.left  # stopped as Ctrl-C stops it: the run directory is removed


def test_the_plan_keeps_large_trivial_maps_to_the_local_site() -> None:
    cases = scale.plan((1000, 10_000), ("local", "parsl"))
    assert {(c.site, c.kind, c.items) for c in cases} == {
        ("local", "trivial", 1000), ("local", "trivial", 10_000),
        ("parsl", "trivial", 1000), ("parsl", "sleep", 1000), ("parsl", "sleep", 10_000)}


def test_the_bench_sites_file_is_a_valid_sites_file(tmp_path: Path) -> None:
    (tmp_path / "nbpipe.toml").write_text(scale.sites_toml(cores=2))
    sites = known_sites(tmp_path / "x.ipynb")
    parsl = sites["parsl"].options
    assert parsl["provider_options"]["max_blocks"] == scale.BLOCKS
    assert parsl["executor_options"]["max_workers_per_node"] == scale.PER_BLOCK
    assert sites["dask"].options["workers"] == scale.DASK_WORKERS
    assert all(sites[name].run_root(tmp_path) == tmp_path / "runs" for name in ("local", "parsl", "dask"))


BLOCKS = """
[sites.blocks]
engine = "parsl"
provider = "local"
start_timeout = 240
[sites.blocks.provider_options]
init_blocks = 3
min_blocks = 3
max_blocks = 3
[sites.blocks.executor_options]
max_workers_per_node = 2
cores_per_worker = {cores_per_worker}
address = "127.0.0.1"
"""


@pytest.mark.slow
def test_a_200_item_map_runs_on_the_workers_of_several_parsl_blocks(tmp_path: Path) -> None:
    pytest.importorskip("parsl", reason="the Parsl engine needs the parsl extra: pip install -e '.[parsl]'")
    (tmp_path / "nbpipe.toml").write_text(BLOCKS.format(cores_per_worker=(os.cpu_count() or 1) / 2))
    # The merged notebook records each item's host and batch job, which do not tell a
    # LocalProvider's blocks apart: each item records the block its worker belongs to.
    nb = write(tmp_path / "blocks.ipynb",
               code("items = list(range(200))", "app:load"),
               code("import os, time\ntime.sleep(0.05)\nblock = os.environ['PARSL_WORKER_BLOCK_ID']",
                    "app:work", "map:i=items"),
               code("blocks = sorted(set(block))\nprint(blocks)", "app:total"))
    run = nbpipe.execute(nb, output=tmp_path / "blocks.merged.ipynb", site="blocks", cache=False, pull=True)
    assert run.ok, {n: r.error for n, r in run.apps.items()}
    items = nbformat.read(tmp_path / "blocks.merged.ipynb", as_version=4).metadata["nbpipe"]["apps"]["work"]["items"]
    assert [item["index"] for item in items] == list(range(200))
    assert {item["status"] for item in items} == {"completed"}
    assert len(run.values["blocks"]) > 1, run.values["blocks"]
