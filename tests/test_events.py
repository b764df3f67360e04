"""The typed progress events a run emits (``nbpipe.execute(on_event=...)``)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from nbbuild import code, nbpipe_cli, write

import nbpipe
from nbpipe.events import Event, Kind
from nbpipe.execution.base import AppStatus


def _run(path: Path, events: list[Event]) -> nbpipe.RunResult:
    return nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), workers=2, on_event=events.append)


@pytest.fixture
def mapped(tmp_path: Path) -> Path:
    return write(tmp_path / "m.ipynb",
                 code("import time\nchunks = [1, 2, 0, 4]", "app:load"),
                 code("time.sleep(0.05)\nshare = 12 / chunk", "app:divide", "map:chunk=chunks"),
                 code("total = sum(share)", "app:total"))


def test_events_are_frozen_snapshots_in_order(mapped: Path) -> None:
    started = time.time()
    events: list[Event] = []
    run = _run(mapped, events)
    assert not run.ok
    kinds = [(e.kind, e.app) for e in events if e.kind is not Kind.ITEM]
    assert kinds == [(Kind.START, "load"), (Kind.DONE, "load"), (Kind.START, "divide"), (Kind.SPLIT, "divide"),
                     (Kind.DONE, "divide"), (Kind.SKIP, "total")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].status = AppStatus.FAILED  # type: ignore[misc]
    # a snapshot: the start event still says running although the app has long completed
    assert events[0].status is AppStatus.RUNNING and events[1].status is AppStatus.COMPLETED
    assert all(started <= e.time <= time.time() for e in events)
    assert [e.time for e in events] == sorted(e.time for e in events)
    done = events[1]
    assert done.duration is not None and 0 < done.duration < 60 and done.host


def test_map_events_count_items_and_name_the_failed_one(mapped: Path) -> None:
    events: list[Event] = []
    _run(mapped, events)
    split = next(e for e in events if e.kind is Kind.SPLIT)
    assert split.items is not None and (split.items.total, split.items.done) == (4, 0)
    items = [e for e in events if e.kind is Kind.ITEM]
    assert sorted(e.item for e in items) == [0, 1, 2, 3]  # type: ignore[type-var]
    assert [e.items.done for e in items] == [1, 2, 3, 4]  # type: ignore[union-attr]
    bad = next(e for e in items if e.item == 2)
    assert bad.item_status is AppStatus.FAILED and bad.label == "0"
    assert bad.error is not None and bad.error.ename == "ZeroDivisionError"
    assert items[-1].items.failed == 1  # type: ignore[union-attr]
    done = next(e for e in events if e.kind is Kind.DONE and e.app == "divide")
    assert done.status is AppStatus.FAILED and done.items is not None and done.items.failed == 1
    skip = next(e for e in events if e.kind is Kind.SKIP)
    assert skip.reason and "divide" in skip.reason


def test_the_map_progress_line_says_how_many_items_failed(mapped: Path) -> None:
    result = nbpipe_cli("execute", mapped, "-o", mapped.with_suffix(".out.ipynb"), cwd=mapped.parent)
    assert result.returncode == 1, result.stderr
    assert "items     divide: 4/4 finished (1 failed)" in result.stderr
    assert "item 2 (0): ZeroDivisionError: division by zero" in result.stderr


def test_submit_start_and_end_times_are_recorded_for_apps_and_items(mapped: Path) -> None:
    events: list[Event] = []
    run = _run(mapped, events)
    app = run.apps["divide"].to_dict()
    assert app["submit_time"] <= app["start_time"] <= app["end_time"]
    for item in app["items"]:
        assert item["submit_time"] <= item["start_time"] <= item["end_time"], item
    assert run.notebook.metadata["nbpipe"]["apps"]["divide"]["items"][0]["start_time"] > 0
