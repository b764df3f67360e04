"""The scheduler's memo hook: asked before each first attempt, told each final task and app.

``schedule()`` runs small real pipelines on the local executor (forked
in-process shells) with :class:`DictMemo`, a memo that keeps completed task
results in a dict and replays them as hits. Two runs share one run directory,
so the values a hit stands for are there for the apps that run.
"""

from __future__ import annotations

import json
import os
import time
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from nbbuild import code, write

from nbpipe.api import _make_run_dir, _spec_maker, load_pipeline
from nbpipe.progress import PlainView
from nbpipe.execution.base import AppResult, AppStatus, TaskResult, TaskSpec, run_ok
from nbpipe.execution.local import LocalExecutor
from nbpipe.events import Event
from nbpipe.execution.scheduler import Memo, schedule
from nbpipe.store import Store

TaskKey = tuple[str, int | None, bool]  # (app, item, split)


@dataclass
class DictMemo:
    """Keeps the completed results it is told, replays them as ``cached`` hits, records every call.

    A task's key is its app, item and split and the keys of the apps it reads
    from (a Merkle chain): a reader re-wired to another app, and everything
    below it, misses what it stored before the re-wire."""

    kept: dict[Any, TaskResult] = field(default_factory=dict)
    checks: list[tuple[str, int | None, bool, tuple[str, ...]]] = field(default_factory=list)
    stores: list[tuple[TaskKey, AppStatus, int]] = field(default_factory=list)
    finishes: list[tuple[str, AppStatus]] = field(default_factory=list)
    keys: dict[str, Any] = field(default_factory=dict)  # app -> its key, when last asked

    def check(self, app: str, *, item: int | None, split: bool, preds: tuple[str, ...]) -> TaskResult | None:
        self.checks.append((app, item, split, preds))
        if item is None:
            self.keys[app] = (app, tuple(self.keys[p] for p in preds))
        got = self.kept.get(self._key(app, item, split))
        if got is None:
            return None
        return replace(got, status=AppStatus.CACHED, cache={"key": f"{app}/{item}/{split}", "run": "earlier"})

    def store(self, app: str, *, item: int | None, split: bool, task: TaskResult) -> None:
        self.stores.append(((app, item, split), task.status, task.attempt))
        if task.status is AppStatus.COMPLETED:
            self.kept[self._key(app, item, split)] = task

    def _key(self, app: str, item: int | None, split: bool) -> Any:
        return (self.keys[app], item, split)

    def drop(self, app: str, item: int | None = None, split: bool = False) -> None:
        self.kept = {k: v for k, v in self.kept.items() if (k[0][0], k[1], k[2]) != (app, item, split)}

    def finish(self, app: str, result: AppResult) -> None:
        self.finishes.append((app, result.status))

    def forget(self, app: str) -> None:
        """What an edit to ``app`` does to its keys: every task of it misses."""
        self.kept = {k: v for k, v in self.kept.items() if k[0][0] != app}


@dataclass
class Runner:
    """Runs one notebook's pipeline with ``schedule()`` again and again in one run directory."""

    path: Path
    run_dir: Path
    submitted: list[TaskKey] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, memo: Memo | None, parameters: dict[str, Any] | None = None,
                 on_event: Any = None) -> dict[str, AppResult]:
        pipeline = load_pipeline(self.path)
        make = _spec_maker(pipeline, Store(self.run_dir), self.path.parent, parameters or {}, "ipython")
        self.submitted, self.events = [], []

        def make_spec(app: str, attempt: int, **kwargs: Any) -> TaskSpec:
            self.submitted.append((app, kwargs.get("item"), kwargs.get("split", False)))
            return make(app, attempt, **kwargs)

        def event(e: Event) -> None:
            self.events.append((e.kind.value, e.app))
            if on_event:
                on_event(e)

        def map_size(app: str) -> list[str]:
            return list(json.loads(Store(self.run_dir).split_count(app).read_text())["labels"])

        executor = LocalExecutor(2, engine="ipython")
        try:
            return schedule(pipeline, executor, make_spec, event, map_size, memo)
        finally:
            executor.shutdown(cancel=True)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Any]:
    made: list[Path] = []

    def make(*cells: Any) -> Runner:
        path = write(tmp_path / "nb.ipynb", *cells)
        store, _ = _make_run_dir(load_pipeline(path), tmp_path / "runs", tmp_path / "cache")
        run_dir = store.run_dir
        made.append(run_dir)
        return Runner(path, run_dir)

    yield make
    for run_dir in made:
        shutil.rmtree(run_dir, ignore_errors=True)


def _statuses(results: dict[str, AppResult]) -> dict[str, str]:
    return {app: r.status.value for app, r in results.items()}


def test_a_hit_is_not_submitted_and_what_reads_it_runs_on_its_value(runner: Any) -> None:
    run = runner(code("x = 20", "app:load"),
                 code("y = x + 1", "app:fit"),
                 code("z = 5", "app:other"),
                 code("print('plot', y * 2, z)", "app:plot"))
    memo = DictMemo()
    first = run(memo)
    assert _statuses(first) == dict.fromkeys(first, "completed")
    # asked once per app, when it became ready, with its predecessors in pipeline order
    assert sorted(memo.checks) == sorted([("load", None, False, ()), ("fit", None, False, ("load",)),
                                          ("other", None, False, ()), ("plot", None, False, ("fit", "other"))])
    assert sorted(t for t, _, _ in memo.stores) == sorted((a, None, False) for a in first)
    assert sorted(memo.finishes) == sorted((a, AppStatus.COMPLETED) for a in first)

    memo.forget("plot")  # an edit to the plot app
    memo.checks, memo.stores, memo.finishes = [], [], []
    again = run(memo)
    assert run.submitted == [("plot", None, False)]
    assert _statuses(again) == {"load": "cached", "fit": "cached", "other": "cached", "plot": "completed"}
    assert run_ok(again) and all(again[a].status.ok for a in again)
    assert again["fit"].cache == {"key": "fit/None/False", "run": "earlier"}
    assert again["fit"].attempts == 0 and again["plot"].cache is None
    assert again["fit"].to_dict()["cache"]["run"] == "earlier"
    assert "plot 42 5" in Path(again["plot"].output).read_text()
    # a hit: "cached" in place of "start", then "done"; never "start"
    assert [k for k, a in run.events if a == "fit"] == ["cached", "done"]
    assert [k for k, a in run.events if a == "plot"] == ["start", "done"]
    assert [t for t, _, _ in memo.stores] == [("plot", None, False)]  # hits are not stored again
    assert sorted(memo.finishes) == sorted([("load", AppStatus.CACHED), ("fit", AppStatus.CACHED),
                                            ("other", AppStatus.CACHED), ("plot", AppStatus.COMPLETED)])


def test_a_map_with_four_item_hits_submits_only_the_two_misses(runner: Any) -> None:
    run = runner(code("n = 4", "parameters"),
                 code("xs = list(range(n))", "app:load"),
                 code("sq = x * x", "app:square", "map:x=xs"),
                 code("print('total', sum(sq))", "app:total"))
    memo = DictMemo()
    first = run(memo, {"n": 4})
    assert [i.status for i in first["square"].items] == [AppStatus.COMPLETED] * 4
    assert ("square", None, True, ("load",)) in memo.checks
    assert sorted(i for a, i, s, _ in memo.checks if a == "square" and not s) == [0, 1, 2, 3]

    for app in ("load", "total"):
        memo.forget(app)  # n changed: load's key, and so the split's and total's, change
    memo.drop("square", split=True)
    grown = run(memo, {"n": 6})
    assert [t for t in run.submitted if t[0] == "square"] == [("square", None, True), ("square", 4, False),
                                                              ("square", 5, False)]
    square = grown["square"]
    assert [i.status.value for i in square.items] == ["cached"] * 4 + ["completed"] * 2
    assert square.status is AppStatus.COMPLETED and run_ok(grown)
    assert [i.to_dict().get("cache", {}).get("key") for i in square.items] == [
        "square/0/False", "square/1/False", "square/2/False", "square/3/False", None, None]
    assert "total 55" in Path(grown["total"].output).read_text()  # 0+1+4+9+16+25: the hits' values too

    memo.forget("total")
    cached = run(memo, {"n": 6})
    assert cached["square"].status is AppStatus.CACHED
    assert run.submitted == [("total", None, False)]
    assert [k for k, a in run.events if a == "square"] == ["start", "split"] + ["item"] * 6 + ["done"]


def test_store_is_told_each_final_task_once_and_a_skipped_app_is_never_checked(runner: Any,
                                                                                tmp_path: Path) -> None:
    run = runner(code("import pathlib\n"
                      f"p = pathlib.Path({str(tmp_path / 'count')!r})\n"
                      "k = int(p.read_text()) if p.exists() else 0\n"
                      "p.write_text(str(k + 1))\n"
                      "assert k >= 2, f'attempt {k + 1} fails'", "app:flaky", "retries:2"),
                 code("raise RuntimeError('always')", "app:broken", "retries:1"),
                 code("print('never')", "app:below", "after:broken"))
    memo = DictMemo()
    results = run(memo)
    assert _statuses(results) == {"flaky": "completed", "broken": "failed", "below": "skipped"}
    assert results["flaky"].attempts == 3 and results["broken"].attempts == 2
    # one store per task, with its last attempt; never for the earlier ones
    assert sorted(memo.stores) == [(("broken", None, False), AppStatus.FAILED, 2),
                                   (("flaky", None, False), AppStatus.COMPLETED, 3)]
    assert [c[0] for c in memo.checks].count("flaky") == 1  # asked before the first attempt only
    assert "below" not in [c[0] for c in memo.checks]
    assert sorted(memo.finishes) == [("below", AppStatus.SKIPPED), ("broken", AppStatus.FAILED),
                                     ("flaky", AppStatus.COMPLETED)]
    assert [k[0][0] for k in memo.kept] == ["flaky"]


def test_a_failed_item_is_stored_failed_and_runs_again_while_the_others_hit(runner: Any,
                                                                             tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    run = runner(code("ks = [1, 2, 3]", "app:load"),
                 code("import pathlib\n"
                      f"assert k != 2 or pathlib.Path({str(flag)!r}).exists(), 'item 2 fails'\n"
                      "r = k * 10", "app:work", "map:k=ks"),
                 code("print('got', r)", "app:show"))
    memo = DictMemo()
    first = run(memo)
    assert _statuses(first) == {"load": "completed", "work": "failed", "show": "skipped"}
    assert ((("work", 1, False), AppStatus.FAILED, 1)) in memo.stores
    flag.write_text("")  # fixed outside the notebook: a resume re-runs only what did not complete
    resumed = run(memo)
    assert run.submitted == [("work", 1, False), ("show", None, False)]
    assert [i.status.value for i in resumed["work"].items] == ["cached", "completed", "cached"]
    assert resumed["work"].status is AppStatus.COMPLETED and run_ok(resumed)
    assert "got [10, 20, 30]" in Path(resumed["show"].output).read_text()


def test_a_replayed_mutation_rewires_its_reader_again_and_nothing_runs(runner: Any) -> None:
    run = runner(code("rows = [[1], [2]]", "app:make"),
                 code("import time\ntime.sleep(1.5)\nalias = rows\nfor r in alias:\n    r.append(0)",
                      "app:mutate"),
                 code("total = sum(len(r) for r in rows)", "app:read"),
                 code("print('below', total)", "app:below"))
    memo = DictMemo()
    first = run(memo)
    assert first["read"].reruns == [{"app": "mutate", "variable": "rows", "reran": True}]
    assert [c[3] for c in memo.checks if c[0] == "read"] == [("make",), ("make", "mutate")]
    assert [f for f in memo.finishes if f[0] == "read"] == [("read", AppStatus.COMPLETED)] * 2
    assert "below 4" in Path(first["below"].output).read_text()
    memo.checks, memo.finishes = [], []
    again = run(memo)
    # mutate's hit reports its change again: read is re-wired, misses nothing, and nothing runs
    assert run.submitted == []
    assert _statuses(again) == dict.fromkeys(again, "cached")
    assert again["read"].reruns is not None and again["read"].reruns[0]["app"] == "mutate"
    assert [c[3] for c in memo.checks if c[0] == "read"][-1] == ("make", "mutate")
    assert [f for f in memo.finishes if f[0] == "read"] == [("read", AppStatus.CACHED)]


def test_progress_says_cached_for_apps_and_counts_cached_items(runner: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = runner(code("xs = [1, 2, 3]", "app:load"),
                 code("y = x + 1", "app:inc", "map:x=xs"))
    memo = DictMemo()
    run(memo)
    capsys.readouterr()
    memo.drop("inc", 2)
    run(memo, on_event=PlainView(2))
    err = capsys.readouterr().err
    assert "(1/2) cached    load\n" in err
    assert "items     inc: 3/3 finished (2 cached)" in err
    assert "(2/2) completed inc in " in err


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, also in a suite started in the background
    (which inherits it ignored; conftest then installs a handler that does nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_tells_the_memo_each_app_s_final_state_and_stores_nothing_unfinished(
        runner: Any, ctrl_c_raises: None) -> None:
    run = runner(code("import time\ntime.sleep(60)\nslow = 1", "app:slow"),
                 code("print(slow)", "app:after"),
                 code(f"import os, signal, time\ntime.sleep(0.5)\nos.kill({os.getpid()}, signal.SIGINT)",
                      "app:stopper"))
    memo = DictMemo()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as caught:
        run(memo)
    assert time.monotonic() - started < 30  # the sleeping app was stopped, not waited for
    results = caught.value.results  # type: ignore[attr-defined]
    assert (results["slow"].status, results["after"].status) == (AppStatus.FAILED, AppStatus.SKIPPED)
    assert results["slow"].error["ename"] == "KeyboardInterrupt"
    finished = dict(memo.finishes)  # each app's last final state
    assert set(finished) == set(results) and finished["slow"] is AppStatus.FAILED
    assert finished["after"] is AppStatus.SKIPPED
    assert "slow" not in [t[0] for t, _, _ in memo.stores]
    assert [c[0] for c in memo.checks if c[0] == "after"] == []


def test_a_hit_replays_a_sys_exit_and_the_apps_below_it_stay_skipped(runner: Any) -> None:
    run = runner(code("x = 1", "app:first"),
                 code("import sys\nsys.exit()", "app:stop"),
                 code("print('unreached')", "app:later"))
    memo = DictMemo()
    first = run(memo)
    assert (first["stop"].status, first["later"].stopped_by) == (AppStatus.COMPLETED, "stop")
    again = run(memo)
    # later ran beside stop: kept if it ended before stop reported its exit, so it may hit or run
    assert [t for t in run.submitted if t[0] != "later"] == []
    assert _statuses(again) == {"first": "cached", "stop": "cached", "later": "skipped"}
    assert again["later"].stopped_by == "stop" and run_ok(again)


def test_an_interrupt_skips_the_items_never_submitted_and_fails_the_running_ones(
        runner: Any, ctrl_c_raises: None) -> None:
    run = runner(code("items = list(range(400))", "app:load"),
                 code("import time\ntime.sleep(0.05)", "app:work", "map:i=items"),
                 code(f"import os, signal, time\ntime.sleep(2)\nos.kill({os.getpid()}, signal.SIGINT)",
                      "app:stopper"))
    with pytest.raises(KeyboardInterrupt) as caught:
        run(DictMemo())
    items = caught.value.results["work"].items  # type: ignore[attr-defined]
    statuses = {status: sum(i.status is status for i in items) for status in AppStatus}
    # 400 items of 50 ms on two workers: far from done after 2 s
    assert statuses[AppStatus.COMPLETED] > 0 and statuses[AppStatus.SKIPPED] > 100, statuses
    assert statuses[AppStatus.FAILED] > 0  # the ones submitted when the run stopped
    assert sum(statuses.values()) == statuses[AppStatus.COMPLETED] + statuses[AppStatus.SKIPPED] \
        + statuses[AppStatus.FAILED] == 400
