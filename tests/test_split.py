"""Splitting a notebook without tags: ``--split cells|auto``, ``nbpipe tag`` and what
``nbpipe graph --split auto`` explains, on notebooks written the way scientists write
them (magics, pandas edited in place, plots, a generator passed on, a function
redefined, an empty cell, a syntax error, tags nbpipe does not know).

The grouping rules are checked one by one on :func:`nbpipe.split.split_notebook`
(each test fails if its rule breaks) and by real runs: parallel branches overlap in
time, a generator runs in one app, recorded durations change the choice.
"""

from __future__ import annotations

import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import ENGINE_PARAMS, Runs, assert_same_outputs, notebook, run_papermill
from nbbuild import by_id, code, md, nbpipe_cli, read, text_of, write
from test_fuzz import notebooks as fuzz_notebooks

import nbpipe
from nbpipe import magics
from nbpipe.api import ENGINES, load_pipeline
from nbpipe.graph import build_pipeline
from nbpipe.parse import parse_notebook
from nbpipe.split import LIGHT_SECONDS, Split, cell_digest, split_notebook
from nbpipe.store import DURATIONS, Store

# --------------------------------------------------------------------- helpers


def _split(nb: Any, mode: str = "auto", durations: dict[str, float] | None = None) -> Split:
    """The split, checked to be a notebook nbpipe itself accepts."""
    split = split_notebook(nb, mode, None, durations)
    build_pipeline(parse_notebook(split.nb, None))
    return split


def _apps(split: Split) -> list[tuple[int, ...]]:
    """The cells of each app the split chose, in order."""
    return [group.cells for group in split.groups]


def _app_of(split: Split, index: int) -> str:
    return next(group.app for group in split.groups if index in group.cells)


def _statuses(result: Any) -> dict[str, str]:
    return {app: r.status.value for app, r in result.apps.items()}


def _run(path: Path, split: str | None, engine: str = ENGINES[0], **kwargs: Any) -> tuple[Any, Any]:
    out = path.with_name(f"{path.stem}.{split}.merged.ipynb")
    result = nbpipe.execute(path, output=out, split=split, engine=engine, workers=2, **kwargs)
    return result, read(out)


def _realistic(path: Path) -> Path:
    """A small analysis as a scientist writes it: magics, pandas edited in place, a plot,
    a shell cell, an empty cell, a function redefined below its first use."""
    nb = notebook(
        md("# Station temperatures"),
        code("%matplotlib inline\nimport numpy as np\nimport pandas as pd\nimport matplotlib.pyplot as plt"),
        code("def smooth(s):\n    return s.rolling(3, min_periods=1).mean()"),
        code("rng = np.random.default_rng(7)\n"
             "df = pd.DataFrame({'day': np.arange(30), 'temp': rng.normal(12, 3, 30).round(2)})\n"
             "df.head()"),
        code("df['temp'] = smooth(df['temp'])\ndf.sort_values('temp', inplace=True)\ndf.tail(3)"),
        code("summary = df['temp'].describe()\nsummary"),
        code("fig, ax = plt.subplots(figsize=(3, 2))\nax.plot(df['day'], df['temp'], '.')\nplt.show()"),
        code("%%bash\necho from the shell"),
        code(""),
        code("def smooth(s):\n    return s"),
        code("print(len(df), round(float(summary['mean']), 4), smooth(3))"),
    )
    nbformat.write(nb, path)
    return path


# --------------------------------------------------------------------- cells


def test_cells_mode_makes_every_code_cell_an_app_named_by_its_index() -> None:
    nb = notebook(md("# title"), code("a = 1"), code("b = a + 1"), md("text"), code(""), code("print(b)"))
    split = _split(nb, "cells")
    assert [(g.app, g.cells) for g in split.groups] == [("cell1", (1,)), ("cell2", (2,)), ("cell4", (4,)),
                                                       ("cell5", (5,))]
    pipeline = build_pipeline(parse_notebook(split.nb, None))
    assert set(pipeline.graph.edges) == {("cell1", "cell2"), ("cell2", "cell5")}


def test_cells_mode_keeps_the_roles_and_drops_other_nbpipe_tags_with_a_warning(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("n = 2", "parameters"),
                code("import math", "setup", "remove-input"),
                code("xs = list(range(n))", "app:load", "retries:2"),
                code("raise RuntimeError('never run')", "skip"),
                code("total = math.fsum(xs)\nprint('total', total)", "after:load", "hide-output"),
                code("print('metric', total * 2)", "metrics"))
    out = tmp_path / "out.ipynb"
    proc = nbpipe_cli("execute", src, "--split", "cells", "-p", "n", "4", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if line.startswith("nbpipe: warning: --split"))
    for tag in ("app:load", "retries:2", "after:load"):
        assert tag in warning
    for kept in ("parameters", "setup", "skip", "metrics", "remove-input", "hide-output"):
        assert kept not in warning.split("(")[1].split(")")[0]
    merged = read(out)
    assert set(merged.metadata["nbpipe"]["apps"]) == {"cell2", "cell4", "metrics"}  # parameters, setup, skip
    assert text_of(merged.cells[-2]) == "total 6.0\n"  # -p n 4 reached the parameters cell
    assert text_of(merged.cells[-1]) == "metric 12.0\n"
    source = read(src)
    assert by_id(merged, source.cells[3].id).outputs == []  # skip: never run
    # the merged notebook keeps every cell's own tags, nbpipe's too
    assert [by_id(merged, c.id).metadata.get("tags") for c in source.cells] == [
        c.metadata.get("tags") for c in source.cells]
    assert merged.metadata["nbpipe"]["split"]["ignored_tags"] == ["after:load", "app:load", "retries:2"]


def test_hostile_tags_are_dropped_or_kept_never_a_crash() -> None:
    nb = notebook(code("x = 1", "app:", "app:../../etc", "map:", "APP:X", "app :y", "image:evil;rm -rf"),
                  code("y = x + 1", "app:setup", "app:a b", "step:zz", "executor:gpu", "retries:abc", "🙂"),
                  code("print(y)", "prev:x", "block:", "remove-input"))
    for mode in ("cells", "auto"):
        split = _split(nb, mode)
        dropped = {tag for _, tag in split.dropped}
        assert dropped == {"app:", "app:../../etc", "map:", "image:evil;rm -rf", "app:setup", "app:a b", "step:zz",
                           "executor:gpu", "retries:abc", "prev:x", "block:"}
        # not nbpipe's (an unknown prefix, a space before the colon): left alone, as a tagged run leaves them
        assert split.nb.cells[0].metadata["tags"][-2:] == ["APP:X", "app :y"]
        assert "🙂" in split.nb.cells[1].metadata["tags"] and "remove-input" in split.nb.cells[2].metadata["tags"]
        assert split.warning() is not None and "cell(s) 0, 1, 2" in split.warning()


@pytest.mark.parametrize("mode", ["cells", "auto"])
def test_notebooks_without_code_split_to_nothing_and_run(tmp_path: Path, mode: str) -> None:
    for name, cells in (("words", [md("# only words"), md("more")]), ("empty", [])):
        src = write(tmp_path / f"{name}.ipynb", *cells)
        assert split_notebook(read(src), mode).groups == ()
        result, merged = _run(src, mode)
        assert result.ok and result.apps == {}
        assert [c.source for c in merged.cells] == [c.source for c in read(src).cells]


def test_empty_code_cells_do_not_break_a_split() -> None:
    nb = notebook(code(""), code("   \n"), code("x = 1"), code(""))
    assert len(_split(nb, "cells").groups) == 4
    assert _apps(_split(nb, "auto")) == [(0, 1, 2, 3)]


def test_a_metrics_cell_with_split_auto(tmp_path: Path) -> None:
    """A ``metrics`` cell is an app the split did not make (it used to raise KeyError: 'metrics')."""
    src = write(tmp_path / "nb.ipynb",
                code("x = 3"), code("y = x * 2"),
                code("import json\nprint(json.dumps({'y': y}))", "metrics"))
    split = _split(read(src), "auto")
    assert _apps(split) == [(0, 1)]
    result, merged = _run(src, "auto")
    assert result.ok, _statuses(result)
    assert text_of(merged.cells[2]) == '{"y": 6}\n'


# --------------------------------------------------------------------- same outputs as papermill


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
@pytest.mark.parametrize("mode", ["cells", "auto"])
def test_both_splits_give_papermills_outputs(tmp_path: Path, engine: str, mode: str,
                                             matplotlib_ready: None) -> None:
    src = _realistic(tmp_path / "nb.ipynb")
    pm_out = tmp_path / "pm.ipynb"
    error = run_papermill(src, pm_out)
    assert error is None, error
    result, merged = _run(src, mode, engine)
    assert result.ok, _statuses(result)
    if mode == "cells":
        assert len(result.apps) == 10
    runs = Runs(read(src), read(pm_out), merged, result, None, None)
    assert assert_same_outputs(runs) == 10
    plot = runs.nbp(runs.code_ids()[5])
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)


def test_a_syntax_error_stops_the_auto_split_where_papermill_stops(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1\nprint('before', x)"), code("y = (x +"), code("print('after', x)"))
    assert _apps(_split(read(src), "auto")) == [(0, 1, 2)]
    pm_out = tmp_path / "pm.ipynb"
    assert run_papermill(src, pm_out) is not None
    result, merged = _run(src, "auto")
    assert not result.ok
    pm = read(pm_out)
    for i in range(3):
        assert text_of(merged.cells[i]) == text_of(pm.cells[i]), i
    assert text_of(merged.cells[2]) == ""


# --------------------------------------------------------------------- auto: the rules


def test_auto_keeps_a_chain_in_one_app() -> None:
    nb = notebook(code("raw = list(range(100))"),
                  code("clean = [v for v in raw if v % 3]"),
                  code("scaled = [v / max(clean) for v in clean]"),
                  code("total = sum(x * x for x in scaled)"))
    split = _split(nb)
    assert _apps(split) == [(0, 1, 2, 3)]
    assert any("reads clean from this app alone" in why for why in split.groups[0].why)
    assert len(_split(nb, "cells").groups) == 4


def _branches(path: Path, seconds: float = 0.8) -> Path:
    """Two independent CPU-light but slow branches (a loop of sleeps), joined at the end."""
    return write(path,
                 code("import time"),
                 code("a = []\nfor i in range(4):\n    time.sleep(%r)\n    a.append(i)" % (seconds / 4)),
                 code("a2 = [v * 2 for v in a]"),
                 code("b = []\nfor i in range(4):\n    time.sleep(%r)\n    b.append(-i)" % (seconds / 4)),
                 code("b2 = [v * 3 for v in b]"),
                 code("print(sum(a2), sum(b2))"))


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_auto_runs_independent_branches_as_parallel_apps(tmp_path: Path, engine: str) -> None:
    src = _branches(tmp_path / "nb.ipynb")
    split = _split(read(src))
    assert split.setup == ((0, "only imports and definitions"),)
    assert _apps(split) == [(1, 2), (3, 4), (5,)]
    result, merged = _run(src, "auto", engine)
    assert result.ok and text_of(merged.cells[5]) == "12 -18\n"
    apps = merged.metadata["nbpipe"]["apps"]
    a, b = apps[_app_of(split, 1)], apps[_app_of(split, 3)]
    overlap = min(a["end_time"], b["end_time"]) - max(a["start_time"], b["start_time"])
    assert overlap > 0.4, (a, b)  # each branch sleeps 0.8 s
    assert merged.metadata["nbpipe"]["split"]["mode"] == "auto"


def test_auto_makes_import_and_def_cells_setup_but_not_a_def_redefined_later() -> None:
    nb = notebook(code("import math\nfrom statistics import mean"),
                  code('def area(r):\n    """Disc area."""\n    return math.pi * r * r\n\nclass Box:\n    pass'),
                  code("def norm(x):\n    return x / 10"),
                  code("a = area(2)\nb = norm(a)"),
                  code("def norm(x):\n    return -x"),
                  code("c = norm(mean([1, 2]))"),
                  code("def scaled(x):\n    return x * factor"),  # reads a global an app defines
                  code("factor = 3\nd = scaled(c)"))
    split = _split(nb)
    assert [i for i, _ in split.setup] == [0, 1]
    assert "setup" in split.nb.cells[1].metadata["tags"]
    assert "setup" not in split.nb.cells[2].metadata.get("tags", [])  # norm is defined twice
    assert "setup" not in split.nb.cells[4].metadata.get("tags", [])
    assert _app_of(split, 2) == _app_of(split, 3)


def test_a_magic_first_cell_of_imports_becomes_setup() -> None:
    """The first cell of many notebooks: ``%matplotlib inline`` and the imports."""
    nb = notebook(code("%matplotlib inline\n%load_ext autoreload\n%autoreload 2\nimport math"),
                  code("x = math.sqrt(2)"), code("y = math.sqrt(3)\nfor _ in range(2): pass"))
    split = _split(nb)
    assert [i for i, _ in split.setup] == [0]


def _generator(path: Path) -> Path:
    return write(path,
                 code("def numbers(n):\n    for i in range(n):\n        yield i * i"),
                 code("gen = numbers(6)"),
                 code("first = next(gen)\nprint('first', first)"),
                 code("rest = list(gen)\nprint('rest', rest)"),
                 code("other = (c for c in 'abc')"),
                 code("print(''.join(other))"))


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_auto_keeps_a_generator_with_the_cells_that_consume_it(tmp_path: Path, engine: str) -> None:
    src = _generator(tmp_path / "nb.ipynb")
    split = _split(read(src))
    assert _app_of(split, 1) == _app_of(split, 2) == _app_of(split, 3)
    assert _app_of(split, 4) == _app_of(split, 5)
    assert any("gen is a generator (numbers() yields), which cannot ship" in why
               for group in split.groups for why in group.why)
    result, merged = _run(src, "auto", engine)
    assert result.ok, _statuses(result)
    assert [text_of(merged.cells[i]) for i in (2, 3, 5)] == ["first 0\n", "rest [1, 4, 9, 16, 25]\n", "abc\n"]

    result, merged = _run(src, "cells", engine)
    assert not result.ok
    assert _statuses(result)["cell1"] == "failed"
    assert "gen" in result.apps["cell1"].error["evalue"] and "cannot be shipped" in result.apps["cell1"].error["evalue"]


def test_auto_joins_light_display_cells_to_their_producer() -> None:
    nb = notebook(code("%matplotlib inline\nimport pandas as pd\nimport matplotlib.pyplot as plt"),
                  code("df = pd.DataFrame({'a': range(1000)})\nfor k in range(3):\n    df[f'c{k}'] = df['a'] * k"),
                  code("df.head()"),
                  code("print(df.shape)"),
                  code("res = pd.DataFrame({'b': range(1000)})\nfor k in range(3):\n    res[f'c{k}'] = res['b'] + k"),
                  code("res.describe()"),
                  code("fig, ax = plt.subplots()\nax.plot(res['b'], res['c2'])\nplt.show()"))
    split = _split(nb)
    assert [i for i, _ in split.setup] == [0]  # so the plot reads plt from setup, res alone from an app
    assert _apps(split) == [(1, 2, 3), (4, 5, 6)]
    assert any("light, reads df, and nothing reads it" in why for why in split.groups[0].why)


def test_recorded_durations_change_the_choice() -> None:
    nb = notebook(code("base = list(range(10))"),
                  code("big = [b * 2 for b in base]"),  # a comprehension: heavy by its look
                  code("odd = [b for b in base if b % 2]"),
                  code("import time\ntime.sleep(0)\nprint(len(base))"))  # light by its look
    unmeasured = _split(nb)
    assert _apps(unmeasured) == [(0, 3), (1,), (2,)]
    heavy = {cell_digest(nb.cells[3].source): LIGHT_SECONDS * 20}
    assert _apps(_split(nb, durations=heavy)) == [(0,), (1,), (2,), (3,)]  # measured heavy: stays apart
    # measured lighter than it looks: judged by its look, so a second run keeps the first's apps
    light = {cell_digest(nb.cells[1].source): LIGHT_SECONDS / 100}
    assert _apps(_split(nb, durations=light)) == _apps(unmeasured)


@pytest.mark.cache
def test_a_run_records_durations_that_the_next_split_uses(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("data = [1, 2, 3]"),
                code("import time\ntime.sleep(%r)\nprint(sum(data))" % (LIGHT_SECONDS * 3)),
                code("import time\nfor _ in range(3):\n    time.sleep(%r)\nprint(len(data))" % LIGHT_SECONDS))
    before = load_pipeline(src, "auto").split
    assert before is not None and _apps(before) == [(0, 1, 2)]  # cell 1 looks light, so the chain is one app
    result, _ = _run(src, "auto")
    assert result.ok
    recorded = Store.of_cache(tmp_path / ".nbpipe-cache").durations()
    assert recorded[cell_digest(read(src).cells[1].source)] >= LIGHT_SECONDS * 3
    after = load_pipeline(src, "auto").split
    assert after is not None and _apps(after) == [(0,), (1,), (2,)]  # both measured heavy: in parallel


# --------------------------------------------------------------------- nbpipe tag


def test_tag_writes_a_notebook_that_check_accepts_and_execute_runs_with_the_same_apps(tmp_path: Path) -> None:
    src = _generator(tmp_path / "nb.ipynb")
    proc = nbpipe_cli("tag", src, "--split", "auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tagged = tmp_path / "nb.tagged.ipynb"
    assert proc.stdout.strip() == str(tagged)
    assert "--split auto:" in proc.stderr
    assert nbpipe_cli("check", tagged, cwd=tmp_path).returncode == 0
    split = split_notebook(read(src), "auto")
    result, _ = _run(tagged, None)
    assert result.ok and list(result.apps) == [g.app for g in split.groups]
    assert read(src).cells[1].metadata.get("tags") is None  # the source is left as it was


def test_tag_with_dash_o_and_cells(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1", "remove-input", "app:old"), code("print(x)"))
    out = tmp_path / "sub" / "mine.ipynb"
    proc = nbpipe_cli("tag", src, "--split", "cells", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nbpipe: warning:" in proc.stderr and "app:old" in proc.stderr
    assert [c.metadata["tags"] for c in read(out).cells] == [["app:cell0", "remove-input"], ["app:cell1"]]
    assert not (tmp_path / "nb.tagged.ipynb").exists()


def test_tag_refuses_an_output_it_cannot_write(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1"))
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("not a directory")
    for output, said in (("adir", "is a directory"), ("afile/out.ipynb", "is not a directory")):
        proc = nbpipe_cli("tag", src, "--split", "cells", "-o", output, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"nbpipe: error: -o {output}: ")
        assert said in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------- graph and explain


def test_graph_split_auto_says_which_apps_and_why(tmp_path: Path) -> None:
    src = _generator(tmp_path / "nb.ipynb")
    proc = nbpipe_cli("graph", src, "--split", "auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    split = split_notebook(read(src), "auto")
    code_cells = sum(1 for c in read(src).cells if c.cell_type == "code")
    assert f"--split auto: {len(split.groups)} app(s) and {len(split.setup)} setup cell(s) " \
           f"from {code_cells} code cell(s)" in text
    assert "setup: cell 0 (only imports and definitions)" in text
    assert "gen is a generator (numbers() yields), which cannot ship" in text
    for group in split.groups:
        assert f"  {group.app}: cell" in text

    proc = nbpipe_cli("graph", src, "--split", "auto", "--format", "json", cwd=tmp_path)
    data = json.loads(proc.stdout)
    assert set(data["split"]["apps"]) == {g.app for g in split.groups} == {a["name"] for a in data["apps"]}
    assert data["split"]["mode"] == "auto" and data["split"]["why"][0].startswith("--split auto")
    plain = json.loads(nbpipe_cli("graph", src, "--format", "json", cwd=tmp_path).stdout)
    assert "split" not in plain
    checked = json.loads(nbpipe_cli("check", src, "--split", "auto", "--json", cwd=tmp_path).stdout)
    assert checked["split"] == data["split"]  # check --json prints what check prints


def test_graph_split_auto_on_300_cells_is_fast(tmp_path: Path) -> None:
    cells = [code("import numpy as np")]
    for i in range(1, 300):
        cells.append([code(f"v{i} = np.arange({i})"),
                      code(f"w{i} = v{i - 1} * 2\nfor j in range(3):\n    w{i} = w{i} + j"),
                      code(f"print(w{i - 1}.sum())"),
                      md(f"## step {i}"),
                      code(f"def f{i}(x):\n    return x + {i}"),
                      code(f"t{i} = f{i - 1}(w{i - 3}.sum())\nt{i}")][i % 6])
    src = write(tmp_path / "big.ipynb", *cells)
    started = time.perf_counter()
    proc = nbpipe_cli("graph", src, "--split", "auto", cwd=tmp_path)
    took = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert "--split auto: " in proc.stdout
    assert took < 10, f"nbpipe graph --split auto on 300 cells took {took:.1f} s"


# --------------------------------------------------------------------- the cache


@pytest.mark.cache
def test_a_second_auto_run_is_fully_cached(tmp_path: Path) -> None:
    src = _branches(tmp_path / "nb.ipynb", seconds=0.4)
    first, _ = _run(src, "auto")
    assert first.ok and set(_statuses(first).values()) == {"completed"}
    second, merged = _run(src, "auto")
    assert set(_statuses(second).values()) == {"cached"}, _statuses(second)
    assert list(second.apps) == list(first.apps)
    assert text_of(merged.cells[5]) == "12 -18\n"


@pytest.mark.cache
@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2, 3]", b'{"a": "slow", "b": -1, "c": true}',
                                     b"\xff\xfe\x00", b"", None])
def test_a_broken_durations_file_is_no_crash(tmp_path: Path, garbage: bytes | None) -> None:
    src = _branches(tmp_path / "nb.ipynb", seconds=0.04)
    cache = tmp_path / ".nbpipe-cache"
    cache.mkdir()
    if garbage is None:
        (cache / DURATIONS).mkdir()  # cannot be read, cannot be replaced
    else:
        (cache / DURATIONS).write_bytes(garbage)
    assert load_pipeline(src, "auto").split is not None
    result, merged = _run(src, "auto")
    assert result.ok and text_of(merged.cells[5]) == "12 -18\n"
    if garbage is not None:
        assert Store.of_cache(cache).durations()  # replaced by what this run measured


# --------------------------------------------------------------------- the magic


def test_the_magic_takes_split(tmp_path: Path) -> None:
    src = _generator(tmp_path / "nb.ipynb")
    pipeline = magics._run(["graph", str(src), "--split", "auto"], None)
    assert pipeline.split is not None
    assert list(pipeline.apps) == [g.app for g in split_notebook(read(src), "auto").groups]
    out = tmp_path / "m.ipynb"
    result = magics._run(["execute", str(src), "--split", "auto", "-o", str(out)], None)
    assert result.ok and list(result.apps) == list(pipeline.apps)
    assert read(out).metadata["nbpipe"]["split"]["mode"] == "auto"
    with pytest.raises(nbpipe.errors.UsageError, match="invalid choice"):
        magics._parse(["execute", str(src), "--split", "rows"])


def test_a_metrics_cell_reading_a_generator_is_no_crash(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("gen = (i for i in range(3))"), code("print(list(gen))", "metrics"))
    assert _apps(_split(read(src), "auto")) == [(0,)]
    result, _ = _run(src, "auto")
    assert not result.ok and "cannot be shipped" in result.apps["gen"].error["evalue"]


# --------------------------------------------------------------------- sloppy notebooks, both splits


SLOPPY = {
    "a global read late by a function": [
        code("scale = 2\ndef f(x):\n    return x * scale"), code("a = f(1)\nprint(a)"), code("scale = 10"),
        code("b = f(1)\nprint(a, b)")],
    "a setup function reading a global set later": [
        code("def f(x):\n    return x * scale"), code("scale = 2"), code("print(f(1))"), code("scale = 10"),
        code("for _ in range(2):\n    pass\nprint(f(1))")],
    "a name used before the cell that defines it": [
        code("print('start')"), code("print(later)"), code("later = 1"), code("print('end', later)")],
    "a list edited in place in several cells": [
        code("xs = []"), code("xs.append(1)"), code("for i in range(3):\n    xs.append(i)"),
        code("xs.sort()\nprint(xs)")],
    "a pandas frame edited in place then plotted": [
        code("import pandas as pd\nimport matplotlib.pyplot as plt"),
        code("df = pd.DataFrame({'a': [3, 1, 2]})"),
        code("df.sort_values('a', inplace=True)\ndf.reset_index(drop=True, inplace=True)"),
        code("df['b'] = df['a'].cumsum()"), code("ax = df.plot()\nplt.show()"), code("df")],
    "magics that define names or files": [
        code("%%capture cap\nprint('hidden')"), code("print(cap.stdout.upper())"), code("files = !echo a b"),
        code("print(files)"), code("%time y = sum(range(10))"), code("print(y)"),
        code("%%writefile note.txt\nhello"), code("print(open('note.txt').read())")],
    "a class redefined and an instance kept": [
        code("class P:\n    k = 1"), code("p = P()"), code("class P:\n    k = 2"),
        code("print(p.k, P().k, isinstance(p, P))")],
}


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
@pytest.mark.parametrize("mode", ["cells", "auto"])
@pytest.mark.parametrize("name", sorted(SLOPPY))
def test_sloppy_notebooks_give_papermills_outputs(tmp_path: Path, mode: str, name: str, engine: str,
                                                  matplotlib_ready: None) -> None:
    (tmp_path / "pm").mkdir()
    (tmp_path / "nbpipe").mkdir()
    pm_src, src = tmp_path / "pm" / "nb.ipynb", tmp_path / "nbpipe" / "nb.ipynb"
    for path in (pm_src, src):  # apart: a cell may write a file
        nbformat.write(notebook(*SLOPPY[name]), path)
    pm_out = tmp_path / "pm" / "out.ipynb"
    error = run_papermill(pm_src, pm_out)
    result, merged = _run(src, mode, engine)
    assert result.ok is (error is None), {a: (r.status.value, r.error) for a, r in result.apps.items()
                                           if not r.status.ok}
    runs = Runs(read(src), read(pm_out), merged, result, error, None)
    ran = [c.id for c in runs.papermill.cells if c.cell_type == "code" and c.execution_count is not None]
    assert_same_outputs(runs, ran, counts=False)


def test_a_wide_notebook_of_light_cells_splits_quickly() -> None:
    """600 cells each reading one value (light sinks of one producer): the grouping stays
    fast (600 cells took 4.9 s, 1000 cells 16 s; now 0.7 s and 2 s)."""
    nb = notebook(code("data = 3"), *(code(f"r{i} = data * {i}") for i in range(599)))
    started = time.perf_counter()
    split = split_notebook(nb, "auto")
    took = time.perf_counter() - started
    assert _apps(split) == [tuple(range(600))]
    assert took < 2.5, f"--split auto on 600 light cells took {took:.1f} s"


@pytest.mark.parametrize("mode", ["cells", "auto"])
def test_a_cell_running_the_magic_stays_out_of_every_app(tmp_path: Path, mode: str) -> None:
    """A ``%nbpipe`` cell is skipped as if tagged ``skip`` (it would run the pipeline from inside
    itself): a split makes no app of it (auto raised KeyError, cells named an app that did not exist)."""
    src = write(tmp_path / "nb.ipynb", code("%load_ext nbpipe"), code("x = 1"),
                code("%nbpipe execute --split auto"), code("print('x is', x)"))
    split = _split(read(src), mode)
    assert all(2 not in group.cells for group in split.groups)
    assert {g.app for g in split.groups} == set(load_pipeline(src, mode).apps)
    result, merged = _run(src, mode)
    assert result.ok and text_of(merged.cells[3]) == "x is 1\n"
    assert merged.cells[2].outputs == [] and merged.cells[2].execution_count is None


@pytest.mark.cache
def test_a_second_auto_run_keeps_the_apps_when_a_cell_is_measured_lighter_than_it_looks(tmp_path: Path) -> None:
    """A comprehension looks heavy (its own app); measured light it used to join the app beside
    it on the second run, whose cache key then changed: that app ran again for nothing."""
    src = write(tmp_path / "nb.ipynb",
                code("import time"),
                code("total = 0\nfor i in range(3):\n    time.sleep(0.1)\n    total += i"),
                code("print(total)"),
                code("labels = [str(i) for i in range(3)]"),
                code("print(labels)"))
    first, _ = _run(src, "auto")
    assert first.ok and len(first.apps) == 2
    second, merged = _run(src, "auto")
    assert list(second.apps) == list(first.apps)
    assert set(_statuses(second).values()) == {"cached"}, _statuses(second)
    assert text_of(merged.cells[4]) == "['0', '1', '2']\n"


def test_the_progress_counts_the_apps_a_sites_cache_made(tmp_path: Path) -> None:
    """The durations come from the cache the run uses (here a site's ``cache_dir``), and the
    progress counts the apps the run has."""
    src = write(tmp_path / "nb.ipynb", code("x = 2"), code("print(x)"), code("y = [x] * 3\nprint(y)"))
    (tmp_path / "nbpipe.toml").write_text('[sites.cluster]\nengine = "local"\ncache_dir = "shared/cache"\n')
    cache = tmp_path / "shared" / "cache"
    cache.mkdir(parents=True)
    heavy = LIGHT_SECONDS * 10
    (cache / DURATIONS).write_text(json.dumps({cell_digest("print(x)"): heavy,
                                               cell_digest("y = [x] * 3\nprint(y)"): heavy}))
    proc = nbpipe_cli("execute", src, "--site", "cluster", "--split", "auto", "-o", tmp_path / "out.ipynb",
                      cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = read(tmp_path / "out.ipynb")
    apps = merged.metadata["nbpipe"]["apps"]
    assert len(apps) == 3  # cells 1 and 2, measured heavy, run in parallel
    assert f"({len(apps)}/{len(apps)}) completed" in proc.stderr, proc.stderr


UNSHIPPABLE = {
    "a generator function of a tagged setup cell": [
        code("def numbers(n):\n    yield from range(n)", "setup"), code("gen = numbers(4)"),
        code("for x in gen:\n    print(x)\n    break"), code("for y in gen:\n    print('then', y)")],
    "a csv reader": [
        code("import csv"), code("rows = csv.reader(open('d.csv'))"),
        code("for r in rows:\n    print(r)\n    break"), code("for r in rows:\n    print('then', r)")],
    "enumerate over a generator": [
        code("pairs = enumerate(x * 2 for x in range(3))"),
        code("for i, p in pairs:\n    print(i, p)\n    break"), code("for i, p in pairs:\n    print('then', i, p)")],
    "zip over a generator made in another cell": [
        code("gen = (x * x for x in range(3))"), code("pairs = zip('abc', gen)"),
        code("for k, v in pairs:\n    print(k, v)\n    break"), code("for k, v in pairs:\n    print('then', k, v)")],
}


@pytest.mark.parametrize("name", sorted(UNSHIPPABLE))
def test_auto_keeps_values_that_cannot_ship_with_their_readers(tmp_path: Path, name: str) -> None:
    """Two loops read a value no app can ship: both join the app that makes it, as in papermill."""
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4\n")
    src = write(tmp_path / "nb.ipynb", *UNSHIPPABLE[name])
    split = _split(read(src))
    last = len(UNSHIPPABLE[name]) - 1
    assert _app_of(split, last - 2) == _app_of(split, last - 1) == _app_of(split, last), _apps(split)
    result, merged = _run(src, "auto")
    assert result.ok, {a: (r.error or {}).get("evalue") for a, r in result.apps.items()}
    assert text_of(merged.cells[last]).startswith("then")


# --------------------------------------------------------------------- fuzzed


def _split_static_path(nb: Any) -> None:
    """Every split command exits 0 or 2 (one line), runs nothing, and what ``tag`` writes,
    ``check`` accepts with the same apps."""
    from test_fuzz import BESIDE, MARKER, run

    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "marker"
        if isinstance(nb, dict) and BESIDE in nb:
            nb = dict(nb)
            (Path(tmp) / "mod.py").write_text(json.dumps(nb.pop(BESIDE))[1:-1])
        path = Path(tmp) / "nb.ipynb"
        path.write_text(json.dumps(nb).replace(MARKER, str(marker)))
        for mode in ("cells", "auto"):
            tagged = Path(tmp) / f"{mode}.ipynb"
            for argv in (["graph", str(path), "--split", mode, "--format", "json"],
                         ["tag", str(path), "--split", mode, "-o", str(tagged)]):
                code, err = run(argv)
                assert code in (0, 2), (argv, code, err)
                if code == 2:
                    assert err.startswith("nbpipe: error: ") and err.count("\n") == 1, err
            if tagged.exists():  # check says of the tagged copy what check --split says of the notebook
                code, err = run(["check", str(tagged)])
                assert code == run(["check", str(path), "--split", mode])[0], (mode, err)
                assert list(load_pipeline(tagged).apps) == list(load_pipeline(path, mode).apps)
        assert not marker.exists(), "a payload ran"


_FUZZ = dict(deadline=timedelta(seconds=10), database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=60, derandomize=True, **_FUZZ)  # type: ignore[arg-type]
@given(st.one_of(fuzz_notebooks(), fuzz_notebooks(mangled=True)))
def test_fuzzed_notebooks_split_and_tag_to_what_check_accepts(nb: dict[str, Any]) -> None:
    _split_static_path(nb)


def test_a_cell_nested_as_deep_as_the_parser_allows_is_read_as_unparsable_not_a_crash() -> None:
    """200 nested brackets make CPython 3.11's parser raise MemoryError (a fuzzed
    notebook found it in the split's file analysis); 250 give a SyntaxError."""
    nested = "__all__ = " + "[" * 200 + "]" * 200
    for source in (f"x = 1\n%%writefile mod.py\n{nested}\n%%bash\necho hi", nested):
        nb = {"nbformat": 4, "nbformat_minor": 4, "cells": [
            {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": source},
            {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
             "source": "print(x)"}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
        _split_static_path(nb)


@pytest.mark.slow
@settings(max_examples=1000, derandomize=True, **_FUZZ)  # type: ignore[arg-type]
@given(st.one_of(fuzz_notebooks(), fuzz_notebooks(mangled=True)))
def test_fuzzed_notebooks_split_and_tag_to_what_check_accepts_many(nb: dict[str, Any]) -> None:
    _split_static_path(nb)
