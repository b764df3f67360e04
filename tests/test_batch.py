"""Short map items run several to a forked process (execution/batch.py), each as if forked alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nbbuild import by_id, code, read, write

import nbpipe
from nbpipe.api import AppStatus
from nbpipe.compare import normalise_outputs
from nbpipe.execution.base import TaskResult, TaskSpec
from nbpipe.execution.batch import MAX_BATCH, MEASURED, Batcher

ITEMS = 48

#: An item that changes every kind of process state a batch must undo before the next item,
#: and prints what it found first: in a fresh fork every item finds the same.
STATEFUL = """\
%load_ext autoreload
found = (os.environ.get("NBPIPE_ITEM"), os.path.basename(os.getcwd()), sys.path[-1], sys.argv[1:],
         pd.get_option("display.max_rows"), np.get_printoptions()["precision"], np.geterr()["divide"],
         float(plt.rcParams["lines.linewidth"]), len(plt.get_fignums()), float(np.zeros(1)[0]),
         plt.get_backend(), len(get_ipython().input_transformers_cleanup),
         len(get_ipython().input_transformers_post))
print(found)
echoed = !echo {i}
print(echoed)
get_ipython().input_transformers_cleanup.append(lambda lines: lines)
get_ipython().input_transformers_post.append(lambda lines: lines)
os.environ["NBPIPE_ITEM"] = str(i)
os.makedirs("sub", exist_ok=True)
os.chdir("sub")
sys.path.append("added-by-an-item")
sys.argv.append("x")
pd.set_option("display.max_rows", 7)
np.set_printoptions(precision=2)
np.seterr(divide="ignore")
plt.rcParams["lines.linewidth"] = 9
warnings.warn("shown once per process")
fig, ax = plt.subplots(figsize=(1, 1))
ax.plot([0, i])
pid = os.getpid()
if i % 2:
    plt.switch_backend("agg")  # closes the figure: odd items show none
"""


def _notebook(tmp_path: Path, name: str, items: int = ITEMS) -> tuple[Path, Any]:
    work = code(STATEFUL, "app:work", "map:i=items")
    path = write(tmp_path / name,
                 code("%matplotlib inline\nimport os, sys, warnings\nimport numpy as np\nimport pandas as pd\n"
                      "import matplotlib.pyplot as plt", "setup"),
                 code(f"items = list(range({items}))", "app:load"), work,
                 code("import json\nwith open('seen.json', 'w') as f:\n    json.dump([found, pid], f)",
                      "app:report"))
    return path, work


def _site(tmp_path: Path, batch: bool) -> None:
    (tmp_path / "nbpipe.toml").write_text(f'[sites.here]\nengine = "local"\nbatch = {str(batch).lower()}\n')


def _run(tmp_path: Path, batch: bool) -> tuple[nbpipe.RunResult, Any, list[Any]]:
    folder = tmp_path / ("batched" if batch else "alone") / "work"  # the same name: items print it
    folder.mkdir(parents=True)
    _site(folder, batch)
    path, work = _notebook(folder, "b.ipynb")
    run = nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), site="here", workers=2)
    found, pids = json.loads((folder / "sub" / "seen.json").read_text())  # the items chdir: carried on
    return run, by_id(read(run.output), work.id), [found, pids]


def _batch_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch items however long they take (a figure takes longer than a batch's items here)."""
    from nbpipe.execution import batch

    monkeypatch.setattr(batch, "SHORT_SECONDS", 60.0)
    monkeypatch.setattr(batch, "BATCH_SECONDS", 600.0)


@pytest.fixture
def batch_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    _batch_anything(monkeypatch)


@pytest.mark.usefixtures("batch_anything")
def test_batched_items_find_the_process_as_a_fork_leaves_it_and_show_the_same_outputs(tmp_path: Path) -> None:
    batched, cell, (found, pids) = _run(tmp_path, batch=True)
    alone, cell_alone, (found_alone, pids_alone) = _run(tmp_path, batch=False)
    assert batched.ok and alone.ok
    assert len(set(pids_alone)) == ITEMS  # one process per item
    assert len(set(pids)) < ITEMS - MEASURED  # batches ran
    # every item found what a fresh fork finds: nothing the previous item changed
    assert found == found_alone
    assert len({json.dumps(f) for f in found}) == 1, found[:3]
    assert found[0][:2] == [None, "work"] and found[0][2] != "added-by-an-item" and "x" not in found[0][3]
    # the same outputs: printed state, the warning (shown once per item), the figure
    assert normalise_outputs(cell.outputs) == normalise_outputs(cell_alone.outputs)
    assert all(i.status is AppStatus.COMPLETED for i in batched.apps["work"].items)


@pytest.mark.usefixtures("batch_anything")
def test_a_failing_item_in_a_batch_fails_alone_and_the_rest_of_its_batch_completes(tmp_path: Path) -> None:
    work = code("if i == 30:\n    raise ValueError(f'bad item {i}')\ny = i", "app:work", "map:i=items")
    path = write(tmp_path / "f.ipynb", code(f"items = list(range({ITEMS}))", "app:load"), work)
    run = nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), workers=2)
    statuses = [i.status for i in run.apps["work"].items]
    assert statuses[30] is AppStatus.FAILED
    assert statuses.count(AppStatus.COMPLETED) == ITEMS - 1
    assert "bad item 30" in run.apps["work"].items[30].error["evalue"]


@pytest.mark.parametrize("batch", [True, False])
def test_an_item_that_kills_its_process_fails_and_the_items_after_it_run_again(
        tmp_path: Path, batch: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if batch:
        _batch_anything(monkeypatch)
    _site(tmp_path, batch)
    work = code("import os\nif i == 30:\n    os._exit(3)\ny = i", "app:work", "map:i=items")
    path = write(tmp_path / "k.ipynb", code(f"items = list(range({ITEMS}))", "app:load"), work,
                 code("print(len(y))", "app:total"))
    run = nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), site="here", workers=2)
    items = run.apps["work"].items
    assert items[30].status is AppStatus.FAILED and items[30].error["ename"] == "WorkerDied"
    assert [i.index for i in items if i.status is not AppStatus.COMPLETED] == [30]
    # the merge shows the item that died as failed (it wrote no notebook)
    shown = by_id(read(run.output), work.id).metadata["nbpipe"]["item_status"]
    assert [s["item"] for s in shown if s["status"] != "completed"] == [30] and shown[30]["status"] == "failed"


def _spec(app: str, item: int | None, **fields: Any) -> TaskSpec:
    return TaskSpec(app, "nb.ipynb", "out.ipynb", "run", ".", item=item, engine="ipython", **fields)


def _learn(batcher: Batcher, app: str, seconds: float) -> None:
    for item in range(MEASURED):
        batcher.ended(TaskResult(app, AppStatus.COMPLETED, 0.0, seconds, "h", 1), item)


@pytest.mark.parametrize("seconds, expected", [(0.001, MAX_BATCH), (0.02, 25), (1.0, 1)])
def test_a_batch_takes_about_half_a_second_of_measured_items(seconds: float, expected: int) -> None:
    from concurrent.futures import Future

    batcher = Batcher(workers=1)
    for item in range(1000):
        batcher.put(_spec("work", item), Future())
    assert len(batcher.take()) == 1  # not measured yet
    _learn(batcher, "work", seconds)
    assert len(batcher.take()) == expected


def test_batches_shrink_as_the_queue_drains_and_never_mix_apps_or_timeouts() -> None:
    from concurrent.futures import Future

    batcher = Batcher(workers=2)
    _learn(batcher, "work", 0.001)
    _learn(batcher, "slow", 0.001)
    for item in range(40):
        batcher.put(_spec("work", item), Future())
        batcher.put(_spec("slow", item, timeout=5.0), Future())
    sizes = []
    while batch := batcher.take():
        assert len({spec.app for spec, _ in batch}) == 1
        assert all(spec.timeout is None for spec, _ in batch) or len(batch) == 1
        sizes.append(len(batch))
    work_sizes = [s for s in sizes if s > 1]
    assert work_sizes == sorted(work_sizes, reverse=True) and work_sizes[0] == 10  # 40 / (2 workers x 2)
    assert sum(sizes) == 80 and sizes.count(1) >= 40


def test_results_are_taken_while_a_large_map_is_still_being_submitted(tmp_path: Path) -> None:
    """The scheduler submits a split map's items a few per turn, taking results between them:
    the first item's event comes before the last item is submitted, not after all of them."""
    import time

    from nbpipe.events import Kind

    seen: list[float] = []
    work = code("y = i", "app:work", "map:i=items")
    path = write(tmp_path / "s.ipynb", code("items = list(range(1200))", "app:load"), work)

    def on_event(event: Any) -> None:
        if event.kind is Kind.ITEM and not seen:
            seen.append(time.time())

    run = nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), workers=2, on_event=on_event)
    assert run.ok and seen
    last_submitted = max(i.submit_time for i in run.apps["work"].items)
    assert seen[0] < last_submitted
