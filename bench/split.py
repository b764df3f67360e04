"""Splitting without tags, measured: ratios side by side in one run.

    python bench/split.py              # both parts (about twenty minutes on 2 busy cores)
    python bench/split.py branches     # one part: branches or corpus
    python bench/split.py --quick      # 3 repetitions, 6 corpus notebooks

(a) branches: an untagged notebook as a scientist writes it (imports, a data
    setup, a Monte Carlo estimate and a bootstrap, each a heavy pure-Python
    cell, a print and a plot, then a cell combining both). Each repetition
    runs papermill on it, then ``nbpipe execute --split auto`` with a fresh,
    empty cache directory (no measured duration helps the split; the run
    pays for storing its results), then nbpipe on the same notebook tagged
    by hand (setup, data, one app per branch, the summary: what auto could
    reach). The ideal is the critical path from the cell durations papermill
    records: the serial cells plus the longer branch. Medians over the
    repetitions, with their range; the load average before and after says
    whether the two cores were free.
(b) corpus: every notebook of ``tests/corpus/`` with its tags stripped, beside
    its data, run by papermill, by nbpipe as one app (no split), with
    ``--split cells`` and with ``--split auto`` (each nbpipe run with a fresh
    cache directory): the total times and their ratios to papermill.

Every run is a command (``python -m papermill``, ``python -m nbpipe execute``),
so each side pays for Python's start. Timings are measurements, not tests:
nothing here passes or fails.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

import nbpipe
from nbpipe.split import split_notebook
from run import measure  # bench/ is on the path when this script runs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import corpustools  # noqa: E402  (tests/ holds the corpus and its helpers)

#: The notebook of part (a): (role, source); role "a" and "b" are the two branches.
BRANCHES = [
    ("serial", "import math\nimport random\nimport statistics\n\n"
               "import matplotlib.pyplot as plt\nimport numpy as np"),
    ("serial", "# Measurements of a quantity, and the sizes of the two studies below\n"
               "measurements = np.random.default_rng(7).lognormal(mean=1.0, sigma=0.6, size=400).tolist()\n"
               "draws = 10_000_000\nresamples = 36_000\nprint(len(measurements), 'measurements')"),
    ("a", "# Monte Carlo estimate of pi, with the running estimate every 100,000 draws\n"
          "rng = random.Random(1)\nhits = 0\nrunning = []\nfor i in range(1, draws + 1):\n"
          "    x, y = rng.random(), rng.random()\n    if x * x + y * y <= 1.0:\n        hits += 1\n"
          "    if i % 100_000 == 0:\n        running.append(4 * hits / i)"),
    ("a", "pi_estimate = 4 * hits / draws\npi_error = 4 * math.sqrt(hits / draws * (1 - hits / draws) / draws)\n"
          "print(f'pi = {pi_estimate:.5f} +/- {pi_error:.5f} (true {math.pi:.5f})')"),
    ("a", "fig, ax = plt.subplots(figsize=(5, 3))\nax.plot(running)\nax.axhline(math.pi, color='k', ls='--')\n"
          "ax.set_xlabel('draws / 100,000')\nax.set_ylabel('estimate')\nplt.show()"),
    ("b", "# Bootstrap of the median of the measurements\nboot = random.Random(2)\nmedians = []\n"
          "for _ in range(resamples):\n    sample = boot.choices(measurements, k=len(measurements))\n"
          "    medians.append(statistics.median(sample))"),
    ("b", "medians.sort()\nlow, high = medians[int(0.025 * resamples)], medians[int(0.975 * resamples)]\n"
          "print(f'median {statistics.median(measurements):.3f}, 95% CI [{low:.3f}, {high:.3f}]')"),
    ("b", "fig, ax = plt.subplots(figsize=(5, 3))\nax.hist(medians, bins=50)\nax.axvline(low, color='r')\n"
          "ax.axvline(high, color='r')\nax.set_xlabel('bootstrap median')\nplt.show()"),
    ("serial", "print(f'pi within {abs(pi_estimate - math.pi) / pi_error:.1f} standard errors; '\n"
               "      f'median CI width {high - low:.3f}')"),
]

#: The split a user would tag by hand (code cell -> tags): the reference for what auto could reach.
HAND = [["setup"], ["app:data"], ["app:montecarlo"], ["app:montecarlo"], ["app:montecarlo"],
        ["app:bootstrap"], ["app:bootstrap"], ["app:bootstrap"], ["app:summary"]]

#: Corpus notebooks --quick runs: small, with and without plots and data files.
QUICK = ["bootstrap_ci", "decay_fit", "monte_carlo_pi", "sales_report", "two_sample_stats", "word_counts"]

#: How part (b) runs each corpus notebook: None is papermill, else nbpipe's options.
MODES: dict[str, tuple[str, ...] | None] = {"papermill": None, "one app": (), "split cells": ("--split", "cells"),
                                            "split auto": ("--split", "auto")}

_options = {"repeat": 5, "quick": False}


def branches_notebook(tags: list[list[str]] | None = None) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(v4.new_markdown_cell("# Two estimates\nA Monte Carlo estimate of pi and a bootstrap "
                                         "confidence interval for a median."))
    nb.cells += [v4.new_code_cell(source) for _, source in BRANCHES]
    for cell, cell_tags in zip(nb.cells[1:], tags or []):
        cell.metadata["tags"] = cell_tags
    return nb


def _papermill(path: Path) -> float:
    """papermill's run of ``path`` into ``NAME.pm.ipynb``: wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "papermill", str(path), str(path.with_suffix(".pm.ipynb")),
                    "--cwd", str(path.parent), "--no-progress-bar", "--log-level", "ERROR"],
                   check=True, capture_output=True)
    return time.perf_counter() - start


def _nbpipe(path: Path, cache: Path, *options: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nbpipe", "execute", str(path), "-q", "--cache-dir", str(cache),
                    "-o", str(path.with_suffix(".merged.ipynb")), *options], check=True, capture_output=True)
    return time.perf_counter() - start


def _cpu() -> tuple[float, float]:
    """CPU seconds so far: the whole machine's busy time, and this process's finished children's."""
    ticks = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, children.ru_utime + children.ru_stime


def _others(run: Any, *args: Any) -> tuple[float, float]:
    """``run(*args)``'s wall seconds, and how many cores other processes kept busy meanwhile."""
    busy, ours = _cpu()
    start = time.perf_counter()
    run(*args)
    took = time.perf_counter() - start
    busy_after, ours_after = _cpu()
    return took, max(0.0, (busy_after - busy) - (ours_after - ours)) / took


def _wait_quiet(limit: float = 60.0) -> None:
    """Wait (at most ``limit`` seconds) until other processes keep less than half a core busy."""
    end = time.monotonic() + limit
    while time.monotonic() < end and _others(time.sleep, 1.0)[1] > 0.5:
        pass


def _ideal(executed: Path) -> tuple[float, float, float]:
    """The serial cells' time, branch a's and branch b's, from papermill's cell durations."""
    nb = nbformat.read(executed, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    took = {"serial": 0.0, "a": 0.0, "b": 0.0}
    for (role, _), cell in zip(BRANCHES, code):
        took[role] += cell.metadata["papermill"]["duration"]
    return took["serial"], took["a"], took["b"]


def _spread(values: list[float], unit: str = " s") -> str:
    return f"median {statistics.median(values):.2f}{unit} (range {min(values):.2f} to {max(values):.2f})"


def branches(tmp: Path) -> list[tuple[str, str]]:
    path = tmp / "two_estimates.ipynb"
    nbformat.write(branches_notebook(), path)
    hand = tmp / "two_estimates_tagged.ipynb"
    nbformat.write(branches_notebook(HAND), hand)
    chosen = nbpipe.load_pipeline(path, "auto").split
    assert chosen is not None
    load_before = os.getloadavg()[0]
    serial, ours, tagged, ideal, longest, others = [], [], [], [], [], []
    for n in range(_options["repeat"]):
        _wait_quiet()
        for times, (took, busy) in ((serial, _others(_papermill, path)),
                                    (ours, _others(_nbpipe, path, tmp / f"cache-auto-{n}", "--split", "auto")),
                                    (tagged, _others(_nbpipe, hand, tmp / f"cache-tagged-{n}"))):
            times.append(took)
            others.append(busy)
        parts = _ideal(path.with_suffix(".pm.ipynb"))
        ideal.append(parts[0] + max(parts[1:]))
        longest.append(max(parts[1:]))
    load_after = os.getloadavg()[0]
    apps = ", ".join(f"{g.app} (cells {', '.join(map(str, g.cells))})" for g in chosen.groups)
    setup = ", ".join(str(i) for i, _ in chosen.setup) or "none"
    to_serial = [o / s for o, s in zip(ours, serial)]
    to_ideal = [o / i for o, i in zip(ours, ideal)]
    return [
        ("two branches: --split auto chose", f"{len(chosen.groups)} apps: {apps}; setup: cell {setup}"),
        (f"two branches: papermill serial ({len(serial)} runs)", _spread(serial)),
        ("two branches: ideal (serial cells + longer branch)", f"{_spread(ideal)}, longer branch "
                                                               f"{statistics.median(longest):.2f} s"),
        ("two branches: nbpipe --split auto, fresh cache", _spread(ours)),
        ("two branches: nbpipe / papermill", _spread(to_serial, "x")),
        ("two branches: nbpipe / ideal", _spread(to_ideal, "x")),
        ("two branches: nbpipe, tagged by hand (4 apps)", f"{_spread(tagged)} = "
                                                        f"{statistics.median(tagged) / statistics.median(serial):.2f}x "
                                                        "papermill"),
        ("two branches: load average before / after", f"{load_before:.2f} / {load_after:.2f} "
                                                      f"on {os.cpu_count()} cores"),
        ("two branches: cores other processes kept busy", _spread(others, " cores")),
    ]


def _corpus_times(tmp: Path, name: str, nb: nbformat.NotebookNode) -> dict[str, float] | str:
    """Seconds by mode, or what failed."""
    times = {}
    for label, options in MODES.items():
        work = tmp / "corpus" / name / label.replace(" ", "-")
        work.mkdir(parents=True)
        path = corpustools.place(nb, work, name)
        try:
            times[label] = _papermill(path) if options is None else _nbpipe(path, work / "cache", *options)
        except subprocess.CalledProcessError as exc:
            last = (exc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            return f"{label} failed: {last[0][:100]}"
    return times


def corpus(tmp: Path) -> list[tuple[str, str]]:
    names = QUICK if _options["quick"] else corpustools.corpus_names()
    header = "  ".join(f"{label:>11}" for label in MODES) + "  apps cells/auto"
    rows: list[tuple[str, str]] = [("corpus notebook (seconds)", header)]
    total = dict.fromkeys(MODES, 0.0)
    counted = 0
    for name in names:
        nb = corpustools.strip_tags(corpustools.read(name))
        times = _corpus_times(tmp, name, nb)
        if isinstance(times, str):
            rows.append((f"  {name}", f"left out of the totals, {times}"))
            continue
        counted += 1
        for label, took in times.items():
            total[label] += took
        apps = "/".join(str(len(split_notebook(nb, mode).groups)) for mode in ("cells", "auto"))
        rows.append((f"  {name}", "  ".join(f"{times[label]:11.2f}" for label in MODES) + f"  {apps:>16}"))
    rows.append((f"corpus total, {counted} notebooks", "  ".join(f"{total[label]:11.1f}" for label in MODES)))
    rows.append(("corpus total / papermill", "  ".join(f"{total[label] / total['papermill']:10.2f}x"
                                                      for label in MODES)))
    return rows


PARTS = {"branches": branches, "corpus": corpus}


def main(argv: list[str]) -> int:
    if "--quick" in argv:
        argv = [a for a in argv if a != "--quick"]
        _options.update(repeat=3, quick=True)
    unknown = [a for a in argv if a not in PARTS]
    if unknown:
        print(f"usage: python bench/split.py [--quick] [{' | '.join(PARTS)}]; unknown: {' '.join(unknown)}",
              file=sys.stderr)
        return 2
    return measure([PARTS[name] for name in argv or list(PARTS)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
