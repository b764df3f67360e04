"""Interpreter state carried between apps (nbpipe/state.py), as serial execution carries it.

Settings an earlier app changes (matplotlib style, extensions, print options,
warning filters, environment, paths) reach later apps through the replayed
prelude; the global random generators travel as shipped values, so a seeded
notebook draws papermill's numbers. Every run is compared with papermill,
cell for cell, image bytes included, on every engine.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbbuild import code as cell
from nbbuild import notebook as plain_notebook

from conftest import assert_same_outputs, assert_well_formed, code, notebook, run_both
import nbpipe
from nbpipe import cli
from nbpipe.cache import Keys
from nbpipe.compile import compile_pipeline
from nbpipe.graph import build_pipeline
from nbpipe.names import analyse_cell
from nbpipe.parse import parse_notebook
from nbpipe.state import (NUMPY_RANDOM_STATE, RANDOM_STATE, generator_names, prelude_for, replay,
                          warnings_for)


def stdout(runs: Any, index: int) -> str:
    return "".join(o.get("text", "") for o in runs.merged.cells[index].outputs if o.output_type == "stream")


def pipeline_of(*cells: Any) -> Any:
    return build_pipeline(parse_notebook(plain_notebook(*cells), None))


# --------------------------------------------------------------------- settings


def test_matplotlib_style_reaches_later_apps_with_papermills_png_bytes(both: Any, matplotlib_ready: None) -> None:
    nb = notebook(
        code("import matplotlib as mpl\nimport matplotlib.pyplot as plt", "setup"),
        code("plt.style.use('ggplot')\nmpl.rcParams['lines.linewidth'] = 5\n"
             "plt.rcParams.update({'axes.titlesize': 20})\n"
             "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}", "app:style"),
        code("fig, ax = plt.subplots(figsize=(2, 1.5))\nax.plot([1, 3, 2])\nax.set_title('one')\nplt.show()",
             "app:first"),
        code("fig, ax = plt.subplots(figsize=(2, 1.5))\nax.bar([1, 2], [2, 1])\nplt.show()", "app:second"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)  # PNG bytes: ggplot's grey panel, the thick line
    for index in (2, 3):
        assert [o for o in runs.merged.cells[index].outputs if "image/png" in o.get("data", {})]


def test_matplotlib_magic_reaches_later_apps_on_the_kernel_engine(tmp_path: Path,
                                                                  matplotlib_ready: None) -> None:
    nb = notebook(
        code("import matplotlib.pyplot as plt", "setup"),
        code("%matplotlib inline\n%config InlineBackend.figure_formats = ['jpeg']", "app:backend"),
        code("plt.plot([1, 3, 2])\nplt.show()", "app:plot"),
    )
    runs = run_both(tmp_path, nb, "kernel")
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert "image/jpeg" in runs.merged.cells[2].outputs[0]["data"]


def test_load_ext_then_its_magic_in_a_later_app(both: Any) -> None:
    nb = notebook(
        code("%load_ext autoreload", "app:extension"),
        code("%autoreload 2\nprint('autoreload on')", "app:later"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stdout(runs, 1) == "autoreload on\n"


def test_print_options_reach_later_apps(both: Any) -> None:
    nb = notebook(
        code("import numpy as np\nimport pandas as pd", "setup"),
        code("pd.set_option('display.max_rows', 5)\nnp.set_printoptions(precision=2)", "app:options"),
        code("pd.DataFrame({'x': range(20)})", "app:frame"),
        code("print(np.array([1 / 3, 2 / 3]))", "app:array"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert "[20 rows x 1 columns]" in runs.merged.cells[2].outputs[0]["data"]["text/plain"]
    assert stdout(runs, 3) == "[0.33 0.67]\n"


def test_warning_filters_environment_and_paths_reach_later_apps(both: Any) -> None:
    nb = notebook(
        code("import os\nimport sys\nimport warnings\nos.makedirs('sub', exist_ok=True)", "setup"),
        code("warnings.filterwarnings('ignore')\nos.environ['NBPIPE_X'] = '1'\n%env NBPIPE_Y=2\n"
             "sys.path.append('extra-dir')\nos.chdir('sub')", "app:configure"),
        code("warnings.warn('hidden by the filter')\n"
             "print(os.environ.get('NBPIPE_X'), os.environ.get('NBPIPE_Y'))\n"
             "print('extra-dir' in sys.path, os.path.basename(os.getcwd()))", "app:use"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stdout(runs, 2) == "1 2\nTrue sub\n"


def test_state_set_after_an_app_does_not_reach_it(both: Any) -> None:
    nb = notebook(
        code("import numpy as np", "setup"),
        code("print(np.array([1 / 3]))", "app:before"),
        code("np.set_printoptions(precision=1)", "app:options"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    assert stdout(runs, 1) == "[0.33333333]\n"


def test_a_failing_replay_fails_the_later_app_loudly(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(plain_notebook(
        cell("import warnings", "setup"),
        cell("warnings.filterwarnings('no-such-action')", "app:bad"),
        cell("print('never')", "app:later"),
    ), path)
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", engine=engine)
    later = run.apps["later"]
    assert later.status is nbpipe.api.AppStatus.FAILED
    assert later.error["ename"] == "StateError"
    assert "warnings.filterwarnings('no-such-action')" in later.error["evalue"]
    assert "cell 1 (app 'bad')" in later.error["evalue"] and "setup" in later.error["evalue"]
    shown = [c for c in run.notebook.cells if c.metadata.get("nbpipe", {}).get("app") == "later"]
    assert [o.get("ename") for o in shown[0].outputs] == ["StateError"], "shown on the app's cell"


def test_the_replay_binds_nothing_in_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NBPIPE_STATE_TEST", raising=False)
    namespace: dict[str, Any] = {"kept": 1}
    replay(namespace, [(3, "a", ("import os",), "os.environ['NBPIPE_STATE_TEST'] = str(kept)")])
    assert namespace == {"kept": 1}
    assert os.environ["NBPIPE_STATE_TEST"] == "1"


def test_prelude_lists_earlier_statements_in_order_with_their_imports() -> None:
    pipeline = pipeline_of(
        cell("import numpy\nsize = (3, 2)", "setup"),
        cell("import matplotlib.pyplot as plt\nfrom matplotlib import rcParams\nplt.style.use('ggplot')\n"
             "rcParams['figure.figsize'] = size\nx = 1", "app:a"),
        cell("import pandas as pd\npd.options.display.max_rows = 5\nplt.plot([x])", "app:b"),
        cell("print(1)", "app:c"),
    )
    assert prelude_for(pipeline, "a") is None
    b = prelude_for(pipeline, "b")
    assert b is not None and "pandas" not in b
    c = prelude_for(pipeline, "c")
    assert c is not None
    rows = ast.literal_eval(c.split("(globals(), ", 1)[1].rstrip(")"))
    assert rows == [
        (1, "a", ("import matplotlib.pyplot as plt",), "plt.style.use('ggplot')"),
        (1, "a", ("from matplotlib import rcParams",), "rcParams['figure.figsize'] = size"),
        (2, "b", ("import pandas as pd",), "pd.options.display.max_rows = 5"),
    ]


def test_check_warns_about_a_statement_reading_an_app_variable(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(plain_notebook(
        cell("import matplotlib.pyplot as plt", "setup"),
        cell("width = 7\nplt.rcParams['lines.linewidth'] = width\nplt.style.use('ggplot')", "app:a"),
        cell("plt.plot([1])", "app:b"),
    ), path)
    assert cli.main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "cell 1 (app 'a')" in warnings[0] and "reads width" in warnings[0] and "setup" in warnings[0]
    prelude = prelude_for(nbpipe.load_pipeline(path), "b")
    assert prelude is not None and "ggplot" in prelude and "width" not in prelude


# --------------------------------------------------------------------- random generators


@pytest.mark.parametrize(("source", "expected"), [
    ("np.random.seed(0)", {NUMPY_RANDOM_STATE}),
    ("x = numpy.random.normal(size=3)", {NUMPY_RANDOM_STATE}),
    ("import numpy.random as npr\nnpr.shuffle(x)", {NUMPY_RANDOM_STATE}),
    ("from numpy import random\nrandom.randn(2)", {NUMPY_RANDOM_STATE}),
    ("from numpy.random import rand\ny = [rand() for _ in range(3)]", {NUMPY_RANDOM_STATE}),
    ("random.shuffle(deck)", {RANDOM_STATE}),
    ("import random as r\nr.seed(1)\nf = lambda: np.random.rand()", {RANDOM_STATE, NUMPY_RANDOM_STATE}),
    ("rng = np.random.default_rng(0)\nrng.normal()", set()),
    ("rs = np.random.RandomState(0)\nrs.rand()\nr = random.Random(2)", set()),
    ("import numpy as np\nx = np.arange(3)", set()),
])
def test_generator_names(source: str, expected: set[str]) -> None:
    assert generator_names(ast.parse(source)) == expected


def test_a_seeded_notebook_draws_papermills_numbers(both: Any) -> None:
    nb = notebook(
        code("import random\nimport numpy as np\nimport pandas as pd\n\n"
             "def noisy(n):\n    return np.random.normal(size=n)", "setup"),
        code("np.random.seed(0)\nrandom.seed(1)", "app:seed"),
        code("a = np.random.rand(3)\nprint(a, random.random())", "app:first"),
        code("print('no draws here')", "app:quiet"),
        code("print(np.random.randn(2), random.randint(0, 10**6))\n"
             "print(pd.DataFrame(np.random.randint(0, 100, (2, 2))))", "app:second"),
        code("print(noisy(2))", "app:third"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stdout(runs, 2).startswith("[0.5488135  0.71518937 0.60276338] 0.134364244112")
    generators = {NUMPY_RANDOM_STATE, RANDOM_STATE}
    edges = {(e["from"], e["to"]): [n for n in e["names"] if n in generators]
             for e in runs.merged.metadata["nbpipe"]["graph"]["edges"] if set(e["names"]) & generators}
    assert edges == {
        ("seed", "first"): [NUMPY_RANDOM_STATE, RANDOM_STATE],
        ("first", "second"): [NUMPY_RANDOM_STATE, RANDOM_STATE],
        ("second", "third"): [NUMPY_RANDOM_STATE],
    }
    assert not [e for e in runs.merged.metadata["nbpipe"]["graph"]["edges"] if "quiet" in (e["from"], e["to"])]


def test_map_items_draw_distinct_reproducible_numbers(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(plain_notebook(
        cell("import numpy as np", "setup"),
        cell("np.random.seed(0)\nitems = [1, 2, 3]", "app:seed"),
        cell("draw = float(np.random.rand())", "app:each", "map:i=items"),
        cell("print(len(set(draw)) == 3, draw)", "app:gather"),
    ), path)
    texts = []
    for attempt in range(2):
        run = nbpipe.execute(path, output=tmp_path / f"out{attempt}.ipynb")
        assert run.ok, {n: a.error for n, a in run.apps.items()}
        gather = [c for c in run.notebook.cells if c.metadata.get("nbpipe", {}).get("app") == "gather"]
        texts.append("".join(o.get("text", "") for o in gather[0].outputs))
    assert texts[0].startswith("True [") and texts[0] == texts[1]


@pytest.mark.parametrize(("source", "reads"), [
    ("np.random.seed(0)\nx = np.random.rand()", set()),
    ("random.seed()\nnp.random.set_state(saved)", set()),
    ("x = np.random.rand()\nnp.random.seed(0)", {NUMPY_RANDOM_STATE}),
    ("np.random.seed(np.random.randint(10))", {NUMPY_RANDOM_STATE}),
    ("random.shuffle(deck)\nrandom.seed(3)", {RANDOM_STATE}),
])
def test_seeding_defines_the_state_without_reading_it(source: str, reads: set[str]) -> None:
    names = analyse_cell(source)
    assert {n for n in names.reads if n in (RANDOM_STATE, NUMPY_RANDOM_STATE)} == reads
    assert names.defines >= generator_names(ast.parse(source))


def test_changed_carried_state_changes_the_cache_key_of_later_apps_only() -> None:
    def keys(value: int) -> dict[str, str]:
        pipeline = pipeline_of(
            cell("import os", "setup"),
            cell("print(os.environ.get('NBPIPE_X'))", "app:before"),
            cell(f"%env NBPIPE_X={value}", "app:setting"),
            cell("print(os.environ.get('NBPIPE_X'))", "app:after"),
        )
        assert not pipeline.edges(), "only the carried state links the apps"
        keys = Keys(pipeline, compile_pipeline(pipeline), {}, Path.cwd())
        return {app: keys.app(app, []) for app in pipeline.order}

    one, two = keys(1), keys(2)
    assert one["before"] == two["before"]
    assert one["after"] != two["after"]


def test_calling_a_drawing_function_continues_the_generator(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(plain_notebook(
        cell("import numpy as np", "setup"),
        cell("def draw():\n    return np.random.rand()", "app:define"),
        cell("np.random.seed(0)", "app:seed"),
        cell("a = draw()", "app:call"),
        cell("b = np.random.rand()", "app:after"),
    ), path)
    apps = nbpipe.load_pipeline(path).apps
    assert apps["call"].reads[NUMPY_RANDOM_STATE] == "seed"
    assert apps["after"].reads[NUMPY_RANDOM_STATE] == "call"
    assert NUMPY_RANDOM_STATE not in apps["seed"].reads, "seeding waits for no earlier draw"
    assert cli.main(["check", str(path)]) == 0
    assert "seed -> call (<numpy.random state>" in capsys.readouterr().out


def test_a_magic_expanding_an_app_variable_is_left_out_with_a_warning() -> None:
    pipeline = pipeline_of(
        cell("base = 'data'", "setup"),
        cell("folder = 'sub'\n%cd $folder\n%env ROOT={base}", "app:a"),
        cell("print(1)", "app:b"),
    )
    prelude = prelude_for(pipeline, "b")
    assert prelude is not None and "ROOT={base}" in prelude and "$folder" not in prelude
    assert ["reads folder" in w for w in warnings_for(pipeline)] == [True]
