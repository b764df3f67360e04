"""What watching and publishing a run costs, measured side by side in one run.

    python bench/report.py

(a) a map over 1,000 trivial items, run with no view, with the plain progress
    lines, with the terminal's live view (drawn into a pseudo-terminal's
    buffer) and with Jupyter's status view (its markup rendered at each
    redraw): the run's time against the run without a view;
(b) the report: the HEP example's merged notebook, and the 1,000-item map's,
    rendered as nbpipe's report against nbconvert's plain JupyterLab page
    (``jupyter nbconvert --to html``), with the figures' layout apart.

Timings are measurements, not tests: nothing here passes or fails.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import nbformat

import nbpipe
from run import _notebook, _write, measure  # bench/ is on the path when this script runs

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"
ITEMS = 1000


def _timed(call: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def _map_notebook(tmp: Path) -> Path:
    return _write(tmp, "map", _notebook([(f"xs = list(range({ITEMS}))", ["app:load"]),
                                         ("y = x * 2", ["app:double", "map:x=xs"]),
                                         ("total = sum(y)", ["app:total"])]))


def _run(path: Path, on_event: Any = None) -> float:
    seconds, run = _timed(lambda: nbpipe.execute(path, output=path.with_suffix(".merged.ipynb"), cache=False,
                                                 on_event=on_event or (lambda event: None)))
    assert run.ok
    return seconds


def views(tmp: Path) -> list[tuple[str, str]]:
    from rich.console import Console

    from nbpipe.progress import LiveView, PlainView
    from nbpipe.status import Board

    path = _map_notebook(tmp)
    pipeline = nbpipe.load_pipeline(path)
    _run(path)  # warm the file cache and the imports
    bare = _run(path)
    rows = [(f"map of {ITEMS} items, no view", f"{bare:.2f} s")]

    class Jupyter:  # what the cell's view does at each redraw, without a front end
        def __init__(self) -> None:
            self.board = Board.of(pipeline)

        def __call__(self, event: Any) -> None:
            self.board.update(event)
            self.board.html()

    import contextlib

    with contextlib.redirect_stderr(io.StringIO()):
        plain = _run(path, PlainView(len(pipeline.apps)))
    rows.append(("  with the plain progress lines", f"{plain:.2f} s = {plain / bare:.2f}x"))
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with LiveView(len(pipeline.apps), console=console) as view:
        live = _run(path, view)
    rows.append(("  with the terminal's live view", f"{live:.2f} s = {live / bare:.2f}x"))
    jupyter = _run(path, Jupyter())
    rows.append(("  with Jupyter's view, redrawn at every event", f"{jupyter:.2f} s = {jupyter / bare:.2f}x"))
    return rows


def reports(tmp: Path) -> list[tuple[str, str]]:
    from nbconvert import HTMLExporter

    from nbpipe import layout
    from nbpipe.render import render_html

    example = tmp / "zmumu.ipynb"
    example.write_text((EXAMPLES / "zmumu.ipynb").read_text())
    (tmp / "data").symlink_to(EXAMPLES / "data")
    nbpipe.execute(example, output=tmp / "zmumu.merged.ipynb", cache=False)
    _run(_map_notebook(tmp))
    rows = []
    for name in ("zmumu", "map"):
        nb = nbformat.read(tmp / f"{name}.merged.ipynb", as_version=4)
        render_html(nb, tmp / "warm.html")
        ours, _ = _timed(lambda: render_html(nb, tmp / f"{name}.html"))
        lab, _ = _timed(lambda: HTMLExporter(template_name="lab").from_notebook_node(nb))
        meta = nb.metadata["nbpipe"]
        figures, _ = _timed(lambda: (layout.dag(meta, set()), layout.timeline(meta)))
        size = (tmp / f"{name}.html").stat().st_size
        rows.append((f"report of {name}: nbconvert's lab page / nbpipe's",
                     f"{lab:.2f} s / {ours:.2f} s = {ours / lab:.2f}x ({size / 1e6:.1f} MB; figures {figures:.3f} s)"))
    return rows


if __name__ == "__main__":
    import sys

    sys.exit(measure([views, reports]))
