"""Names that share objects in the producer share them in every consumer.

An app ships all its names in one pickle, so ``fig`` and ``ax``, an array and
its view, or two names of one list arrive as one object graph; an app that
changes one of them changes the others, and the apps reading those further
down read them from it (the mutation check re-wires them), as in serial
execution. Every test compares with papermill running the notebook top to bottom.
"""

from __future__ import annotations

from typing import Any

from nbbuild import text_of

from conftest import Runs, assert_same_outputs, assert_well_formed, code, notebook

#: the changing app waits, so the readers of the old value have run first
SLOW = "import time\ntime.sleep(1.5)\n"


def reruns(runs: Runs) -> list[tuple[str, str, str]]:
    return sorted((r["app"], r["read"], r["from"]) for r in runs.merged.metadata["nbpipe"]["reruns"])


def test_write_through_a_view_changes_its_base(both: Any) -> None:
    nb = notebook(
        code("import numpy as np", "setup"),
        code("x2 = np.arange(12).reshape(3, 4)\nx2_sub = x2[:2, :2]", "app:make"),
        code(SLOW + "x2_sub[0, 0] = 99\nprint(x2_sub)", "app:write"),
        code("print(x2)", "app:show"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[3])).startswith("[[99  1  2  3]")
    assert reruns(runs) == [("show", "x2", "write")]


def test_figure_drawn_on_through_its_axes_in_another_app(both: Any, matplotlib_ready: None) -> None:
    nb = notebook(
        code("%matplotlib inline\nimport matplotlib.pyplot as plt", "setup"),
        code("fig, ax = plt.subplots()\nax.plot([0, 1], [0, 1])\nplt.close(fig)", "app:figure"),
        code(SLOW + "ax.plot([0, 1], [1, 0], 'k--')\nprint(len(ax.lines))", "app:draw"),
        code("print(len(fig.axes[0].lines))\nfig", "app:show"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)  # the PNG bytes too
    assert text_of(runs.nbp(runs.code_ids()[3])).startswith("2\n")


def test_two_names_of_one_list(both: Any) -> None:
    nb = notebook(
        code("a = b = []", "app:make"),
        code(SLOW + "a.append(1)", "app:append"),
        code("print(b, a is b)", "app:show"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[2])) == "[1] True\n"
    assert reruns(runs) == [("show", "b", "append")]


def test_names_from_one_producer_stay_one_object(both: Any) -> None:
    nb = notebook(
        code("rows = [[1], [2]]\nfirst = rows[0]", "app:make"),
        code("first.append(0)\nprint(rows, first is rows[0])", "app:use"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[1])) == "[[1, 0], [2]] True\n"


def test_cached_notebook_function_ships(both: Any) -> None:
    nb = notebook(
        code("import functools", "setup"),
        code("@functools.lru_cache(maxsize=None)\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
             "@functools.cache\ndef square(x):\n    return x * x", "app:define"),
        code("print(fib(30), square(4), fib.__name__, fib.__wrapped__(10))", "app:use"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[2])) == "832040 16 fib 55\n"


def test_names_read_from_two_producers_stay_one_object(both: Any) -> None:
    nb = notebook(
        code("a = [1]", "app:make"),
        code("b = [a, a]\nprint(len(b))", "app:wrap"),
        code("b[0].append(2)\nprint(a, b[1], b[0] is a)", "app:use"),
    )
    runs = both(nb)
    assert_same_outputs(runs)
    assert text_of(runs.nbp(runs.code_ids()[2])) == "[1, 2] [1, 2] True\n"
