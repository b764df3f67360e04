"""Scale: large maps on one worker pool and on many workers, measured in one run.

    python bench/scale.py                    # the full plan below (about an hour on 2 busy cores)
    python bench/scale.py --quick            # the same plan at 50 and 500 items
    python bench/scale.py --sizes 100,1000 --sites local,parsl
    python bench/scale.py --sizes 1000 --sites parsl --kinds sleep

A stand-in on one machine for a multi-node allocation: three sites, written
into an ``nbpipe.toml`` in a scratch directory:

- ``local``: the embedded local pool (one worker per core);
- ``parsl``: a Parsl HighThroughputExecutor with a LocalProvider, 8 blocks of
  8 workers (``init_blocks = min_blocks = max_blocks = 8``,
  ``max_workers_per_node = 8``, ``cores_per_worker`` = cores / 8 so that a
  block of this machine holds 8 workers): 64 workers, as 8 nodes would be;
- ``dask``: a local Dask cluster of 32 single-threaded worker processes.

Each run maps a notebook's ``work`` app over N items, either trivial
(``y = i * 2`` and a short print) or 0.1 s sleep items (and the print). The
plan: trivial items on the local site at every size (1,000 and 10,000);
on the many-worker sites trivial items up to 1,000 only (their per-item
cost is the driver's, as on the local site) and sleep items at every size.
Sleep items on the local site's 2 workers would only measure the sleep
(10,000 of them: 500 s of it). ``--sites parsl --sizes 10000`` runs one
row of the plan. A run that has not ended after ``--limit`` seconds (1,800)
is stopped as Ctrl-C stops it (then killed, with all it started) and shown
as failed.

Each run is ``nbpipe.execute`` in a process of its own (this script with
``--drive``), so that its memory is the driver's alone. Columns:

- items/s: N / the map app's span (its split step to its last item);
  steady/s: the items from the first one's end to the last one's, per second
  (what remains once every worker has started);
- ideal: the ideal span (N x 0.1 s / workers) / the measured one, for
  sleep items; steady: the steady rate / the ideal rate (workers / 0.1 s);
- first: seconds from the call of ``execute`` to the first completed item's
  ``ITEM`` progress event (what a watcher sees), worker start included;
  ended: to that item's end as its worker recorded it (the difference is
  the time the driver took to notice);
- RSS: the driver process's peak resident memory (``ru_maxrss`` of its own
  ``getrusage(RUSAGE_SELF)``, read when the run has returned: workers and
  the zygote are other processes and are not counted);
- files, MB: the run directory's file count and bytes at their peak, sampled
  during the run (a walk of it at most every 0.2 s, more rarely when a walk
  is slow); "left" says whether anything was still there after the run;
- merged: the merged notebook's size;
- load: the 1-minute load average as the run ended (above the core count,
  other work shared the cores).

The floor rows are the physical floor of one item: ``os.fork()`` + exit +
``waitpid`` of a process that has imported what the zygote imports (about
its size), and a pickle round trip of a small value in memory and through a
file. Timings are measurements, not tests: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

import nbpipe

SIZES = (1000, 10_000)
QUICK = (50, 500)
BLOCKS, PER_BLOCK = 8, 8
DASK_WORKERS = 32
SLEEP = 0.1
#: The largest map of trivial items the many-worker sites run.
MANY_TRIVIAL = 1000
#: Seconds one run may take before it is stopped and shown as failed (``--limit``).
LIMIT = 1800.0

#: The map app's cell, by kind of item.
ITEMS = {"trivial": "y = i * 2\nprint('item', i)",
         "sleep": f"import time\ntime.sleep({SLEEP})\ny = i\nprint('item', i)"}


def sites_toml(cores: int | None = None) -> str:
    """The three sites, each with its run directories under ``runs/`` beside the file."""
    cores = cores or os.cpu_count() or 1
    return f"""
[sites.local]
engine = "local"
run_dir = "runs"

[sites.parsl]
engine = "parsl"
provider = "local"
run_dir = "runs"
start_timeout = 300
[sites.parsl.provider_options]
init_blocks = {BLOCKS}
min_blocks = {BLOCKS}
max_blocks = {BLOCKS}
nodes_per_block = 1
[sites.parsl.executor_options]
max_workers_per_node = {PER_BLOCK}
cores_per_worker = {cores / PER_BLOCK}
address = "127.0.0.1"

[sites.dask]
engine = "dask"
workers = {DASK_WORKERS}
run_dir = "runs"
start_timeout = 300
"""


def workers_of(site: str) -> int:
    return {"local": os.cpu_count() or 1, "parsl": BLOCKS * PER_BLOCK, "dask": DASK_WORKERS}[site]


@dataclass(frozen=True)
class Case:
    site: str
    kind: str  # "trivial" or "sleep"
    items: int


def plan(sizes: tuple[int, ...], sites: tuple[str, ...], kinds: tuple[str, ...] = tuple(ITEMS)) -> list[Case]:
    """The runs, in order: see the module's docstring."""
    cases = []
    for site in sites:
        for n in sizes:
            if site == "local" or n <= MANY_TRIVIAL:
                cases.append(Case(site, "trivial", n))
            if site != "local":
                cases.append(Case(site, "sleep", n))
    return [case for case in cases if case.kind in kinds]


def notebook(kind: str, n: int) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source, tags in ((f"items = list(range({n}))", ["app:load"]),
                         (ITEMS[kind], ["app:work", "map:i=items"]),
                         ("total = len(y)\nprint(total)", ["app:total"])):
        cell = v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def drive(path: Path, site: str, report: Path) -> int:
    """In the driver's own process: run the notebook, write what was measured to ``report``."""
    from nbpipe.events import Kind
    from nbpipe.execution.base import AppStatus

    first: list[float] = []

    def on_event(event: Any) -> None:
        if not first and event.kind is Kind.ITEM and event.item_status is AppStatus.COMPLETED:
            first.append(event.time)

    start = time.time()
    run = nbpipe.execute(path, site=site, output=path.with_suffix(".merged.ipynb"), cache=False,
                         on_event=on_event)
    wall = time.time() - start
    work = run.apps["work"]
    items = work.items or []
    ends = sorted(item.end_time for item in items if item.end_time is not None)
    report.write_text(json.dumps({
        "ok": run.ok, "wall": wall, "span": (work.end_time or 0.0) - (work.start_time or 0.0),
        "first": first[0] - start if first else None, "first_end": ends[0] - start if ends else None,
        "steady": (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 and ends[-1] > ends[0] else None,
        "completed": sum(item.status is AppStatus.COMPLETED for item in items),
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "merged": str(run.output), "failure": _failure(run),
    }))
    return 0


def _failure(run: Any) -> str | None:
    """The first error of a failed run, in one line: which app (and item) and what."""
    for name, app in run.apps.items():
        failed = [item for item in app.items or [] if item.error]
        error = app.error or (failed[0].error if failed else None)
        if not app.status.ok:
            where = f"app {name!r}" + (f" ({len(failed)} items failed, first {failed[0].label})" if failed else "")
            what = f"{error.get('ename')}: {error.get('evalue')}" if error else app.status.value
            return f"{where}: {what}"[:300]
    return None


class DirWatch:
    """Samples a directory tree's file count and bytes in a thread; keeps the peaks."""

    def __init__(self, root: Path) -> None:
        self.root, self.files, self.bytes = root, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> DirWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            files, size = tree_size(self.root)
            self.files, self.bytes = max(self.files, files), max(self.bytes, size)
            # At most a tenth of one core on walking: a 30,000-file tree is walked less often.
            self._stop.wait(max(0.2, 10 * (time.perf_counter() - began)))


def tree_size(root: Path) -> tuple[int, int]:
    """Files under ``root`` and their bytes; what vanishes during the walk is skipped."""
    files = size = 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    files, size = files + 1, size + entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return files, size


@dataclass(frozen=True)
class Row:
    case: Case
    workers: int
    wall: float
    items_per_s: float
    steady: float | None  # items/s from the first item's end to the last's
    ideal: float | None  # ideal span / measured span, sleep items only
    ideal_steady: float | None  # steady rate / the ideal rate (workers / 0.1 s), sleep items only
    first: float | None
    first_end: float | None  # when the first item ended, as its worker recorded it
    rss: int
    files: int
    run_bytes: int
    left: bool  # the run directory was still there after the run
    merged: int
    completed: int
    load: float  # the 1-minute load average when the run ended: other work on the cores
    failure: str | None = None  # the run failed: its first error


def measure(case: Case, tmp: Path, limit: float = LIMIT) -> Row:
    """One run, its driver in a process of its own, stopped after ``limit`` seconds."""
    work = tmp / f"{case.site}-{case.kind}-{case.items}"
    work.mkdir()
    (work / "nbpipe.toml").write_text(sites_toml())
    path = work / "scale.ipynb"
    nbformat.write(notebook(case.kind, case.items), path)
    report = work / "report.json"
    began = time.time()
    with DirWatch(work / "runs") as watch:
        ended = _run_driver([sys.executable, str(Path(__file__).resolve()), "--drive", str(path), case.site,
                             str(report)], work, limit)
    got = json.loads(report.read_text()) if report.exists() else {
        "ok": False, "wall": time.time() - began, "span": 0.0, "first": None, "steady": None, "completed": 0,
        "rss": 0, "merged": None, "failure": ended}
    workers = workers_of(case.site)
    sleep = case.kind == "sleep"
    span = got["span"] or float("inf")  # a failed run may never have started its map
    ideal = case.items * SLEEP / workers / span if sleep else None
    steady = got["steady"]
    ideal_steady = steady * SLEEP / workers if sleep and steady else None
    merged = os.path.getsize(got["merged"]) if got["merged"] else 0
    return Row(case, workers, got["wall"], got["completed"] / span, steady, ideal, ideal_steady, got["first"],
               got.get("first_end"), got["rss"], watch.files, watch.bytes, _left(work / "runs"), merged,
               got["completed"], os.getloadavg()[0], got["failure"])


def _run_driver(command: list[str], cwd: Path, limit: float) -> str:
    """Run the driver in a session of its own; past ``limit``, stop it and everything it started.
    Returns what went wrong, for a run that left no report."""
    process = subprocess.Popen(command, cwd=cwd, start_new_session=True)
    try:
        return f"the driver exited with status {process.wait(limit)} (its error is above)"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: nbpipe stops its workers
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left
        process.wait()
        return f"no result within {limit:g} s: stopped"


def _left(runs: Path) -> bool:
    return runs.exists() and any(runs.iterdir())


COLUMNS = ("site", "items", "N", "done", "workers", "wall s", "items/s", "steady/s", "ideal", "steady", "first s",
           "ended s", "RSS MB", "files", "run MB", "left", "merged MB", "load")


def cells(row: Row) -> tuple[str, ...]:
    c = row.case
    return (c.site, c.kind, f"{c.items:,}", f"{row.completed:,}", str(row.workers), f"{row.wall:.1f}",
            f"{row.items_per_s:.0f}",
            f"{row.steady:.0f}" if row.steady is not None else "-",
            f"{row.ideal:.2f}" if row.ideal is not None else "-",
            f"{row.ideal_steady:.2f}" if row.ideal_steady is not None else "-",
            f"{row.first:.2f}" if row.first is not None else "-",
            f"{row.first_end:.2f}" if row.first_end is not None else "-", f"{row.rss / 2**20:.0f}",
            f"{row.files:,}", f"{row.run_bytes / 2**20:.1f}", "yes" if row.left else "no",
            f"{row.merged / 2**20:.2f}", f"{row.load:.1f}")


def table(rows: list[Row]) -> str:
    lines = [COLUMNS] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
                     for line in lines)


FLOOR = """
import json, os, pickle, statistics, tempfile, time
import cloudpickle, numpy, papermill, nbformat
from IPython.core.interactiveshell import InteractiveShell
import nbpipe.execution.task
InteractiveShell.instance()
rss = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) * 1024

def median(f, n):
    times = []
    for _ in range(n):
        began = time.perf_counter()
        f()
        times.append(time.perf_counter() - began)
    return statistics.median(times)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

value = {"y": 2, "label": "item 17"}
path = os.path.join(tempfile.mkdtemp(), "v.pickle")

def through_file():
    with open(path, "wb") as f:
        cloudpickle.dump(value, f)
    with open(path, "rb") as f:
        assert pickle.load(f) == value

print(json.dumps({"rss": rss, "fork": median(fork, 200),
                  "pickle": median(lambda: pickle.loads(cloudpickle.dumps(value)), 2000),
                  "file": median(through_file, 500)}))
os.unlink(path)
"""


def floor() -> list[tuple[str, str]]:
    """The physical floor of one item, measured in a process the zygote's size."""
    out = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True).stdout
    got = json.loads(out.splitlines()[-1])
    return [(f"floor: fork + exit + wait of a {got['rss'] / 2**20:.0f} MB preloaded process",
             f"{got['fork'] * 1000:.2f} ms (median of 200)"),
            ("floor: pickle round trip of a small value, in memory", f"{got['pickle'] * 1e6:.0f} us (median)"),
            ("floor: the same through a file", f"{got['file'] * 1e6:.0f} us (median)")]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--drive"]:
        return drive(Path(argv[1]), argv[2], Path(argv[3]))
    parser = argparse.ArgumentParser(prog="bench/scale.py", description="Large maps on many workers.")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK[0]} and {QUICK[1]}")
    parser.add_argument("--sizes", help="comma-separated item counts (default: 1000,10000)")
    parser.add_argument("--sites", default="local,parsl,dask", help="comma-separated: local, parsl, dask")
    parser.add_argument("--kinds", default=",".join(ITEMS), help="comma-separated: trivial, sleep")
    parser.add_argument("--limit", type=float, default=LIMIT, help="seconds a run may take (default: %(default)g)")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else QUICK if args.quick else SIZES
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in plan(sizes, tuple(args.sites.split(",")), tuple(args.kinds.split(","))):
            rows.append(measure(case, Path(tmp), args.limit))
            print("  " + "  ".join(cells(rows[-1])), file=sys.stderr, flush=True)
    print(f"nbpipe {nbpipe.__version__}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(table(rows))
    for row in rows:
        if row.failure:
            print(f"FAILED: {row.case.site} {row.case.kind} {row.case.items:,}: {row.failure}")
    floors = floor()
    width = max(len(label) for label, _ in floors)
    for label, value in floors:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
