"""The cache of app results (issue 10), attacked with real runs on the local site.

Each test builds a notebook as a scientist writes one (numpy, pandas, a
matplotlib figure, prints), runs it, changes something, and runs it again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import normalise_outputs
from nbbuild import by_id, code, md, nbpipe_cli, read, text_of, write

import nbpipe
from nbpipe.store import CACHE_DIR_NAME, Store

pytestmark = pytest.mark.usefixtures("matplotlib_ready")

PARAMETERS = "n = 4\nseed = 0\nbroken = False\nscale = 2.0"
SETUP = "%matplotlib inline\nimport numpy as np\nimport pandas as pd\nimport matplotlib.pyplot as plt"
LOAD = ("rng = np.random.default_rng(seed)\n"
        "x = rng.normal(size=n * 50)\n"
        "df = pd.DataFrame({'x': x, 'y': 2 * x + 1})\n"
        "print(df.shape)")
FIT = ("if broken:\n    raise RuntimeError('the fit broke')\n"
       "slope, intercept = np.polyfit(df.x, df.y, 1)\n"
       "def model(v):\n    return slope * v + intercept\n"
       "print(f'slope {slope:.3f}')")
OTHER = "label = f'scale {scale}'\nprint(label)"
PLOT = ("fig, ax = plt.subplots()\n"
        "ax.plot(df.x, model(df.x), '.')\n"
        "ax.set_title(label)\n"
        "plt.show()")


def analysis(path: Path, *, fit: str = FIT, plot: str = PLOT, load: str = LOAD) -> Path:
    """load -> fit -> plot, other -> plot, and a metric of fit's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path,
                 md("# A fit"),
                 code(PARAMETERS, "parameters"),
                 code(SETUP, "setup"),
                 code(load, "app:load"),
                 code(fit, "app:fit"),
                 code(OTHER, "app:other"),
                 code(plot, "app:plot"),
                 code("slope", "metrics"))


def statuses(run: Any) -> dict[str, str]:
    return {name: result.status.value for name, result in run.apps.items()}


def ran(run: Any) -> set[str]:
    return {name for name, result in run.apps.items() if result.status.value == "completed"}


def code_outputs(nb: Any) -> list[Any]:
    return [normalise_outputs(c.outputs) for c in nb.cells if c.cell_type == "code"]


def cache_of(src: Path) -> Path:
    return src.parent / CACHE_DIR_NAME


def stored(cache: Path) -> list[dict[str, Any]]:
    """The metadata of every entry in ``cache`` whose checksums verify."""
    store = Store(cache, cache)
    found = []
    for entry in list(store.entries()):
        assert store.get(entry.key) is not None, entry.path
        found.append(entry.meta)
    return found


def stored_apps(cache: Path) -> set[str]:
    return {m["app"] for m in stored(cache)}


# ------------------------------------------------------------------ 1. a second run


def test_a_second_run_restores_every_app_with_the_same_outputs(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    first = nbpipe.execute(src)
    assert first.ok and ran(first) == set(first.apps)
    first_nb = read(first.output)
    second = nbpipe.execute(src)
    assert second.ok, second.summary()
    assert set(statuses(second).values()) == {"cached"}, statuses(second)
    nb = read(second.output)
    assert code_outputs(nb) == code_outputs(first_nb)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    run_id = first_nb.metadata["nbpipe"]["run"]["id"]
    assert nb.metadata["nbpipe"]["run"]["id"] != run_id
    for app, meta in nb.metadata["nbpipe"]["apps"].items():
        assert meta["status"] == "cached", app
        assert meta["cache"]["run"] == run_id, app
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.metadata["nbpipe"].get("app"):
            assert cell.metadata["nbpipe"]["status"] == "cached", cell.source
            assert cell.metadata["nbpipe"]["cached_from"]["run"] == run_id, cell.source
    assert second.metrics == first.metrics and first.metrics


def test_the_cli_says_how_many_apps_came_from_the_cache(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    assert nbpipe_cli("execute", src, cwd=tmp_path).returncode == 0
    again = nbpipe_cli("execute", src, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "(5 of 5 apps from the cache)" in again.stderr


# ------------------------------------------------------------------ 2. what an edit re-runs


def test_an_edit_to_the_plot_re_runs_only_the_plot(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    assert nbpipe.execute(src).ok
    analysis(src, plot=PLOT.replace("'.'", "'x'"))
    again = nbpipe.execute(src)
    assert again.ok and ran(again) == {"plot"}, statuses(again)


def test_an_edit_to_a_middle_app_re_runs_it_and_what_reads_it(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    first = nbpipe.execute(src)
    analysis(src, fit=FIT.replace("print(f'slope", "print(f'the slope"))
    again = nbpipe.execute(src)
    assert again.ok and ran(again) == {"fit", "plot", "metrics"}, statuses(again)
    assert statuses(again)["load"] == statuses(again)["other"] == "cached"
    fit_cell = [c for c in read(again.output).cells if "app:fit" in c.metadata.get("tags", [])][0]
    assert text_of(fit_cell).startswith("the slope 2.000")
    assert again.metrics == first.metrics


def test_a_parameter_re_runs_only_the_apps_that_read_it(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    assert nbpipe.execute(src).ok
    scaled = nbpipe.execute(src, parameters={"scale": 3.0})
    assert scaled.ok and ran(scaled) == {"other", "plot"}, statuses(scaled)
    bigger = nbpipe.execute(src, parameters={"scale": 3.0, "n": 6})
    assert bigger.ok and ran(bigger) == {"load", "fit", "plot", "metrics"}, statuses(bigger)
    back = nbpipe.execute(src)  # the defaults again: all of it is still cached
    assert back.ok and ran(back) == set(), statuses(back)


def test_an_app_reading_the_input_history_re_runs_when_an_earlier_cell_changes(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("a = 1", "app:first"), code("b = 2", "app:second"),
                code("print(In[1])", "app:history"))
    assert nbpipe.execute(src).ok
    write(src, code("a = 11", "app:first"), code("b = 2", "app:second"), code("print(In[1])", "app:history"))
    again = nbpipe.execute(src)
    assert ran(again) == {"first", "history"}, statuses(again)
