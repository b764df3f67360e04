"""map: fan-out (SPEC §2): one task per element, lists downstream, labelled outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from nbbuild import by_id, code, nbpipe_cli, read, text_of, write

import nbpipe
from nbpipe.api import AppStatus


def _run(path: Path, **kwargs: object) -> nbpipe.RunResult:
    return nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), workers=2, **kwargs)  # type: ignore[arg-type]


def test_map_runs_once_per_item_and_downstream_sees_lists_in_order(tmp_path: Path) -> None:
    square = code("sq = chunk * chunk + base\nprint('chunk', chunk)", "app:square", "map:chunk=chunks")
    merge = code("print(sq)\ntotal = sum(sq)", "app:merge")
    path = write(tmp_path / "m.ipynb",
                 code("chunks = [3, 1, 2]\nbase = 10", "app:load"), square, merge)
    run = _run(path)
    assert run.ok
    assert [i.status for i in run.apps["square"].items] == [AppStatus.COMPLETED] * 3
    merged = read(run.output)
    assert text_of(by_id(merged, merge.id)) == "[19, 11, 14]\n"
    shown = text_of(by_id(merged, square.id))
    # every item's output appears, labelled with its item, in the iterable's order
    assert shown.index("[item 0: chunk = 3]") < shown.index("chunk 3") < shown.index("[item 1: chunk = 1]")
    assert "chunk 2" in shown
    meta = by_id(merged, square.id).metadata["nbpipe"]
    assert meta["items"] == 3 and [s["status"] for s in meta["item_status"]] == ["completed"] * 3
    items = merged.metadata["nbpipe"]["apps"]["square"]["items"]
    assert [i["item"] for i in items] == ["3", "1", "2"]
    assert all("duration" in i for i in items)


def test_map_over_a_parameter_and_the_cli_override(tmp_path: Path) -> None:
    path = write(tmp_path / "p.ipynb",
                 code("values = [1, 2]", "parameters"),
                 code("double = v * 2", "app:work", "map:v=values"),
                 code("print(double)", "app:show"))
    done = nbpipe_cli("execute", path, "-p", "values", "[5, 6, 7]", cwd=tmp_path)
    # -p values are strings or numbers, as papermill parses them; a list needs -f
    assert done.returncode == 2, done.stderr
    assert "is not a list of items to map over" in done.stderr and "map:v=values" in done.stderr
    (tmp_path / "p.yaml").write_text("values: [5, 6, 7]\n")
    done = nbpipe_cli("execute", path, "-f", "p.yaml", "-o", "out.ipynb", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "[10, 12, 14]" in "".join(text_of(c) for c in read(tmp_path / "out.ipynb").cells)


def test_a_failing_item_fails_the_app_names_the_item_and_keeps_the_others(tmp_path: Path) -> None:
    inv = code("r = 1 / (3 - k)\nprint('r', r)", "app:inv", "map:k=ks")
    after = code("print(r)", "app:after")
    path = write(tmp_path / "f.ipynb", code("ks = [1, 2, 3, 4]", "app:load"), inv, after)
    run = _run(path)
    result = run.apps["inv"]
    assert result.status is AppStatus.FAILED
    assert "item 2 (k = 3) of 4" in result.error["evalue"]
    assert [i.status for i in result.items] == [AppStatus.COMPLETED, AppStatus.COMPLETED,
                                                AppStatus.FAILED, AppStatus.COMPLETED]
    assert run.apps["after"].status is AppStatus.SKIPPED
    merged = read(run.output)
    shown = text_of(by_id(merged, inv.id))
    assert "r 0.5" in shown and "r -1.0" in shown and "ZeroDivisionError" in shown
    assert by_id(merged, inv.id).metadata["nbpipe"]["status"] == "failed"


def test_map_over_an_empty_iterable_gives_empty_lists(tmp_path: Path) -> None:
    work = code("y = x + 1", "app:work", "map:x=xs")
    path = write(tmp_path / "e.ipynb", code("xs = []", "app:load"), work,
                 code("print('got', y)", "app:show"))
    run = _run(path)
    assert run.ok
    merged = read(run.output)
    assert "got []" in "".join(text_of(c) for c in merged.cells)
    assert by_id(merged, work.id).metadata["nbpipe"]["items"] == 0


def test_map_iterable_that_is_not_iterable_fails_before_any_item(tmp_path: Path) -> None:
    path = write(tmp_path / "n.ipynb", code("n = 5", "app:load"),
                 code("y = x", "app:work", "map:x=n"))
    run = _run(path)
    result = run.apps["work"]
    assert result.status is AppStatus.FAILED
    assert result.items is None  # no item ran
    assert "map:x=n of app 'work': n is int, which is not iterable" in result.error["evalue"]


def test_map_iterable_defined_nowhere_is_an_error_before_anything_runs(tmp_path: Path) -> None:
    path = write(tmp_path / "u.ipynb", code("y = x", "app:work", "map:x=missing"))
    with pytest.raises(nbpipe.TagError) as info:
        nbpipe.execute(path)
    assert "map:x=missing" in str(info.value) and "no app above this cell" in str(info.value)
    assert not path.with_suffix(".merged.ipynb").exists()


@pytest.mark.slow
def test_a_thousand_items_run_and_the_merged_notebook_stays_readable(tmp_path: Path) -> None:
    work = code("y = i * 2\nprint('item', i)", "app:work", "map:i=items")
    path = write(tmp_path / "k.ipynb", code("items = list(range(1000))", "app:load"), work,
                 code("print(sum(y))", "app:total"))
    run = _run(path)
    assert run.ok
    merged = read(run.output)
    assert "999000" in "".join(text_of(c) for c in merged.cells)
    labels = [o for o in by_id(merged, work.id).outputs if o.output_type == "display_data"]
    assert len(labels) < 40  # folded: first and last items, and a note for the rest
    assert any("item(s) folded" in o.data["text/plain"] for o in labels)
    assert run.output.stat().st_size < 1_000_000


def test_items_retried_after_a_failure_complete_the_app_and_run_downstream(tmp_path: Path) -> None:
    # Items 1 and 2 fail on their first attempt (which leaves a marker file) and succeed,
    # slowly, on their second; item 3 succeeds at once, while the retries still run.
    flaky = code("import time\n"
                 "from pathlib import Path\n"
                 "marker = Path(f'tried-{k}')\n"
                 "first = not marker.exists()\n"
                 "marker.touch()\n"
                 "if first and k != 3:\n"
                 "    raise RuntimeError(f'first attempt of {k}')\n"
                 "if k != 3:\n"
                 "    time.sleep(1)\n"
                 "y = k * 10", "app:flaky", "map:k=ks", "retries:1")
    after = code("print('sum', sum(y))", "app:after")
    path = write(tmp_path / "r.ipynb", code("ks = [1, 2, 3]", "app:load"), flaky, after)
    events: list[tuple[str, str, str]] = []
    run = _run(path, on_event=lambda e: events.append((e.kind.value, e.app, e.status.value)))
    assert run.ok, {n: (r.status, r.error, r.reason) for n, r in run.apps.items()}
    assert [i.status for i in run.apps["flaky"].items] == [AppStatus.COMPLETED] * 3
    assert [i.attempts for i in run.apps["flaky"].items] == [2, 2, 1]
    assert run.apps["after"].status is AppStatus.COMPLETED
    assert "sum 60" in text_of(by_id(read(run.output), after.id))
    done = [(app, status) for kind, app, status in events if kind == "done"]
    assert done == [("load", "completed"), ("flaky", "completed"), ("after", "completed")]
    assert not [e for e in events if e[0] == "skip"]
