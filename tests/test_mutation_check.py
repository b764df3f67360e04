"""The mutation check: never a silently wrong value.

Each app digests the values it received before and after its cells. A value
it changed although the graph did not predict it (through an alias, a
function, a bound method, ``exec`` of a built string: code the static
analysis cannot see) makes the apps that read the name further down read the
changed value instead, re-running them if they already ran, so the merged
notebook equals papermill's. When that cannot be done, the changing app fails
with an error naming it, the variable and the fix.

The mutations here are ones no static analysis of the cell can see, so the
tests keep testing the dynamic check as the static one grows.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbbuild import nbpipe_cli, text_of

from conftest import Runs, assert_same_outputs, assert_well_formed, code, notebook
from nbpipe.api import load_pipeline
from nbpipe.digest import _unwritten_mapping, changed, digest, digests
from nbpipe.mutations import Dataflow

#: how long a mutating app waits, so the apps reading the same value have run first
SLOW = "import time\ntime.sleep(1.5)\n"


def reruns(runs: Runs) -> list[dict[str, Any]]:
    return list(runs.merged.metadata["nbpipe"]["reruns"])


def attempts(runs: Runs, app: str) -> int:
    return int(runs.result.apps[app].attempts)


# --------------------------------------------------------------------- re-runs


def test_mutation_through_an_alias_reruns_the_reader(both: Any) -> None:
    nb = notebook(
        code("rows = [[1], [2]]", "app:make"),
        code(SLOW + "for r in rows:\n    r.append(0)\nprint('mutate', rows)", "app:mutate"),
        code("total = sum(len(r) for r in rows)\nprint('read', rows, total)", "app:read"),
        code("print('below', total)", "app:below"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[2])) == "read [[1, 0], [2, 0]] 4\n"
    # read ran beside mutate (both wait only for make) and was re-run with the change;
    # below, which consumed read's output, ran again too
    assert reruns(runs) == [{"app": "read", "read": "rows", "from": "mutate", "reran": True}]
    assert attempts(runs, "read") == 2 and attempts(runs, "below") >= 1
    assert runs.result.apps["below"].status.value == "completed"
    edges = {(e["from"], e["to"]) for e in runs.merged.metadata["nbpipe"]["graph"]["edges"]}
    assert ("mutate", "read") not in edges  # the static graph is recorded as analysed


def test_function_mutating_its_argument(both: Any) -> None:
    nb = notebook(
        code("def add(values, x):\n    values.append(x)", "setup"),
        code("lst = [0]\ndef twice(values):\n    add(values, 1)\n    add(values, 2)", "app:make"),
        code(SLOW + "twice(lst)\nprint('changed', lst)", "app:change"),
        code("print('later', lst)", "app:later"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[3])) == "later [0, 1, 2]\n"
    assert [(r["app"], r["from"], r["read"]) for r in reruns(runs)] == [("later", "change", "lst")]


def test_mutation_of_a_setup_list_through_a_bound_method_and_exec(both: Any) -> None:
    nb = notebook(
        code("registry = []\nseen = {}", "setup"),
        code("print('before', registry, seen)", "app:early"),
        code(SLOW + "extend = registry.extend\nextend(['a', 'b'])\n"
             "list(map(registry.append, ['c']))\n"
             "exec('se' + 'en[1] = 2')\nprint('register', registry, seen)", "app:register"),
        code("print('after', registry, seen)", "app:late"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[3])) == "after ['a', 'b', 'c'] {1: 2}\n"
    assert text_of(runs.nbp(runs.code_ids()[1])) == "before [] {}\n"  # above the change: unchanged
    assert sorted((r["app"], r["read"], r["from"]) for r in reruns(runs)) == [
        ("late", "registry", "register"), ("late", "seen", "register")]


def test_writes_through_a_view_an_iterator_and_a_generator_state(both: Any) -> None:
    nb = notebook(
        code("import numpy as np", "setup"),
        code("big = np.zeros(300_000)\nit = iter([2, 4, 6])\nrng = np.random.default_rng(0)", "app:make"),
        code(SLOW + "corner = big[:2]\ncorner[0] = 99.0\nfirst = next(it)\n"
             "draw = np.round(rng.normal(size=2), 6)\nprint(first, draw)", "app:use"),
        code("print(big[0], big.sum(), next(it), np.round(rng.normal(size=2), 6))", "app:after"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[3])).startswith("99.0 99.0 4 ")
    # the static analysis may come to predict next() and the draw; the write through a view it cannot
    assert "big" in {r["read"] for r in reruns(runs) if r["app"] == "after"}


def test_reader_that_failed_on_the_stale_value_runs_again(both: Any) -> None:
    nb = notebook(
        code("def register(table, key):\n    table[key] = len(table)", "setup"),
        code("table = {}", "app:make"),
        code(SLOW + "register(table, 'k')", "app:fill"),
        code("k = table['k']\nprint('k is', k)", "app:look"),
        code("print('next', k + 1)", "app:next"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    # look failed with KeyError before fill finished, and next was skipped; both ran again
    assert text_of(runs.nbp(runs.code_ids()[4])) == "next 1\n"
    assert runs.result.apps["look"].reruns == [{"app": "fill", "variable": "table", "reran": True}]


def test_chain_of_unpredicted_mutations_keeps_serial_order(both: Any) -> None:
    nb = notebook(
        code("box = {'n': 1}", "app:make"),
        code("def double(b):\n    b['n'] *= 2", "app:tools"),
        code(SLOW + "double(box)\nprint('first', box)", "app:first"),
        code("double(box)\nprint('second', box)", "app:second"),
        code("print('end', box)", "app:end"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[4])) == "end {'n': 4}\n"
    rewired = {(r["app"], r["from"]) for r in reruns(runs)}
    assert ("second", "first") in rewired and ("end", "second") in rewired


def test_cli_says_which_app_reruns_and_why(tmp_path: Path) -> None:
    nb = notebook(
        code("rows = [[1], [2]]", "app:make"),
        code(SLOW + "for r in rows:\n    r.append(0)", "app:mutate"),
        code("print(rows)", "app:read"),
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    done = nbpipe_cli("execute", "nb.ipynb", "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "app read re-runs: app mutate changed rows, which nbpipe did not predict" in done.stderr
    merged = nbformat.read(tmp_path / "nb.merged.ipynb", as_version=4)
    assert merged.metadata["nbpipe"]["apps"]["read"]["reruns"] == [
        {"app": "mutate", "variable": "rows", "reran": True}]
    assert text_of(merged.cells[2]) == "[[1, 0], [2, 0]]\n"


def test_map_app_reading_a_changed_value_runs_again(tmp_path: Path) -> None:
    import nbpipe

    nb = notebook(
        code("data = [1, 2]\nitems = [0, 1]", "app:make"),
        code(SLOW + "extend = data.extend\nextend([3])", "app:change"),
        code("print(i, data)\nn = len(data)", "app:each", "map:i=items"),
        code("print(n)", "app:after"),
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    result = nbpipe.execute(tmp_path / "nb.ipynb", workers=2)
    assert result.ok, {a: r.to_dict() for a, r in result.apps.items()}
    assert "0 [1, 2, 3]" in text_of(result.notebook.cells[2]) and "1 [1, 2, 3]" in text_of(result.notebook.cells[2])
    assert text_of(result.notebook.cells[3]) == "[3, 3]\n"
    assert result.apps["each"].reruns == [{"app": "change", "variable": "data", "reran": True}]


# --------------------------------------------------------------------- failing loudly


def _error(runs: Any, app: str) -> str:
    error = runs.apps[app].error
    assert error and error["ename"] == "MutationError", runs.apps[app].to_dict()
    return str(error["evalue"])


def test_reader_upstream_of_the_changing_app_fails_loudly(tmp_path: Path) -> None:
    nb = notebook(
        code("df = {'a': [1, 2]}", "app:load"),
        code("col = df['a']\ncol.append(3)\nprint('clean', df)", "app:clean", "after:report"),
        code("print('report', df)", "app:report"),
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    done = nbpipe_cli("execute", "nb.ipynb", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    message = ("app 'clean' changed 'df' (received from app 'load') through a call nbpipe cannot see, "
               "and app 'report', which reads it further down the notebook, runs before app 'clean'")
    assert message in done.stderr
    merged = nbformat.read(tmp_path / "nb.merged.ipynb", as_version=4)
    apps = merged.metadata["nbpipe"]["apps"]
    assert apps["clean"]["status"] == "failed" and apps["clean"]["error"]["ename"] == "MutationError"
    assert "`df = df`" in apps["clean"]["error"]["evalue"]  # the fix
    assert merged.metadata["nbpipe"]["reruns"] == []


def test_map_items_changing_a_shared_input_fail_loudly(tmp_path: Path) -> None:
    import nbpipe

    nb = notebook(
        code("data = [[1], [2]]\nitems = [0, 1]", "app:make"),
        code("for row in data:\n    row.append(i)\nprint(data)", "app:fill", "map:i=items"),
        code("print(data)", "app:show"),
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    result = nbpipe.execute(tmp_path / "nb.ipynb", workers=2)
    assert not result.ok
    assert "app 'fill' changed 'data' (received from app 'make')" in _error(result, "fill")
    assert "map: app" in _error(result, "fill")


def test_reader_between_the_changing_apps_cells_fails(tmp_path: Path) -> None:
    import nbpipe

    nb = notebook(
        code("acc = [0]", "app:make"),
        code("grow = acc.extend", "app:grow"),
        code("print('peek', acc)", "app:peek"),
        code("grow([1])", "app:grow"),
    )
    nbformat.write(nb, tmp_path / "nb.ipynb")
    result = nbpipe.execute(tmp_path / "nb.ipynb", workers=2)
    assert "app 'peek' reads it between the cells of app 'grow'" in _error(result, "grow")
    assert result.apps["peek"].status.value in ("completed", "skipped")


# --------------------------------------------------------------------- no false alarm


READ_ONLY_SETUP = ("import io\nimport numpy as np\nimport pandas as pd\nimport matplotlib\n"
                   "matplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
                   "def png(figure):\n    buf = io.BytesIO()\n    figure.savefig(buf, format='png')\n"
                   "    return buf.tell() > 1000\n"
                   "def summary(frame):\n    return frame.describe().loc['mean'].round(3).to_dict()\n")


def _read_only_notebook() -> Any:
    return notebook(
        code(READ_ONLY_SETUP, "setup"),
        code("a = np.arange(12.0).reshape(3, 4)\ndf = pd.DataFrame({'x': [1, 2, 3], 'y': [4.0, 5, 6]})\n"
             "df['z'] = df['x'] * 2\nd = {'k': [1, 2], 'j': {'n': 1}}\n"
             "fig, ax = plt.subplots()\nax.plot([1, 2, 3])", "app:make"),
        code("print(np.sum(a), a[::2, 1:].mean(), summary(df), sorted(d), len(d['k']))\n"
             "print(png(fig), len(fig.axes))", "app:look"),
        code("print(df[df['x'] > 1].shape, float(np.max(a)), d.get('j'), png(fig))", "app:again"),
    )


def test_apps_that_only_read_cause_no_rerun(both: Any, matplotlib_ready: None) -> None:
    runs = both(_read_only_notebook())
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert reruns(runs) == []
    assert all(r.attempts == 1 for r in runs.result.apps.values())
    assert "True" in text_of(runs.nbp(runs.code_ids()[2]))


def test_read_only_apps_are_checked() -> None:
    """The no-rerun result above means something: those names are digested."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nb.ipynb"
        nbformat.write(_read_only_notebook(), path)
        flow = Dataflow(load_pipeline(path))
    assert {"a", "df", "d", "fig"} <= set(flow.watch("look"))
    assert flow.watch("make", split=True) == []


# --------------------------------------------------------------------- re-wiring (no run)


def _flow(tmp_path: Path, *cells: Any) -> Dataflow:
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook(*cells), path)
    return Dataflow(load_pipeline(path))


def test_readers_below_the_change_are_rewired_from_any_source(tmp_path: Path) -> None:
    from nbpipe.mutations import Rewire

    flow = _flow(
        tmp_path,
        code("limit = 3", "parameters"),
        code("cfg = {}\ndef fill(d):\n    d['k'] = limit", "setup"),
        code("print(cfg, limit)", "app:early"),
        code("fill(cfg)\nbump = [limit].append", "app:change"),
        code("print(cfg['k'])", "app:late"),
        code("def show():\n    print(cfg)", "app:tools"),
        code("show()", "app:call"),
    )
    assert "cfg" in flow.watch("change") and "limit" in flow.watch("early")
    assert "cfg" in flow.watch("call")  # read by the function it calls
    rewires = flow.resolve("change", ["cfg"])
    assert {Rewire("late", "change", "cfg"), Rewire("call", "change", "cfg")} <= set(rewires)
    assert "early" not in {r.reader for r in rewires}
    assert flow.sources("late") == {"cfg": "change"} and flow.graph.has_edge("change", "late")
    assert flow.source("early", "cfg") is None  # above the change: unchanged
    assert not flow.pipeline.graph.has_edge("change", "late")  # the pipeline's graph stays as analysed


def test_a_refused_rewiring_changes_nothing(tmp_path: Path) -> None:
    from nbpipe.errors import MutationError

    flow = _flow(
        tmp_path,
        code("limit = 3", "parameters"),
        code("seen = [limit]", "app:make"),
        code("add = seen.append\nadd(limit)", "app:change", "after:late"),
        code("print(seen)", "app:late"),
        code("print(seen)", "app:last"),
    )
    with pytest.raises(MutationError) as info:
        flow.resolve("change", ["seen"])
    assert (info.value.app, info.value.variable, info.value.readers) == ("change", "seen", ["late"])
    assert info.value.source == "app 'make'"
    assert flow.sources("last") == {} and not flow.graph.has_edge("change", "last")


# --------------------------------------------------------------------- digests


def test_digest_sees_changes_and_ignores_reads(matplotlib_ready: None) -> None:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    fig, ax = plt.subplots()
    ax.plot([1, 2])
    ns: dict[str, Any] = {"a": np.zeros((200, 300)), "df": pd.DataFrame({"x": [1, 2]}), "fig": fig,
                          "it": iter([1, 2, 3]), "f": len, "s": {"b", "a"}, "gen": (i for i in "ab")}
    before = digests(ns, list(ns) + ["missing"])
    assert before["f"] is None and before["gen"] is None and "missing" not in before
    fig.savefig(io.BytesIO(), format="png")
    ns["df"].describe()
    assert {"a", "b"} <= ns["s"] and ns["a"][::2].sum() == 0
    assert changed(ns, before) == []
    ns["a"][199, 299] = 1.0  # the last element of an out-of-band buffer
    next(ns["it"])
    ns["df"].iloc[0, 0] = 5
    assert changed(ns, before) == ["a", "df", "it"]
    plt.close(fig)


def test_digest_of_a_view_and_of_user_classes() -> None:
    import numpy as np

    class Box:
        def __init__(self) -> None:
            self.items: list[int] = []

    base = np.arange(10)
    box = Box()
    ns = {"view": base[::3], "box": box, "nested": {"box": box, "fn": lambda: 1}}
    before = digests(ns, list(ns))
    assert all(v is not None for v in before.values())
    base[3] = 99
    box.items.append(1)
    assert changed(ns, before) == ["view", "box", "nested"]
    assert digest(np.arange(3)) == digest(np.arange(3))


def test_digest_of_a_shipped_array_reads_it_only_once_written(tmp_path: Path) -> None:
    import numpy as np

    from nbpipe import runtime

    path = tmp_path / "big.pkl"
    runtime._ship(np.arange(1_000_000, dtype=np.float64), path, "big", "make", ["use"])
    ns = {"big": runtime._load(path), "small": np.arange(10)}
    before = digests(ns, ["big", "small"])
    assert before["big"] is not None and before["big"] == digest(ns["big"])
    assert _unwritten_mapping(memoryview(ns["big"]).cast("B")) is not None  # not read to digest it
    assert float(ns["big"].sum()) == 499999500000.0 and changed(ns, before) == []
    ns["big"][-1] = 0.0  # a copy-on-write page of the mapping: the digest now reads it
    assert _unwritten_mapping(memoryview(ns["big"]).cast("B")) is None
    assert changed(ns, before) == ["big"]
    assert runtime._load(path)[-1] == 999999.0  # the file is untouched


def test_a_value_that_becomes_unpicklable_has_changed() -> None:
    import threading

    ns = {"x": [1, {"a": 1}]}
    before = digests(ns, ["x"])
    ns["x"].append(threading.Lock())
    assert changed(ns, before) == ["x"]
