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
from nbbuild import code, md, nbpipe_cli, read, text_of, write

import nbpipe
from nbpipe.store import CACHE_DIR_NAME, Store

pytestmark = [pytest.mark.cache, pytest.mark.usefixtures("matplotlib_ready")]

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


def listed_apps(cache: Path) -> set[str]:
    """The apps of the entries in ``cache``, without reading them (which counts as a use)."""
    return {e.meta["app"] for e in Store(cache, cache).entries()}


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
    assert [c.get("execution_count") for c in nb.cells] == [c.get("execution_count") for c in first_nb.cells]
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



# ------------------------------------------------------------------ 3. shipped values of cached apps


def test_an_app_below_cached_apps_reads_their_values(tmp_path: Path) -> None:
    check = ("print(type(x).__name__, x.shape, round(float(x.sum()), 6))\n"
             "print(type(df).__name__, df.shape, round(float(df.y.mean()), 6))\n"
             "print(round(model(1.0), 6))\n"
             "print(type(fig).__name__, len(fig.axes), fig.axes[0].get_title())")
    src = analysis(tmp_path / "nb.ipynb")
    write(src, *read(src).cells, code("_ = (x, df, model, fig)\nprint('first')", "app:check"))
    first = nbpipe.execute(src)
    assert first.ok
    cells = read(src).cells
    cells[-1].source = check  # only the last app changes
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=read(src).metadata), src)
    again = nbpipe.execute(src)
    assert again.ok and ran(again) == {"check"}, statuses(again)
    text = text_of(read(again.output).cells[-1])
    fresh = nbpipe.execute(src, cache=False, output=tmp_path / "fresh.ipynb")
    assert text == text_of(read(fresh.output).cells[-1])
    assert text.splitlines()[0].startswith("ndarray (200,)") and "DataFrame (200, 2)" in text
    assert text.splitlines()[3] == "Figure 1 scale 2.0"


# ------------------------------------------------------------------ 4. declared files


def test_declared_outputs_are_restored_in_place_and_inputs_are_hashed(tmp_path: Path) -> None:
    (tmp_path / "calib.csv").write_text("a,b\n1,2\n3,4\n")
    src = write(tmp_path / "nb.ipynb",
                code("import pandas as pd", "setup"),
                code("calib = pd.read_csv('calib.csv')\nprint(calib.sum().tolist())", "app:read", "inputs:calib.csv"),
                code("calib.assign(c=calib.a * 10).to_csv('table.csv', index=False)\nprint('wrote')",
                     "app:write", "outputs:table.csv"),
                code("print(pd.read_csv('table.csv').c.tolist())", "app:show", "inputs:table.csv"))
    first = nbpipe.execute(src)
    assert first.ok, first.summary()
    table = (tmp_path / "table.csv").read_bytes()
    (tmp_path / "table.csv").unlink()
    again = nbpipe.execute(src)
    assert again.ok and ran(again) == set(), statuses(again)
    assert (tmp_path / "table.csv").read_bytes() == table
    (tmp_path / "calib.csv").write_text("a,b\n1,2\n5,6\n")
    changed = nbpipe.execute(src)
    assert changed.ok and ran(changed) == {"read", "write", "show"}, statuses(changed)
    assert text_of(read(changed.output).cells[3]) == "[10, 50]\n"


# ------------------------------------------------------------------ 5. map items one by one


def mapped(path: Path) -> Path:
    return write(path,
                 code("n = 4", "parameters"),
                 code("import numpy as np", "setup"),
                 code("energies = [10.0 * (i + 1) for i in range(n)]", "app:grid"),
                 code("spectrum = np.full(3, e) ** 0.5\nprint('item', e)", "app:scan", "map:e=energies"),
                 code("print([round(float(s.sum()), 3) for s in spectrum])", "app:total"))


def test_map_items_are_cached_one_by_one_when_the_iterable_grows(tmp_path: Path) -> None:
    src = mapped(tmp_path / "nb.ipynb")
    assert nbpipe.execute(src).ok
    grown = nbpipe.execute(src, parameters={"n": 6})
    assert grown.ok, grown.summary()
    items = read(grown.output).metadata["nbpipe"]["apps"]["scan"]["items"]
    assert [i["status"] for i in items] == ["cached"] * 4 + ["completed"] * 2, items
    assert [r.status.value for r in grown.apps["scan"].items] == ["cached"] * 4 + ["completed"] * 2
    expected = [round(3 * (10.0 * (i + 1)) ** 0.5, 3) for i in range(6)]
    assert text_of(read(grown.output).cells[-1]) == f"{expected}\n"
    again = nbpipe.execute(src, parameters={"n": 6})
    assert [r.status.value for r in again.apps["scan"].items] == ["cached"] * 6
    assert text_of(read(again.output).cells[-1]) == f"{expected}\n"


# ------------------------------------------------------------------ 6. resume


def test_after_a_failure_the_fixed_run_re_runs_only_what_did_not_complete(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    broken = nbpipe.execute(src, parameters={"broken": True})
    assert not broken.ok and statuses(broken)["fit"] == "failed"
    assert stored_apps(cache_of(src)) == {"load", "other"}
    fixed = nbpipe.execute(src)
    assert fixed.ok, fixed.summary()
    assert ran(fixed) == {"fit", "plot", "metrics"}, statuses(fixed)
    listed = nbpipe_cli("cache", "list", src, cwd=tmp_path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 5, listed.stdout


@pytest.mark.slow
def test_timed_out_apps_are_not_stored(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1\nprint(x)", "app:quick"),
                code("import time\ntime.sleep(30)", "app:slow", "timeout:1"))
    run = nbpipe.execute(src)
    assert statuses(run) == {"quick": "completed", "slow": "timed_out"}
    assert stored_apps(cache_of(src)) == {"quick"}


SLEEPER = ("import os, time\n"
           "open({flag!r}, 'w').write(str(os.getpid()))\n"
           "time.sleep(60)")


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_leaves_the_apps_that_completed_in_the_cache(tmp_path: Path, sig: int) -> None:
    flag = tmp_path / "running"
    src = write(tmp_path / "nb.ipynb",
                code("import numpy as np\nxs = np.arange(5)\nprint(xs.sum())", "app:quick"),
                code(SLEEPER.format(flag=str(flag)), "app:slow", "after:quick"),
                code("print(xs.mean())", "app:after"))
    proc = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(src)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while not (flag.exists() and flag.read_text()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    apps = stored_apps(cache_of(src))
    assert "slow" not in apps and "quick" in apps, apps
    # the slow app no longer sleeps; the quick one comes from the cache
    write(src, code("import numpy as np\nxs = np.arange(5)\nprint(xs.sum())", "app:quick"),
          code("print('slept')", "app:slow", "after:quick"), code("print(xs.mean())", "app:after"))
    again = nbpipe.execute(src)
    assert again.ok and statuses(again)["quick"] == "cached", statuses(again)
    assert statuses(again)["slow"] == "completed"


# ------------------------------------------------------------------ 7. --refresh, --no-cache, cache:off


def test_refresh_re_runs_the_app_and_what_depends_on_it(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    assert nbpipe.execute(src).ok
    again = nbpipe.execute(src, refresh=["fit"])
    assert again.ok and ran(again) == {"fit", "plot", "metrics"}, statuses(again)
    done = nbpipe_cli("execute", src, "--refresh", "fitt", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("nbpipe: error:") and "'fit'" in done.stderr, done.stderr


def test_no_cache_runs_everything_and_stores_nothing(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    done = nbpipe_cli("execute", src, "--no-cache", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not cache_of(src).exists() or stored(cache_of(src)) == []
    assert nbpipe.execute(src).ok
    before = sorted(p.name for p in (cache_of(src) / "entries").glob("*/*"))
    run = nbpipe.execute(src, cache=False)
    assert ran(run) == set(run.apps)
    assert sorted(p.name for p in (cache_of(src) / "entries").glob("*/*")) == before


def test_a_cache_off_app_always_runs_and_identical_values_keep_its_readers_cached(tmp_path: Path) -> None:
    cells = (code("import numpy as np", "setup"),
             code("data = np.arange(10.0)\nprint('loaded', data.sum())", "app:load", "cache:off"),
             code("mean = data.mean()\nprint(mean)", "app:stats"))
    src = write(tmp_path / "nb.ipynb", *cells)
    assert nbpipe.execute(src).ok
    again = nbpipe.execute(src)
    assert statuses(again) == {"load": "completed", "stats": "cached"}
    assert "load" not in stored_apps(cache_of(src))


# ------------------------------------------------------------------ 8. where the cache lives


@pytest.mark.slow
def test_the_cache_dir_comes_from_the_flag_the_environment_or_the_site(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 2 ** 10\nprint(x)", "app:a"))
    assert nbpipe_cli("execute", src, cwd=tmp_path).returncode == 0
    assert stored_apps(tmp_path / CACHE_DIR_NAME) == {"a"}
    env_dir, flag_dir, site_dir = tmp_path / "env", tmp_path / "flag", tmp_path / "shared" / "cache"
    done = nbpipe_cli("execute", src, cwd=tmp_path, env={"NBPIPE_CACHE_DIR": str(env_dir)})
    assert done.returncode == 0 and "from the cache" not in done.stderr and stored_apps(env_dir) == {"a"}
    done = nbpipe_cli("execute", src, "--cache-dir", flag_dir, cwd=tmp_path,
                      env={"NBPIPE_CACHE_DIR": str(env_dir)})
    assert done.returncode == 0 and stored_apps(flag_dir) == {"a"}
    (tmp_path / "nbpipe.toml").write_text('[sites.cluster]\nengine = "local"\ncache_dir = "shared/cache"\n')
    done = nbpipe_cli("execute", src, "--site", "cluster", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stored_apps(site_dir) == {"a"}
    listed = nbpipe_cli("cache", "list", src, cwd=tmp_path, env={"NBPIPE_CACHE_DIR": str(env_dir)})
    assert listed.returncode == 0 and " a " in listed.stdout and str(env_dir) in listed.stderr


@pytest.mark.slow
def test_a_parsl_run_hits_what_a_local_run_stored(tmp_path: Path) -> None:
    pytest.importorskip("parsl")
    from sitekit import PARSL_LOCAL

    src = analysis(tmp_path / "nb.ipynb")
    first = nbpipe.execute(src)
    assert first.ok
    (tmp_path / "nbpipe.toml").write_text(PARSL_LOCAL)
    site = next(line for line in PARSL_LOCAL.splitlines() if line.startswith("[sites."))[7:-1]
    src_nb = read(src)
    cells = src_nb.cells
    cells[6].source = PLOT.replace("'.'", "'o'")  # the plot changes: it runs on Parsl, the rest is cached
    nbformat.write(src_nb, src)
    again = nbpipe.execute(src, site=site)
    assert again.ok, again.summary()
    assert ran(again) == {"plot"}, statuses(again)


# ------------------------------------------------------------------ 9. corrupt entries, concurrent runs


def entry_of(cache: Path, app: str) -> Path:
    found = [e.path for e in Store(cache, cache).entries() if e.meta.get("app") == app]
    assert len(found) == 1, found
    return found[0]


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "bundle byte flipped": lambda e: flip_a_byte(next(p for p in (e / "values").rglob("*.pkl"))),
    "executed notebook truncated": lambda e: truncate(e / "executed.ipynb"),
    "manifest deleted": lambda e: (e / "manifest.json").unlink(),
    "manifest garbage": lambda e: (e / "manifest.json").write_text("{not json"),
    "manifest edited": lambda e: (e / "manifest.json").write_text(
        (e / "manifest.json").read_text().replace('"app": "fit"', '"app": "fot"')),
}


@pytest.mark.parametrize("corrupt", [
    pytest.param(name, marks=() if name == "bundle byte flipped" else pytest.mark.slow, id=name)
    for name in CORRUPTIONS])  # one in the default suite, every kind under -m slow
def test_a_corrupt_entry_is_run_again_with_a_warning_and_replaced(tmp_path: Path, corrupt: str) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    first = nbpipe_cli("execute", src, cwd=tmp_path)
    assert first.returncode == 0
    expected = code_outputs(read(tmp_path / "nb.merged.ipynb"))
    CORRUPTIONS[corrupt](entry_of(cache_of(src), "fit"))
    again = nbpipe_cli("execute", src, "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'fit'" in warnings[0] and "corrupt" in warnings[0], again.stderr
    apps = json.loads(again.stdout)["apps"]
    assert apps["fit"]["status"] == "completed" and apps["load"]["status"] == "cached", apps
    assert code_outputs(read(tmp_path / "nb.merged.ipynb")) == expected
    assert stored_apps(cache_of(src)) == {"load", "fit", "other", "plot", "metrics"}
    third = nbpipe_cli("execute", src, cwd=tmp_path)
    assert "(5 of 5 apps from the cache)" in third.stderr and "warning" not in third.stderr


def test_two_runs_sharing_a_cache_at_once_both_succeed(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    cache = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(src), "--cache-dir", str(cache),
                               "-o", str(tmp_path / f"out{i}.ipynb")], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "warning" not in err, err
    assert stored_apps(cache) == {"load", "fit", "other", "plot", "metrics"}
    assert len(stored(cache)) == 5
    assert list((cache / "tmp").iterdir()) == []
    assert code_outputs(read(tmp_path / "out0.ipynb")) == code_outputs(read(tmp_path / "out1.ipynb"))


# ------------------------------------------------------------------ 10. nbpipe verify


def test_verify_names_the_apps_that_do_not_reproduce(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("import time\nimport numpy as np", "setup"),
                code("rng = np.random.default_rng(1)\nprint(rng.normal(size=3))", "app:seeded"),
                code("print(np.random.rand())", "app:unseeded"),
                code("print(time.time())", "app:clock"),
                code("print(2 + 2)", "app:plain"))
    assert nbpipe_cli("execute", src, cwd=tmp_path).returncode == 0
    entries = len(stored(cache_of(src)))
    done = nbpipe_cli("verify", src, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    named = {line.split()[2].rstrip(":") for line in done.stdout.splitlines() if line.startswith("differs")}
    assert named == {"unseeded", "clock"}, done.stdout
    assert len(stored(cache_of(src))) == entries  # verify leaves the cache as it was
    again = nbpipe_cli("execute", src, cwd=tmp_path)
    assert "(4 of 4 apps from the cache)" in again.stderr


@pytest.mark.slow
def test_verify_of_a_seeded_analysis_exits_0(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    assert nbpipe_cli("execute", src, cwd=tmp_path).returncode == 0
    done = nbpipe_cli("verify", src, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "differs" not in done.stdout


# ------------------------------------------------------------------ 11. nbpipe cache list|clear|prune


def test_cache_list_and_clear_are_per_notebook(tmp_path: Path) -> None:
    one = write(tmp_path / "one.ipynb", code("a = 1\nprint(a)", "app:first"), code("print(a + 1)", "app:second"))
    two = write(tmp_path / "two.ipynb", code("b = 'x'\nprint(b)", "app:third"))
    assert nbpipe.execute(one).ok and nbpipe.execute(two).ok
    listed = nbpipe_cli("cache", "list", one, cwd=tmp_path)
    assert listed.returncode == 0
    assert len(listed.stdout.splitlines()) == 2 and "third" not in listed.stdout, listed.stdout
    everything = nbpipe_cli("cache", "list", cwd=tmp_path)
    assert len(everything.stdout.splitlines()) == 3, everything.stdout
    cleared = nbpipe_cli("cache", "clear", one, cwd=tmp_path)
    assert cleared.returncode == 0 and "removed 2 entries" in cleared.stderr
    assert stored_apps(tmp_path / CACHE_DIR_NAME) == {"third"}


@pytest.mark.slow
def test_cache_prune_by_age_and_by_size_least_recently_used_first(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", *(code(f"v{i} = 'x' * {i * 3000}\nprint(len(v{i}))", f"app:a{i}")
                                         for i in range(1, 5)))
    assert nbpipe.execute(src).ok
    cache = cache_of(src)
    now = time.time()
    for i, app in enumerate(["a1", "a2", "a3", "a4"]):  # a1 used longest ago
        os.utime(entry_of(cache, app) / "manifest.json", (now - 3600 * (4 - i), now - 3600 * (4 - i)))
    pruned = nbpipe_cli("cache", "prune", "--older-than", "150m", cwd=tmp_path)
    assert pruned.returncode == 0 and listed_apps(cache) == {"a3", "a4"}, pruned.stderr
    sizes = {e.meta["app"]: e.size for e in Store(cache, cache).entries()}
    limit = sizes["a4"] + sizes["a3"] // 2
    pruned = nbpipe_cli("cache", "prune", "--max-size", str(limit), cwd=tmp_path)
    assert pruned.returncode == 0 and listed_apps(cache) == {"a4"}, pruned.stderr
    for bad in (["--older-than", "soon"], ["--max-size", "5 parsecs"], []):
        done = nbpipe_cli("cache", "prune", *bad, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.startswith("nbpipe: error:"), (bad, done.stderr)


# ------------------------------------------------------------------ 12. hostile input


@pytest.mark.slow
def test_odd_names_and_parameter_values_still_cache(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("title = 'plain'", "parameters"),
                code("banner = title.upper()\nprint(banner)", "app:Fit-2_x"),
                code("print(len(banner), repr(banner))", "app:_under"))
    odd = "it's \"π\" — ünïcode\\n\n\t{x}"
    first = nbpipe.execute(src, parameters={"title": odd})
    assert first.ok and ran(first) == {"Fit-2_x", "_under"}
    again = nbpipe.execute(src, parameters={"title": odd})
    assert again.ok and ran(again) == set(), statuses(again)
    assert text_of(read(again.output).cells[-1]) == f"{len(odd)} {odd.upper()!r}\n"
    other = nbpipe.execute(src, parameters={"title": odd + " "})
    assert ran(other) == {"Fit-2_x", "_under"}


@pytest.mark.slow
def test_map_items_follow_the_new_order_of_a_reordered_iterable(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("order = 1", "parameters"),
                code("energies = [10, 20, 30, 40][::order]", "app:grid"),
                code("square = e * e\nprint('item', e)", "app:scan", "map:e=energies"),
                code("print(square)", "app:total"))
    assert nbpipe.execute(src).ok
    flipped = nbpipe.execute(src, parameters={"order": -1})
    assert flipped.ok
    assert [r.status.value for r in flipped.apps["scan"].items] == ["cached"] * 4
    assert text_of(read(flipped.output).cells[-1]) == "[1600, 900, 400, 100]\n"


@pytest.mark.slow
def test_after_a_failed_map_item_only_that_item_runs_again(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("import os", "setup"),
                code("values = [1, 2, 3, 4]", "app:grid"),
                code("if v == 3 and not os.path.exists('calibrated'):\n"
                     "    raise ValueError(f'no calibration for {v}')\n"
                     "twice = 2 * v", "app:scan", "map:v=values"),
                code("print(twice)", "app:total"))
    broken = nbpipe.execute(src)
    assert not broken.ok
    assert [r.status.value for r in broken.apps["scan"].items] == ["completed", "completed", "failed", "completed"]
    (tmp_path / "calibrated").write_text("")
    fixed = nbpipe.execute(src)
    assert fixed.ok, fixed.summary()
    items = [r.status.value for r in fixed.apps["scan"].items]
    assert items == ["cached", "cached", "completed", "cached"], items
    assert text_of(read(fixed.output).cells[-1]) == "[2, 4, 6, 8]\n"


@pytest.mark.slow
def test_a_cache_dir_that_is_a_file(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1\nprint(x)", "app:a"))
    (tmp_path / "blocker").write_text("not a directory")
    done = nbpipe_cli("execute", src, "--cache-dir", tmp_path / "blocker", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("nbpipe: error:") and "blocker" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    below = nbpipe_cli("execute", src, cwd=tmp_path, env={"NBPIPE_CACHE_DIR": str(tmp_path / "blocker" / "c")})
    assert below.returncode == 2 and "blocker is a file" in below.stderr, below.stderr
    assert nbpipe_cli("execute", src, "--no-cache", "--cache-dir", tmp_path / "blocker", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_warns_once(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tmp").write_text("where entries are built, but a file")
    done = nbpipe_cli("execute", src, "--cache-dir", cache, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cannot write the cache" in warnings[0], done.stderr
    assert not (cache / "entries").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_cache_dir_only_warns(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1\nprint(x)", "app:a"))
    cache = tmp_path / "ro"
    cache.mkdir()
    cache.chmod(0o555)
    try:
        done = nbpipe_cli("execute", src, "--cache-dir", cache, cwd=tmp_path)
    finally:
        cache.chmod(0o755)
    assert done.returncode == 0, done.stderr
    assert "warning: cannot write the cache" in done.stderr
    assert list(cache.iterdir()) == []


@pytest.mark.slow
def test_a_huge_output_caches_and_restores(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("line = 'x' * 99 + '\\n'\nprint(line * 200_000, end='')\nn = 1", "app:loud"),
                code("print(n + 1)", "app:after"))
    first = nbpipe.execute(src)
    assert first.ok
    size = len(text_of(read(first.output).cells[0]))
    assert size == 20_000_000
    again = nbpipe.execute(src)
    assert ran(again) == set(), statuses(again)
    assert len(text_of(read(again.output).cells[0])) == size


@pytest.mark.slow
def test_editing_a_default_in_the_parameters_cell_re_runs_only_its_readers(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    assert nbpipe.execute(src).ok
    nb = read(src)
    nb.cells[1].source = PARAMETERS.replace("scale = 2.0", "scale = 3.0")
    nbformat.write(nb, src)
    again = nbpipe.execute(src)
    assert again.ok and ran(again) == {"other", "plot"}, statuses(again)


@pytest.mark.slow
def test_a_default_computed_from_another_re_runs_the_reader_when_that_one_changes(tmp_path: Path) -> None:
    def notebook(base: int) -> Path:
        return write(tmp_path / "nb.ipynb", code(f"base = {base}  # GeV\nwidth = 3\nn = base * 2", "parameters"),
                     code("print(n)", "app:uses_n"), code("print(width)", "app:uses_width"))

    assert nbpipe.execute(notebook(10)).ok
    again = nbpipe.execute(notebook(11))
    assert ran(again) == {"uses_n"}, statuses(again)
    assert text_of(read(again.output).cells[1]) == "22\n"


@pytest.mark.slow
def test_an_entry_that_cannot_be_restored_warns_on_stderr_and_runs_again(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("import os\nos.makedirs('out', exist_ok=True)\nopen('out/r.txt', 'w').write('42')\nr = 42",
                     "app:write", "outputs:out/r.txt"),
                code("print(r)", "app:show"))
    assert nbpipe_cli("execute", src, cwd=tmp_path).returncode == 0
    shutil.rmtree(tmp_path / "out")
    (tmp_path / "out").write_text("a file where the output's folder was")
    done = nbpipe_cli("execute", src, "--json", cwd=tmp_path)
    summary = json.loads(done.stdout)  # stdout holds the JSON summary only
    assert summary["apps"]["write"]["status"] == "failed"  # ran again, and found the file in its way
    warning = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "'write'" in warning[0] and "cannot restore" in warning[0], done.stderr


def test_editing_a_module_beside_the_notebook_re_runs_the_apps_that_import_it(tmp_path: Path) -> None:
    (tmp_path / "physics.py").write_text("def mass(e, p):\n    return (e * e - p * p) ** 0.5\n")
    src = write(tmp_path / "nb.ipynb",
                code("from physics import mass\nm = mass(5.0, 3.0)\nprint(m)", "app:reco"),
                code("import math\nprint(math.pi)", "app:other"))
    assert nbpipe.execute(src).ok
    (tmp_path / "physics.py").write_text("def mass(e, p):\n    return round((e * e - p * p) ** 0.5 * 2, 3)\n")
    again = nbpipe.execute(src)
    assert ran(again) == {"reco"}, statuses(again)
    assert text_of(read(again.output).cells[0]) == "8.0\n"


@pytest.mark.slow
def test_verify_names_the_map_item_that_does_not_reproduce(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("import random", "setup"),
                code("runs = ['a', 'b', 'c']", "app:grid"),
                code("print(r, random.random() if r == 'b' else 0.5)", "app:sim", "map:r=runs"))
    assert nbpipe_cli("execute", src, cwd=tmp_path).returncode == 0
    done = nbpipe_cli("verify", src, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    differs = [line for line in done.stdout.splitlines() if line.startswith("differs")]
    assert len(differs) == 1 and "app sim item 1:" in differs[0], done.stdout


@pytest.mark.slow
def test_a_reader_changing_a_large_array_in_place_leaves_the_cached_one_intact(tmp_path: Path) -> None:
    def notebook(extra: str) -> Path:
        return write(tmp_path / "nb.ipynb", code("import numpy as np", "setup"),
                     code("arr = np.zeros(4_000_000)\nprint(arr.nbytes)", "app:make"),
                     code(f"arr[:10] += 1\narr *= 2\nprint(arr[:3], arr.sum()){extra}", "app:change"))

    assert nbpipe.execute(notebook("")).ok
    for extra in ("  # again", "  # and again"):
        run = nbpipe.execute(notebook(extra))
        assert statuses(run) == {"make": "cached", "change": "completed"}, statuses(run)
        assert text_of(read(run.output).cells[2]) == "[2. 2. 2.] 20.0\n"
    assert stored_apps(cache_of(tmp_path / "nb.ipynb")) == {"make", "change"}


@pytest.mark.slow
def test_cache_commands_find_a_sites_cache_dir(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 3\nprint(x)", "app:a"))
    (tmp_path / "nbpipe.toml").write_text('[sites.cluster]\nengine = "local"\ncache_dir = "shared/cache"\n')
    assert nbpipe_cli("execute", src, "--site", "cluster", cwd=tmp_path).returncode == 0
    listed = nbpipe_cli("cache", "list", src, "--site", "cluster", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 and str(tmp_path / "shared" / "cache") in listed.stderr
    cleared = nbpipe_cli("cache", "clear", src, "--site", "cluster", cwd=tmp_path)
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stderr, cleared.stderr
    pruned = nbpipe_cli("cache", "prune", "--max-size", "1GB", "--site", "clustr", cwd=tmp_path)
    assert pruned.returncode == 2 and "did you mean 'cluster'" in pruned.stderr, pruned.stderr


def test_map_over_a_parameter_list_caches_items_when_the_list_grows(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("energies = [10, 20, 30]", "parameters"),
                code("square = e * e\nprint('item', e)", "app:scan", "map:e=energies"),
                code("print(sum(square))", "app:total"))
    assert nbpipe.execute(src).ok
    grown = nbpipe.execute(src, parameters={"energies": [10, 20, 30, 40]})
    assert grown.ok, grown.summary()
    assert [r.status.value for r in grown.apps["scan"].items] == ["cached"] * 3 + ["completed"]
    assert text_of(read(grown.output).cells[-1]) == "3000\n"
    nb = read(src)
    nb.cells[0].source = "energies = [10, 20, 30, 40, 50]"  # a new default grows it too
    nbformat.write(nb, src)
    edited = nbpipe.execute(src)
    assert [r.status.value for r in edited.apps["scan"].items] == ["cached"] * 4 + ["completed"]
    assert text_of(read(edited.output).cells[-1]) == "5500\n"


@pytest.mark.slow
def test_a_notebook_in_a_directory_with_spaces_and_accents_caches(tmp_path: Path) -> None:
    where = tmp_path / "Run 2024 — ü's \"data\""
    src = analysis(where / "my analysis.ipynb")
    assert nbpipe_cli("execute", src.name, cwd=where).returncode == 0
    again = nbpipe_cli("execute", src.name, cwd=where)
    assert "(5 of 5 apps from the cache)" in again.stderr, again.stderr
    listed = nbpipe_cli("cache", "list", src.name, cwd=where)
    assert len(listed.stdout.splitlines()) == 5, listed.stdout + listed.stderr


@pytest.mark.slow
def test_map_items_reading_the_whole_parameter_list_run_again_when_it_grows(tmp_path: Path) -> None:
    def notebook(default: str) -> Path:
        return write(tmp_path / "nb.ipynb", code(f"energies = {default}", "parameters"),
                     code("share = e / sum(energies)", "app:scan", "map:e=energies"),
                     code("print([round(s, 3) for s in share])", "app:total"))

    assert nbpipe.execute(notebook("[10, 30]")).ok
    grown = nbpipe.execute(notebook("[10, 30, 60]"))
    assert [r.status.value for r in grown.apps["scan"].items] == ["completed"] * 3
    assert text_of(read(grown.output).cells[-1]) == "[0.1, 0.3, 0.6]\n"


@pytest.mark.slow
def test_a_corrupt_map_item_or_split_entry_re_runs_only_that_part(tmp_path: Path) -> None:
    src = mapped(tmp_path / "nb.ipynb")
    first = nbpipe.execute(src)
    assert first.ok
    expected = text_of(read(first.output).cells[-1])
    cache = cache_of(src)
    entries = list(Store(cache, cache).entries())
    item = next(e.path for e in entries if e.meta["app"] == "scan" and e.meta["item"] == 2)
    flip_a_byte(next((item / "values").rglob("*.pkl")))
    done = nbpipe_cli("execute", src, "--json", cwd=tmp_path)
    apps = json.loads(done.stdout)["apps"]
    assert [i["status"] for i in apps["scan"]["items"]] == ["cached", "cached", "completed", "cached"]
    assert "app 'scan' item 2" in done.stderr and done.stderr.count("warning") == 1, done.stderr
    split = next(e.path for e in Store(cache, cache).entries() if e.meta["app"] == "scan" and e.meta["split"])
    truncate(next(p for p in split.rglob("*") if p.is_file() and p.name != "manifest.json"))
    done = nbpipe_cli("execute", src, "--json", cwd=tmp_path)
    assert done.returncode == 0 and "app 'scan' (split)" in done.stderr, done.stderr
    assert text_of(read(tmp_path / "nb.merged.ipynb").cells[-1]) == expected


@pytest.mark.slow
def test_editing_a_module_in_a_folder_the_notebook_adds_to_sys_path_re_runs_its_importers(tmp_path: Path) -> None:
    (tmp_path / "src" / "hep").mkdir(parents=True)
    (tmp_path / "src" / "hep" / "__init__.py").write_text("")
    (tmp_path / "src" / "hep" / "cuts.py").write_text("PT_MIN = 20\n")
    (tmp_path / "work").mkdir()
    src = write(tmp_path / "work" / "nb.ipynb",
                code("%matplotlib inline\nimport sys\nsys.path.insert(0, '../src')", "setup"),
                code("from hep.cuts import PT_MIN\nprint(PT_MIN)", "app:select"),
                code("print('unrelated')", "app:other"))
    assert nbpipe.execute(src).ok
    (tmp_path / "src" / "hep" / "cuts.py").write_text("PT_MIN = 25\n")
    again = nbpipe.execute(src)
    assert ran(again) == {"select"}, statuses(again)
    assert text_of(read(again.output).cells[1]) == "25\n"


@pytest.mark.slow
def test_a_new_file_matching_an_inputs_glob_re_runs_the_reader(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.csv").write_text("x\n1\n2\n")
    src = write(tmp_path / "nb.ipynb", code("import glob\nimport pandas as pd", "setup"),
                code("total = sum(pd.read_csv(f).x.sum() for f in sorted(glob.glob('runs/*.csv')))\nprint(total)",
                     "app:sum", "inputs:runs/*.csv"),
                code("print('other')", "app:other"))
    assert nbpipe.execute(src).ok
    (tmp_path / "runs" / "b.csv").write_text("x\n10\n")
    again = nbpipe.execute(src)
    assert ran(again) == {"sum"}, statuses(again)
    assert text_of(read(again.output).cells[1]) == "13\n"


@pytest.mark.slow
def test_refresh_of_a_map_app_re_runs_every_item_and_replaces_the_entries(tmp_path: Path) -> None:
    src = mapped(tmp_path / "nb.ipynb")
    assert nbpipe.execute(src).ok
    refreshed = nbpipe.execute(src, refresh=["scan"])
    assert [r.status.value for r in refreshed.apps["scan"].items] == ["completed"] * 4
    assert statuses(refreshed)["grid"] == "cached" and statuses(refreshed)["total"] == "completed"
    run_id = read(refreshed.output).metadata["nbpipe"]["run"]["id"]
    after = nbpipe.execute(src)
    assert ran(after) == set(), statuses(after)
    assert read(after.output).metadata["nbpipe"]["apps"]["total"]["cache"]["run"] == run_id
