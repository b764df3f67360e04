"""What serial execution keeps between cells, kept between apps: the last
results ``_``/``__``/``___``, ``%pylab``'s names, display updates, logging
configuration, the order of stdout and stderr, and warnings raised in a
function shipped from another app. Every test compares with papermill, on
both engines."""

from __future__ import annotations

from typing import Any

from conftest import assert_same_outputs, code, normalise_outputs, notebook


def text(cell: Any) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                   for o in normalise_outputs(cell.outputs))


def streams(cell: Any) -> list[tuple[str, str]]:
    return [(o.name, o.text) for o in cell.outputs if o.output_type == "stream"]


def test_last_results_come_from_other_apps(both: Any) -> None:
    nb = notebook(
        code("40 + 2", "app:a"),
        code("print('no result')", "app:b"),
        code("6 * 9", "app:c"),
        code("answer = _\nprint(repr(_), repr(__), repr(___))", "app:d"),
        code("print(answer)", "app:e"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    ids = runs.code_ids()
    assert text(runs.nbp(ids[3])) == "54 42 ''\n"
    assert text(runs.nbp(ids[4])) == "54\n"
    reads = {a["name"]: a["reads"] for a in runs.merged.metadata["nbpipe"]["graph"]["apps"]}
    assert reads["d"] == {"_1": "a", "_3": "c"}


def test_pylab_names_reach_later_apps(both: Any, matplotlib_ready: None) -> None:
    from nbpipe.imports import notebook_context
    from nbpipe.names import analyse_cell

    def defines(source: str) -> frozenset[str]:
        return analyse_cell(source, notebook_context([analyse_cell(source)], None, {})).defines

    assert {"linspace", "sin", "plot", "np", "plt"} <= defines("%pylab inline")
    assert "np" in defines("%pylab --no-import-all") and "linspace" not in defines("%pylab --no-import-all")
    nb = notebook(
        code("%pylab inline", "app:a"),
        code("x = linspace(0, 2 * pi, 50)\nprint(round(sin(x).sum(), 6), np.pi == pi)", "app:b"),
        code("plot(x, cos(x))\ntitle('cosine');", "app:c"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    plotted = runs.nbp(runs.code_ids()[2]).outputs
    assert [o for o in plotted if "image/png" in o.get("data", {})]


def test_a_display_is_updated_from_a_later_app(both: Any) -> None:
    nb = notebook(
        code("from IPython.display import Markdown, display", "setup"),
        code("status = display(Markdown('step 1'), display_id='status')", "app:a"),
        code("print('between')", "app:b"),
        code("status.update(Markdown('step 2'))\nprint('done')", "app:c"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    ids = runs.code_ids()
    assert [o.data["text/markdown"] for o in runs.nbp(ids[1]).outputs] == ["step 2"]
    assert text(runs.nbp(ids[3])) == "done\n"
    marks = [o for c in runs.merged.cells for o in c.get("outputs", []) if "nbpipe" in o.get("metadata", {})]
    assert marks == []


def test_stdout_and_stderr_come_in_ipykernels_order(both: Any) -> None:
    nb = notebook(
        code("import logging, sys, warnings", "setup"),
        code("print('out')\nwarnings.warn('buffered, after stdout')", "app:a"),
        code("print('out')\nlogging.getLogger().warning('flushed at once')", "app:b"),
        code("print('out', flush=True)\nsys.stderr.write('err\\n')", "app:c"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    ids = runs.code_ids()
    assert [name for name, _ in streams(runs.nbp(ids[1]))] == ["stdout", "stderr"]
    assert [name for name, _ in streams(runs.nbp(ids[2]))] == ["stderr", "stdout"]
    assert [name for name, _ in streams(runs.nbp(ids[3]))] == ["stdout", "stderr"]


def test_logging_configuration_is_carried(both: Any) -> None:
    nb = notebook(
        code("import logging", "setup"),
        code("logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s', "
             "force=True)\nlog = logging.getLogger('calib')\nlog.setLevel(logging.ERROR)\n"
             "logging.getLogger('other').setLevel(logging.WARNING)", "app:a"),
        code("log.warning('hidden')\nlog.error('shown')\nlogging.getLogger('other').info('hidden')\n"
             "logging.getLogger('other').warning('other shown')\nlogging.getLogger('third').info('third shown')",
             "app:b"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    expected = "ERROR calib: shown\nWARNING other: other shown\nINFO third: third shown\n"
    assert text(runs.nbp(runs.code_ids()[2])) == expected


def test_a_shipped_function_warns_and_fails_as_in_its_cell(both: Any) -> None:
    nb = notebook(
        code("import warnings", "setup"),
        code("def check(gain):\n    if gain > 1:\n        warnings.warn(f'gain {gain}', UserWarning)\n"
             "    return gain\n\ndef fail():\n    raise ValueError('bad')", "app:a"),
        code("print(check(2))", "app:b"),
        code("fail()", "app:c", "raises-exception"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    ids = runs.code_ids()
    warned = "<cell-file>:3: UserWarning: gain 2\n  warnings.warn(f'gain {gain}', UserWarning)\n"
    assert warned in text(runs.nbp(ids[2]))
    assert runs.nbp(ids[3]).outputs[0].traceback == runs.pm(ids[3]).outputs[0].traceback


def test_display_updates_apply_in_notebook_order(both: Any) -> None:
    # app a updates its own display after app b did: the last update in notebook order wins
    nb = notebook(
        code("from IPython.display import Markdown, display", "setup"),
        code("status = display(Markdown('step 1'), display_id='status')", "app:a"),
        code("status.update(Markdown('step 2'))", "app:b"),
        code("display(Markdown('step 3'), display_id='status', update=True);", "app:a"),
        code("shown = display(Markdown('shown'), display_id='other')\nprint('end')", "app:c"),
        code("display(Markdown('shown again'), display_id='other');", "app:d"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    ids = runs.code_ids()
    assert [o.data["text/markdown"] for o in runs.nbp(ids[1]).outputs] == ["step 3"]
    assert runs.nbp(ids[2]).outputs == [] and runs.nbp(ids[3]).outputs == []
    # a new display with an id shown before updates the earlier output too, as nbclient does
    assert [o.get("data", {}).get("text/markdown") for o in runs.nbp(ids[4]).outputs] == ["shown again", None]
