"""A large map's merge (issue 14): the items file beside the merged notebook, a bounded
notebook and a driver that reads the item notebooks one at a time."""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from nbbuild import by_id, code, nbpipe_cli, read, text_of, write

import nbpipe
from nbpipe.api import AppStatus, _read_executed
from nbpipe.itemsfile import ItemsFile, items_path, read_items
from nbpipe.merge import SHOW_HEAD, SHOW_TAIL, SIDECAR_ITEMS, merge

WORK = "y = i * 2\nprint('item', i)"


def _map_notebook(path: Path, n: int, work: str = WORK) -> tuple[Path, Any]:
    cell = code(work, "app:work", "map:i=items")
    write(path, code(f"items = list(range({n}))", "app:load"), cell, code("print(sum(y))", "app:total"))
    return path, cell


def _run(path: Path, **kwargs: Any) -> nbpipe.RunResult:
    return nbpipe.execute(path, output=path.with_suffix(".merged.ipynb"), workers=2, cache=False, **kwargs)


@dataclasses.dataclass
class Large:
    run: nbpipe.RunResult
    cell: Any
    n: int


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Large:
    """A map past SIDECAR_ITEMS, its run directory kept (the merge test reads its item notebooks)."""
    n = 2 * (SIDECAR_ITEMS + 10)  # half of it is past SIDECAR_ITEMS too
    path, cell = _map_notebook(tmp_path_factory.mktemp("large") / "big.ipynb", n)
    return Large(_run(path, html=True, keep_run_dir=True), cell, n)


def test_every_item_is_one_line_of_the_items_file_with_what_it_printed(large: Large) -> None:
    assert large.run.ok
    merged = read(large.run.output)
    sidecar = items_path(large.run.output)
    assert merged.metadata["nbpipe"]["items_file"] == {"file": sidecar.name, "apps": {"work": large.n}}
    lines = list(read_items(sidecar))
    assert [line["index"] for line in lines] == list(range(large.n))  # each item once, in order
    assert all(line["app"] == "work" and line["status"] == "completed" for line in lines)
    assert [text_of({"outputs": line["outputs"][large.cell.id]}) for line in lines] == \
        [f"item {i}\n" for i in range(large.n)]
    assert all(line["start_time"] <= line["end_time"] for line in lines)


def test_the_merged_notebook_shows_the_first_and_last_items_and_links_the_rest(large: Large) -> None:
    merged = read(large.run.output)
    cell = by_id(merged, large.cell.id)
    shown = text_of(cell)
    kept = [*range(SHOW_HEAD), *range(large.n - SHOW_TAIL, large.n)]
    assert all(f"[item {i}: i = {i}]" in shown and f"item {i}\n" in shown for i in kept)
    assert f"[item {SHOW_HEAD}: i = {SHOW_HEAD}]" not in shown
    name = items_path(large.run.output).name
    note = next(o for o in cell.outputs if o.get("metadata", {}).get("nbpipe", {}).get("folded"))
    assert f"[{name}]({name})" in note.data["text/markdown"]  # a link the reader can follow
    assert "folded" not in cell.metadata["nbpipe"]  # the text is in the items file, not the cell
    app = merged.metadata["nbpipe"]["apps"]["work"]
    assert app["item_count"] == large.n and app["items_file"] == name
    assert [i["index"] for i in app["items"]] == kept
    assert str(sum(2 * i for i in range(large.n))) in text_of(merged.cells[-1])


def test_the_report_links_the_items_file(large: Large) -> None:
    assert large.run.html is not None
    name = items_path(large.run.output).name
    html = large.run.html.read_text()
    assert f'<a href="{name}">{name}</a>' in html
    assert f"{large.n - SHOW_HEAD - SHOW_TAIL} more item(s) folded here" in html
    assert f"Timeline of {large.n + 2} tasks" in html  # every item's bar: the items file's times
    # nbpipe render of the merged notebook (the items file beside it) links it too
    done = nbpipe_cli("render", large.run.output, "-o", "again.html", cwd=large.run.output.parent)
    assert done.returncode == 0, done.stderr
    assert f'<a href="{name}">{name}</a>' in (large.run.output.parent / "again.html").read_text()


def test_the_merged_notebook_does_not_grow_with_the_items(tmp_path: Path, large: Large) -> None:
    """Twice the items: the items file doubles, the merged notebook stays as it was (a few
    bytes more for the labels' wider numbers)."""
    path, _ = _map_notebook(tmp_path / "big.ipynb", large.n // 2)
    half = _run(path)
    assert half.ok
    grew = large.run.output.stat().st_size - half.output.stat().st_size
    per_item = (items_path(large.run.output).stat().st_size - items_path(half.output).stat().st_size) / (large.n // 2)
    assert per_item > 100  # each item's line
    assert grew < 5 * per_item, (grew, per_item)
    assert large.run.output.stat().st_size < 40_000


def _peak_of_merge(large: Large, count: int, where: Path) -> int:
    """tracemalloc's peak while merging the first ``count`` items of the large run."""
    pipeline = nbpipe.load_pipeline(large.run.output.with_name("big.ipynb"))
    results = dict(large.run.apps)
    work = results["work"]
    results["work"] = dataclasses.replace(work, items=work.items[:count])
    executed = {app: _read_executed(r.output) for app, r in results.items() if r.items is None}
    executed["work"] = (_read_executed(item.output) for item in results["work"].items)
    items = ItemsFile(where / f"{count}.items.jsonl")
    tracemalloc.start()
    try:
        merge(pipeline, results, executed, parameters={}, site="local", items_file=items)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        items.commit()


def test_the_merge_holds_one_item_notebook_at_a_time(tmp_path: Path, large: Large) -> None:
    _peak_of_merge(large, 2, tmp_path)  # first use: imports, nbformat's schema
    quarter, whole = _peak_of_merge(large, large.n // 4, tmp_path), _peak_of_merge(large, large.n, tmp_path)
    assert len(list(read_items(tmp_path / f"{large.n}.items.jsonl"))) == large.n
    assert whole < 2 * quarter, (quarter, whole)  # holding every item's notebook: ~4x


def test_a_failed_item_is_shown_inline_not_only_in_the_items_file(tmp_path: Path) -> None:
    n, bad = SIDECAR_ITEMS + 20, SIDECAR_ITEMS // 2
    path, cell = _map_notebook(tmp_path / "bad.ipynb", n,
                               f"if i == {bad}:\n    raise ValueError(f'bad item {{i}}')\nprint('item', i)")
    run = _run(path)
    assert run.apps["work"].status is AppStatus.FAILED
    merged = read(run.output)
    shown = by_id(merged, cell.id)
    assert f"[item {bad}: i = {bad}]" in text_of(shown) and f"ValueError: bad item {bad}" in text_of(shown)
    assert shown.metadata["nbpipe"]["status"] == "failed"
    records = merged.metadata["nbpipe"]["apps"]["work"]["items"]
    assert any(i["index"] == bad and i["status"] == "failed" for i in records)
    lines = {line["index"]: line for line in read_items(items_path(run.output))}
    assert len(lines) == n and lines[bad]["status"] == "failed" and lines[bad]["error"]["ename"] == "ValueError"


def test_a_small_map_writes_no_items_file_and_removes_a_stale_one(tmp_path: Path) -> None:
    path, cell = _map_notebook(tmp_path / "small.ipynb", 30)
    stale = items_path(path.with_suffix(".merged.ipynb"))
    stale.write_text('{"app": "work", "index": 0}\n')
    run = _run(path)
    assert run.ok and not stale.exists()
    merged = read(run.output)
    assert "items_file" not in merged.metadata["nbpipe"]
    assert len(by_id(merged, cell.id).metadata["nbpipe"]["folded"]) == 30 - SHOW_HEAD - SHOW_TAIL


@pytest.mark.slow
def test_two_thousand_items_keep_the_merged_notebook_small(tmp_path: Path) -> None:
    path, cell = _map_notebook(tmp_path / "k.ipynb", 2000)
    run = _run(path)
    assert run.ok
    assert run.output.stat().st_size < 40_000
    lines = list(read_items(items_path(run.output)))
    assert [line["index"] for line in lines] == list(range(2000))
    assert [text_of({"outputs": line["outputs"][cell.id]}) for line in lines] == [f"item {i}\n" for i in range(2000)]
