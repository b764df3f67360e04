"""The engines do what ipykernel does, cell for cell, compared with papermill.

Each notebook runs with papermill top to bottom and with nbpipe (the ``both``
fixture, on every engine); every cell's normalised outputs and its
execution count must be equal. Then the specific values the notebook is
about are asserted, so that two runs that both showed nothing cannot pass.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import assert_same_outputs, assert_well_formed, code, normalise_outputs, notebook


def text(cell: Any) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                   for o in normalise_outputs(cell.outputs))


def images(cell: Any) -> list[str]:
    return [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]


def test_matplotlib_inline_in_setup_and_a_figure_shown_by_a_later_app(both: Any, matplotlib_ready: None) -> None:
    nb = notebook(
        code("%matplotlib inline\nimport matplotlib.pyplot as plt", "setup"),
        code("fig, ax = plt.subplots()\nax.plot([1, 3, 2])", "app:draw"),
        code("fig", "app:show"),
        code("plt.plot([2, 1]);", "app:again"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    ids = runs.code_ids()
    assert images(runs.nbp(ids[1])) and images(runs.nbp(ids[2])) == images(runs.nbp(ids[1]))
    assert images(runs.nbp(ids[3]))


def test_figure_shipped_to_an_app_that_never_imports_pyplot(both: Any, matplotlib_ready: None) -> None:
    nb = notebook(
        code("import matplotlib.pyplot as plt\nfig = plt.figure()\nplt.plot([1, 2]);", "app:draw"),
        code("fig", "app:show"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    assert images(runs.nbp(runs.code_ids()[1]))


def test_matplotlib_variants_untagged(both: Any, matplotlib_ready: None) -> None:
    nb = notebook(
        code("%matplotlib"),
        code("%pylab inline"),
        code("plot([1, 2, 3])"),
        code("%config InlineBackend.figure_format = 'retina'\nfig = figure()\nplot([3, 1]);"),
        code("fig"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    cells = [runs.nbp(i) for i in runs.code_ids()]
    assert images(cells[2]) and images(cells[3]) and images(cells[4])
    assert "Populating the interactive namespace" in text(cells[1])


MAGICS = [
    "%time x = sum(range(10))",
    "%timeit -n1 -r1 sum(range(10))",
    "%%capture captured\nprint('hidden')",
    "print(captured.stdout.strip())",
    "%%writefile helper_mod.py\nVALUE = 42",
    "%run helper_mod.py\nVALUE",
    "%%bash\necho from bash",
    "%%html\n<b>bold</b>",
    "%%latex\n$x^2$",
    "%env NBPIPE_MAGIC=set\nimport os\nos.environ['NBPIPE_MAGIC']",
    "%load_ext autoreload\n%autoreload 2",
    "%pip --version",
    "!echo shell says hi",
    "lines = !echo captured line\nlines",
    "%prun sum(range(100))",
    "len?",
    "%pinfo len",
    "%psource normalise",
    "%cd /",
]


def test_common_magics_equal_papermill(both: Any) -> None:
    nb = notebook(code("def normalise(x):\n    return x"), *(code(source) for source in MAGICS))
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    shown = {source: text(runs.nbp(cell_id)) for source, cell_id in zip(MAGICS, runs.code_ids()[1:])}
    assert "CPU times" in shown[MAGICS[0]] and "<timeit>" in shown[MAGICS[1]]
    assert shown[MAGICS[3]] == "hidden\n" and shown[MAGICS[2]] == ""
    assert "Writing helper_mod.py" in shown[MAGICS[4]] and shown[MAGICS[5]] == "42"
    assert shown[MAGICS[6]] == "from bash\n" and "'set'" in shown[MAGICS[9]]
    assert shown["%pip --version"].startswith("pip ")
    assert "shell says hi" in shown["!echo shell says hi"] and "captured line" in shown[MAGICS[13]]
    for pager in ("%prun sum(range(100))", "len?", "%pinfo len", "%psource normalise"):
        shown_text = shown[pager]  # the pager's text goes to a payload no notebook shows
        assert "function calls" not in shown_text and "Signature" not in shown_text
        assert "return x" not in shown_text


def test_magics_in_separate_apps(both: Any) -> None:
    nb = notebook(
        code("%%writefile helper_mod.py\nVALUE = 42", "app:write"),
        code("%run helper_mod.py\nVALUE", "app:run", "after:write"),
        code("%time y = 3", "app:timed"),
        code("len?", "app:pager"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text(runs.nbp(runs.code_ids()[1])) == "42"


KERNEL_LIKE = [
    "import warnings\nwarnings.warn('careful')",
    "import numpy as np\nnp.arange(3) / 0",
    "import logging\nlogging.warning('logged %d', 1)\nlogging.getLogger('app').error('app error')",
    "sorted(k for k in globals() if k.startswith('__'))",
    "__doc__, __name__, __spec__, __loader__, __package__",
    "input('name? ')",
    "import getpass\ngetpass.getpass()",
    "import sys\nsys.exit(3)",
    "raise SystemExit('bye')",
    "def f():\n    return 1 / 0\nf()",
    "print('still running')",
]


def test_warnings_logging_input_exit_tracebacks_and_dunders(both: Any) -> None:
    nb = notebook(*(code(source, "raises-exception") for source in KERNEL_LIKE))
    runs = both(nb)
    assert_same_outputs(runs)
    cells = dict(zip(KERNEL_LIKE, (runs.nbp(i) for i in runs.code_ids())))
    assert "<cell-file>:2: UserWarning: careful\n  warnings.warn('careful')" in text(cells[KERNEL_LIKE[0]])
    assert "WARNING:root:logged 1\nERROR:app:app error\n" == text(cells[KERNEL_LIKE[2]])
    assert "'__doc__'" in text(cells[KERNEL_LIKE[3]]) and "'__builtin__'" in text(cells[KERNEL_LIKE[3]])
    errors = {s: [o for o in c.outputs if o.output_type == "error"] for s, c in cells.items()}
    assert errors[KERNEL_LIKE[5]][0].ename == "StdinNotImplementedError"
    assert errors[KERNEL_LIKE[7]][0].ename == "SystemExit"
    # the traceback has ipykernel's form, with the cell's lines
    pm_tb = runs.pm(runs.code_ids()[9]).outputs[0].traceback
    assert errors[KERNEL_LIKE[9]][0].traceback == pm_tb
    assert text(cells["print('still running')"]) == "still running\n"


def test_namespace_dunders_in_every_app(both: Any) -> None:
    source = "sorted(k for k in globals() if k.startswith('__') and k != '__nbpipe__')"
    nb = notebook(code("x = 1", "app:a"), code(source, "app:b"), code("__doc__", "app:c"))
    runs = both(nb)
    assert_same_outputs(runs)
    assert "'__spec__'" in text(runs.nbp(runs.code_ids()[1]))


# --------------------------------------------------------------------- execution counts

COUNTED = [
    code("n = 2", "parameters"),
    code("import math", "setup"),
    code("a = n + 1\na", "app:a"),
    code(""),
    code("b = 10\nb", "app:b"),
    code("# skipped by nbpipe, counted by papermill", "skip"),
    code("print(len(In), _i, _ii)\nprint(In[-2:])", "app:c"),
    code("c = a + b\nc", "app:d"),
    code("print(_i3)\nprint(len(In))"),
]


@pytest.mark.parametrize("parameters", [None, {"n": 5}])
def test_execution_counts_are_papermills(both: Any, engine: str, parameters: Any) -> None:
    nb = notebook(*COUNTED)
    runs = both(nb, parameters=parameters)
    ran = [i for i in runs.code_ids() if "skip" not in runs.nbp(i).metadata.get("tags", [])]
    assert runs.result.ok
    for cell_id in ran:
        assert runs.nbp(cell_id).execution_count == runs.pm(cell_id).execution_count
    results = {o.execution_count for i in ran for o in runs.nbp(i).outputs if o.output_type == "execute_result"}
    assert results == {runs.pm(ran[i]).execution_count for i in (2, 4, 6)}
    assert_same_outputs(runs, ran)  # In, _i, _ii, _iN: those of the serial run
    shown = text(runs.nbp(ran[-1]))  # _i3: app a's cell, or setup's below injected parameters
    assert shown == ("import math\n10\n" if parameters else "a = n + 1\na\n9\n")
    injected = [c for c in runs.merged.cells if "injected-parameters" in c.metadata.get("tags", [])]
    if parameters:
        pm_injected = [c for c in runs.papermill.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected[0].execution_count == pm_injected[0].execution_count == 2
    else:
        assert injected == []


def test_a_cell_reads_out_of_an_earlier_app(both: Any) -> None:
    nb = notebook(
        code("40 + 2", "app:a"),
        code("7 * 6", "app:b"),
        code("print(Out[1] + _2, sorted(Out))", "app:c"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    assert text(runs.nbp(runs.code_ids()[2])) == "84 [1, 2]\n"
    assert runs.merged.metadata["nbpipe"]["graph"]["apps"][2]["reads"] == {"_1": "a", "_2": "b"}


def test_libraries_see_a_notebook_shell(both: Any) -> None:
    nb = notebook(code("get_ipython().__class__.__name__, 'IPKernelApp' in get_ipython().config"))
    runs = both(nb)
    assert_same_outputs(runs)
    assert text(runs.nbp(runs.code_ids()[0])) == "('ZMQInteractiveShell', True)"


def test_out_n_is_a_dependency_on_the_app_of_cell_n() -> None:
    from nbpipe.graph import build_pipeline, execution_counts
    from nbpipe.names import analyse_cell
    from nbpipe.parse import parse_notebook

    assert {"_3", "_2"} <= analyse_cell("Out[3] + _oh[2]").reads
    nb = notebook(
        code("p = 1", "parameters"),
        code("p + 1", "app:a"),       # count 2: shows a result, defines _2
        code(""),                     # blank: no count
        code("print(p)", "app:b"),    # count 3: print returns None, which Out never holds
        code("x = 5;", "app:c"),      # count 4: no result
        code("Out[2], _3", "app:d"),
    )
    parsed = parse_notebook(nb)
    assert execution_counts(parsed) == {0: 1, 1: 2, 3: 3, 4: 4, 5: 5}
    pipeline = build_pipeline(parsed)
    assert pipeline.apps["d"].reads == {"_2": "a"}
    assert "_3" not in pipeline.apps["b"].defines
    assert "_4" not in pipeline.apps["c"].defines and "_1" not in pipeline.parameter_names
