"""Limits of an app on both engines: huge outputs, the app's timeout, ``SystemExit``, declared outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import papermill
import pytest
from nbbuild import by_id, code, read, text_of, write

import nbpipe


def _run(path: Path, **kwargs: object) -> nbpipe.RunResult:
    return nbpipe.execute(path, output=path.with_suffix(".out.ipynb"), workers=1, **kwargs)  # type: ignore[arg-type]


def _print_time(tmp_path: Path, lines: int) -> float:
    loud = code(f"for i in range({lines}):\n    print('line', i, '.' * 40, flush=True)", "app:loud")
    run = _run(write(tmp_path / f"loud{lines}.ipynb", loud))
    assert run.ok
    text = by_id(read(run.output), loud.id).outputs[0].text
    assert text.count("\n") == lines and text.endswith(f"line {lines - 1} {'.' * 40}\n")
    return run.apps["loud"].duration or 0.0


def test_printing_costs_time_linear_in_the_lines_printed(tmp_path: Path) -> None:
    # Each flushed print is sent at once, as ipykernel sends it; re-copying the
    # whole stream on each made 8x the lines cost 64x the time (80,000: 87 s).
    small, large = _print_time(tmp_path, 10_000), _print_time(tmp_path, 80_000)
    assert large < 20 * max(small, 0.05), (small, large)


def test_a_declared_output_counts_only_when_the_app_writes_it(tmp_path: Path, engine: str) -> None:
    (tmp_path / "stale.csv").write_text("from an earlier run\n")
    (tmp_path / "fresh.csv").write_text("from an earlier run\n")
    src = write(tmp_path / "nb.ipynb",
                code("x = 1", "app:stale", "outputs:stale.csv"),
                # the same bytes again, within the same second: still a write
                code("open('fresh.csv', 'w').write('from an earlier run\\n')", "app:fresh", "outputs:fresh.csv"),
                code("y = 2", "app:glob", "outputs:*.csv"))
    run = _run(src, engine=engine)
    assert run.apps["stale"].status.value == "failed"
    assert run.apps["stale"].error["ename"] == "MissingOutputError"
    assert "outputs:stale.csv" in run.apps["stale"].error["evalue"]
    assert "existed before" in run.apps["stale"].error["evalue"]
    assert run.apps["fresh"].status.value == "completed"
    assert run.apps["glob"].status.value == "failed"  # matches only files it did not write
    assert (tmp_path / "stale.csv").read_text() == "from an earlier run\n"  # never deleted


def test_the_timeout_bounds_the_whole_app_not_each_cell(tmp_path: Path, engine: str) -> None:
    cells = [code(f"import time\nprint('cell {i}', flush=True)\ntime.sleep(1.5)", "app:slow", "timeout:2")
             if i == 0 else code(f"print('cell {i}', flush=True)\ntime.sleep(1.5)") for i in range(3)]
    run = _run(write(tmp_path / "t.ipynb", *cells, code("done = 1", "app:other")), engine=engine)
    slow = run.apps["slow"]
    assert slow.status.value == "timed_out", (slow.status, slow.error)
    assert "timeout of 2 s" in slow.error["evalue"]
    merged = read(run.output)
    assert "cell 0" in text_of(by_id(merged, cells[0].id))  # the output so far is kept
    assert "cell 2" not in text_of(by_id(merged, cells[2].id))
    assert by_id(merged, cells[2].id).execution_count is None
    assert run.apps["other"].status.value == "completed"


def _exiting_notebook(tmp_path: Path, statement: str) -> tuple[Path, list[Any]]:
    cells = [code("x = 1\nprint('a')", "app:a"),
             code(f"import sys\nprint('before')\n{statement}\nprint('after')", "app:b"),
             code("y = x + 1\nprint('rest of b', y)"),
             code("import time\ntime.sleep(0.5)\nprint('c', x)", "app:c"),
             code("print('d', y)", "app:d")]
    return write(tmp_path / "exit.ipynb", *cells), cells


@pytest.mark.parametrize("statement, clean", [("sys.exit(0)", True), ("raise SystemExit", True),
                                              ("sys.exit('bad input')", False)])
def test_system_exit_stops_the_notebook_there_as_papermill_does(tmp_path: Path, engine: str,
                                                                 statement: str, clean: bool) -> None:
    path, cells = _exiting_notebook(tmp_path, statement)
    pm = tmp_path / "pm.ipynb"
    try:
        papermill.execute_notebook(str(path), str(pm), progress_bar=False, kernel_name="python3")
        papermill_ok = True
    except papermill.PapermillExecutionError:
        papermill_ok = False
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", workers=2, engine=engine)
    assert run.ok is papermill_ok is clean
    b = run.apps["b"]
    assert b.status.value == ("completed" if clean else "failed") and b.error["ename"] == "SystemExit"
    assert b.error["cell"] == 1
    for later in ("c", "d"):  # serial execution never reaches them
        assert run.apps[later].status.value == "skipped"
        assert "app 'b' exited in cell 1" in run.apps[later].reason
    assert run.apps["a"].status.value == "completed"
    merged, serial = read(run.output), read(pm)
    for cell in cells:
        ours, theirs = by_id(merged, cell.id), by_id(serial, cell.id)
        assert (ours.execution_count is None) is (theirs.execution_count is None), cell.source
        assert [o.output_type for o in ours.outputs] == [o.output_type for o in theirs.outputs]
    exit_cell = by_id(merged, cells[1].id)
    assert "before" in text_of(exit_cell) and "after" not in text_of(exit_cell)
    assert "SystemExit" in text_of(exit_cell)
    assert merged.metadata["nbpipe"]["status"] == ("completed" if clean else "failed")
