"""The cache, measured: ratios of a re-run against the first run, side by side in one run.

    python bench/cache.py

(a) the HEP example: a first run into an empty cache, then a re-run with
    nothing changed (every app from the cache), in-process and as the
    ``nbpipe execute`` command a user types (which adds the interpreter's start);
(b) the HEP example after an edit to the plot app: only the plot runs;
(c) a map over 1,000 trivial items, then over 1,010: 10 items run.

Timings are measurements, not tests: nothing here passes or fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

import nbpipe
from run import measure  # bench/ is on the path when this script runs

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"


def _run(path: Path, **kwargs: object) -> tuple[float, nbpipe.RunResult]:
    start = time.perf_counter()
    run = nbpipe.execute(path, cache=True, **kwargs)  # type: ignore[arg-type]
    assert run.ok, {n: r.error for n, r in run.apps.items() if not r.status.ok}
    return time.perf_counter() - start, run


def _command(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nbpipe", "execute", str(path)], check=True, capture_output=True,
                   env={**os.environ, "NBPIPE_CACHE": "on"})
    return time.perf_counter() - start


def _ran(run: nbpipe.RunResult) -> str:
    ran = [name for name, r in run.apps.items() if r.status.value != "cached"]
    return ", ".join(ran) or "none"


def _example(tmp: Path, name: str) -> Path:
    work = tmp / name
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("*.merged.*", ".nbpipe-*"))
    return work / "zmumu.ipynb"


def hep(tmp: Path) -> list[tuple[str, str]]:
    path = _example(tmp, "hep")
    first, _ = _run(path)
    again, run = _run(path)
    typed = _example(tmp, "typed")
    first_command, again_command = _command(typed), _command(typed)
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "app:plot" in c.metadata.get("tags", []))
    cell.source += "\nplt.title('Z peak, edited')"
    nbformat.write(nb, path)
    edited, edit_run = _run(path)
    return [
        ("HEP example, first run (empty cache)", f"{first:.2f} s"),
        ("HEP example, re-run, nothing changed", f"{again:.2f} s = {again / first:.2f}x the first run "
                                                 f"(ran: {_ran(run)})"),
        ("the same with `nbpipe execute` (Python's start too)",
         f"{again_command:.2f} s = {again_command / first_command:.2f}x its first run ({first_command:.2f} s)"),
        ("HEP example, plot app edited", f"{edited:.2f} s = {edited / first:.2f}x (ran: {_ran(edit_run)})"),
    ]


def grow(tmp: Path) -> list[tuple[str, str]]:
    from nbformat import v4

    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source, tags in (("n = 1000", ["parameters"]), ("items = list(range(n))", ["app:load"]),
                         ("y = i * 2", ["app:work", "map:i=items"]), ("total = sum(y)", ["app:total"])):
        cell = v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    path = tmp / "grow.ipynb"
    nbformat.write(nb, path)
    first, _ = _run(path, parameters={"n": 1000})
    grown, run = _run(path, parameters={"n": 1010})
    items = run.apps["work"].items or []
    ran = sum(1 for i in items if i.status.value != "cached")
    return [
        ("map over 1,000 items, first run", f"{first:.2f} s"),
        ("map grown to 1,010 items", f"{grown:.2f} s = {grown / first:.2f}x the first run "
                                     f"({ran} items ran, {len(items) - ran} from the cache)"),
    ]


def main() -> int:
    return measure([hep, grow])


if __name__ == "__main__":
    sys.exit(main())
