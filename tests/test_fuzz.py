"""Property-based fuzzing of the static path: reading, parsing, analysing, graphing
and compiling a notebook (``nbpipe check``, ``graph`` and ``compile``).

Notebooks are random cells (odd unicode, deep expressions, magics, syntax errors),
tags (valid and mangled, per SPEC §2, with shell payloads) and metadata (wrong types
everywhere). The properties: every command returns 0 or 2, a 2 is one line
``nbpipe: error: ...``, nothing raises, no payload reaches a shell, and each
notebook takes a few seconds at most. The default suite runs a bounded number of
examples, reproducibly; ``-m slow`` runs many more, at random.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbpipe.cli import main

#: replaced by a path in a private directory: a file there means a payload ran
MARKER = "MARKER"
PAYLOADS = [f"$(touch {MARKER})", f";touch {MARKER}", f"`touch {MARKER}`", f"|touch {MARKER}",
            f"&& touch {MARKER}", f"\ntouch {MARKER}", f"'; touch {MARKER}; '", f"x\"; touch {MARKER}; \""]

#: key of a module written beside the notebook (taken out before the notebook is written)
BESIDE = "_mod.py"
PREFIXES = ["app", "step", "block", "after", "prev", "map", "executor", "container", "image", "cpus",
            "gpus", "memory", "walltime", "limit", "retries", "timeout", "inputs", "outputs", "cache"]
ROLES = ["parameters", "pipeline-parameters", "setup", "imports", "functions", "metrics",
         "pipeline-metrics", "skip", "injected-parameters", "nbpipe-error", "remove-input"]
NAMES = ["a", "b", "x", "xs", "main", "end", "my-app", "my_app", "setup", "_", "A1", "n", "x=xs", "y=x"]

odd_text = st.text(st.characters(blacklist_categories=()), max_size=12)  # surrogates included
values = st.one_of(
    st.sampled_from(NAMES), st.sampled_from(PAYLOADS), odd_text,
    st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True).map(repr),
    st.sampled_from(["", "0", "-1", "1e10", "1e400", "inf", "nan", "00:00:01", "99999999:00:00",
                     "4GB", "1e400GB", "99999999999TB", "nvidia.com/gpu:2", "x=xs", "=", "a=b=c",
                     "off", "on", "data.csv", "parts/*.csv", "[", "**/x", "\0", "\u00b2", "\u0661"]))
tags = st.one_of(
    st.builds(lambda p, v: f"{p}:{v}", st.sampled_from(["app", "after", "map", "inputs", "outputs"]),
              st.sampled_from(NAMES)),
    st.builds(lambda p, v: f"{p}:{v}", st.sampled_from(PREFIXES), values),
    st.sampled_from(ROLES), odd_text.filter(bool))

EXPRESSIONS = ["x", "a + b", "xs[0]", "f(x)", "lst.append(x)", "eval('x')", "globals()['y']",
               "Out[1]", "_", "np.random.rand()", "random.random()", "df.query('a > @x')"]
STATEMENTS = ["x = 1", "xs = [1, 2]", "import numpy as np", "import random", "from os import *",
              "from mod import *", "def f(): return x", "def g():\n    global x\n    x = 2",
              "class C: pass", "del x", "x += 1", "for _ in xs: pass", "y = lambda: x",
              "%time x = 1", "%%bash\necho hi", "!ls", "x = !ls", "%%writefile mod.py\nx = 1",
              "%matplotlib inline", "%load_ext autoreload", "%env A=1", "%cd /", "import os\nos.chdir('/')",
              f"import os; os.system('touch {MARKER}')", f"get_ipython().system('touch {MARKER}')",
              "if x:\n    y = 1", "try:\n    z = 1\nexcept E as e:\n    pass", "with open(p) as fh: pass",
              "def (:", "x = '", "\0", "x = '\ud800'", "print(acc)", "%%", "%notamagic", "%%capture c\nx=1",
              "async def h(): await x", "x: int = 1", "(a := 1)", "match x:\n    case 1: pass",
              "%%writefile mod.py\n__all__ = 5", "%%writefile mod.py\n__all__ = ['a', 1]",
              "%%writefile mod.py\nx = " + "+".join(["a"] * 1500), "%%writefile mod.py\n\0",
              "%%writefile pkg/__init__.py\ny = 1", "from pkg import *", "import mod", "from mod import x",
              "%%writefile -a mod.py\nz = 1", "%%writefile\nx", "%%writefile '\nx", "%%writefile ../../x.py\n",
              "%%writefile /dev/null\n", "%%writefile mod.py\n__all__ = " + "[" * 200 + "]" * 200,
              "xs = [1, 2]\nfor x in xs: lst.append(x)", "np.random.seed(0)", "plt.rcParams['a'] = x",
              "import matplotlib.pyplot as plt\nplt.style.use(x)", "exec(code)", "eval(f'{x}')",
              "sys.path.append(x)", "os.environ['A'] = x", "logging.basicConfig(level=x)",
              "warnings.filterwarnings('ignore')", "pd.set_option('a', x)", "from numpy.random import normal"]

MODULE_BODIES = ["x = 1", "__all__ = ['x']", "__all__ = 5", "__all__ = [1]", "__all__ = 'x'", "__all__ = f()",
                 "__all__ = ['x'] + y", "x = 1\0", "__all__ = " + "[" * 300 + "]" * 300, "def x(): pass",
                 "from mod import *", "import mod"]


def deep(depth: int, op: str) -> str:
    return "x = " + op.join(["a"] * depth)


sources = st.one_of(
    st.lists(st.one_of(st.sampled_from(STATEMENTS), st.sampled_from(EXPRESSIONS)), max_size=4)
    .map("\n".join),
    st.builds(deep, st.integers(1, 1500), st.sampled_from(["+", " and ", "**", "."])),
    st.builds(lambda n: "x = " + "(" * n + "1" + ")" * n, st.integers(1, 300)),
    odd_text.map(lambda t: f"x = {t!r}\n{t}"))
json_values: Any = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
              odd_text, st.sampled_from(PAYLOADS)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
    max_leaves=6)


@st.composite
def cells(draw: Any, mangled: bool) -> dict[str, Any]:
    kinds = ["code"] * 6 + ["markdown", "raw"] + (["weird"] if mangled else [])
    cell: dict[str, Any] = {"cell_type": draw(st.sampled_from(kinds)), "metadata": {},
                            "source": draw(sources)}
    if cell["cell_type"] == "code":
        cell["outputs"], cell["execution_count"] = [], None
    if draw(st.booleans()):
        cell["metadata"]["tags"] = draw(st.one_of(st.lists(tags, max_size=4), json_values) if mangled
                                        else st.lists(tags, max_size=4))
    if mangled and draw(st.integers(0, 5)) == 0:  # something missing or of the wrong type
        key = draw(st.sampled_from(["source", "metadata", "cell_type", "outputs", "id"]))
        if draw(st.booleans()):
            cell.pop(key, None)
        else:
            cell[key] = draw(json_values)
    return cell


@st.composite
def notebooks(draw: Any, mangled: bool = False) -> dict[str, Any]:
    """A notebook of random cells and tags; ``mangled``: with metadata of wrong types too."""
    nb: dict[str, Any] = {"nbformat": 4, "nbformat_minor": draw(st.sampled_from([4, 5])),
                          "metadata": {}, "cells": draw(st.lists(cells(mangled), max_size=8))}
    kernel = draw(st.sampled_from(["python3", "absent"] + (["mangled"] if mangled else [])))
    if kernel == "python3":
        nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    elif kernel == "mangled":
        nb["metadata"]["kernelspec"] = draw(json_values)
    if draw(st.integers(0, 3)) == 0:  # a module a cell writes, or one beside the notebook, star-imported
        body = draw(st.one_of(st.sampled_from(MODULE_BODIES), sources))
        where = draw(st.integers(0, len(nb["cells"])))
        if draw(st.booleans()):
            nb["cells"].insert(where, {"cell_type": "code", "metadata": {}, "outputs": [],
                                       "execution_count": None, "source": f"%%writefile mod.py\n{body}"})
        else:
            nb[BESIDE] = body
        nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                            "source": "from mod import *\nprint(x)"})
    keys = st.lists(st.sampled_from(["retries", "timeout", "container", "site", "other"]), max_size=3)
    if mangled and draw(st.booleans()):
        options = {k: draw(st.one_of(json_values, values)) for k in draw(keys)}
        nb["metadata"]["nbpipe"] = options if draw(st.booleans()) else draw(json_values)
    elif draw(st.booleans()):
        nb["metadata"]["nbpipe"] = {k: draw(values) for k in draw(keys)}
    if mangled and draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from(["nbformat", "nbformat_minor", "language_info", "metadata", "cells"]))
        target = nb["metadata"] if key == "language_info" else nb
        target[key] = draw(st.one_of(json_values, st.sampled_from([3, 4, 5, "4", 4.0, {"name": 5}])))
    return nb


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def check_static_path(nb: Any, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "marker"
        if isinstance(nb, dict) and BESIDE in nb:
            nb = dict(nb)
            (Path(tmp) / "mod.py").write_text(json.dumps(nb.pop(BESIDE))[1:-1])
        text = json.dumps(nb).replace(MARKER, str(marker))  # ASCII: a lone surrogate is writable
        path = Path(tmp) / "nb.ipynb"
        path.write_text(text)
        for argv in (["check", str(path)], ["graph", str(path), "--format", fmt],
                     ["compile", str(path), "-d", str(Path(tmp) / "tasks")]):
            code, err = run(argv)
            assert code in (0, 2), (argv[0], code, err)
            if code == 2:
                *warnings, error = err.splitlines()
                assert error.startswith("nbpipe: error: "), err
                assert all(line.startswith("nbpipe: warning: ") for line in warnings), err
            assert not marker.exists(), f"a payload ran in {argv[0]}"


# Load what the first example would otherwise load inside its deadline.
run(["check", "/nonexistent.ipynb"])
common = dict(deadline=timedelta(seconds=5), database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


formats = st.sampled_from(["text", "json", "dot", "mermaid", "svg"])  # svg: only where Graphviz is
any_notebook = st.one_of(notebooks(), notebooks(mangled=True))


@settings(max_examples=400, derandomize=True, **common)  # type: ignore[arg-type]
@given(notebooks(), formats)
def test_tags_and_sources_exit_0_or_2_and_run_nothing(nb: dict[str, Any], fmt: str) -> None:
    check_static_path(nb, fmt)


@settings(max_examples=200, derandomize=True, **common)  # type: ignore[arg-type]
@given(notebooks(mangled=True), formats)
def test_wrong_types_anywhere_exit_0_or_2_and_run_nothing(nb: dict[str, Any], fmt: str) -> None:
    check_static_path(nb, fmt)


@pytest.mark.slow
@settings(max_examples=3000, derandomize=True, **common)  # type: ignore[arg-type]
@given(any_notebook, formats)
def test_the_static_path_exits_0_or_2_and_runs_nothing_many(nb: dict[str, Any], fmt: str) -> None:
    check_static_path(nb, fmt)


@settings(max_examples=100, derandomize=True, **common)  # type: ignore[arg-type]
@given(st.one_of(json_values, st.fixed_dictionaries({"nbformat": st.sampled_from([1, 2, 3, 4, 5, "4"])},
                                                     optional={"metadata": json_values, "cells": json_values,
                                                               "worksheets": json_values,
                                                               "nbformat_minor": json_values})))
def test_any_json_as_a_notebook_exits_0_or_2(data: Any) -> None:
    check_static_path(data, "text")


def test_warnings_may_precede_the_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cell nbpipe warns about, then an error (no Graphviz): warnings first, the error last."""
    monkeypatch.setenv("PATH", "")
    nb = {"nbformat": 4, "nbformat_minor": 4, "metadata": {},
          "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": "exec(code)"}]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nb.ipynb"
        path.write_text(json.dumps(nb))
        code, err = run(["graph", str(path), "--format", "svg"])
    assert code == 2
    assert err.splitlines()[0].startswith("nbpipe: warning: cell 0")
    assert err.splitlines()[-1].startswith("nbpipe: error: --format svg needs Graphviz")
    check_static_path(nb, "svg")
