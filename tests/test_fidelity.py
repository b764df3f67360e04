"""The fidelity guarantee (SPEC §3): nbpipe's merged notebook has the same
outputs, cell for cell, as papermill running the notebook top to bottom.

Each test builds a small tagged notebook, runs it both ways (the ``both``
fixture of conftest.py, parametrized here over every engine in
``nbpipe.api.ENGINES``, also in the default run), compares every source cell's normalised outputs by
cell id, checks the merged notebook's structure, and then asserts the
specific values the notebook is about, so that two runs that both printed
nothing cannot pass.

Apps that read a value another app is about to change sleep briefly first:
with real kernels that changes nothing, but an engine that shared objects or
namespaces between concurrently running apps would show the later value.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import (
    Runs,
    assert_same_outputs,
    assert_well_formed,
    code,
    md,
    normalise_outputs,
    notebook,
    raw,
)

from nbpipe.api import ENGINES


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest) -> str:
    """Every engine, also in the default run: this suite is the guarantee itself."""
    return str(request.param)


def stream(cell: Any, name: str = "stdout") -> str:
    return "".join(o["text"] for o in normalise_outputs(cell.outputs)
                   if o["output_type"] == "stream" and o["name"] == name)


def mimes(cell: Any) -> list[list[str]]:
    return [sorted(o.get("data", {})) for o in cell.outputs if o.output_type != "stream"]


def graph_reads(runs: Runs) -> dict[str, dict[str, str]]:
    return {a["name"]: a["reads"] for a in runs.merged.metadata["nbpipe"]["graph"]["apps"]}


# --------------------------------------------------------------------- 1. mutation


def test_mutation_reaches_later_apps(both: Any) -> None:
    nb = notebook(
        code("import time\nimport types\nregistry = []", "setup"),
        code('lst = [1, 2]\nd = {"a": 1}\nns = types.SimpleNamespace(v=1)\ncounter = 10\n'
             'tmp = "temporary"\nregistry.append("make")', "app:make"),
        code("time.sleep(0.5)\nprint('peek', lst, d, ns.v, counter, tmp, registry)", "app:peek"),
        code('lst.append(3)\nlst.extend([4])\nd["k"] = "v"\nd.update(z=0)\ndel d["a"]\n'
             "ns.v = 2\nns.w = [0]\nns.w[0] = 7\ncounter += 5\ndel tmp\nregistry.append('mutate')",
             "app:mutate"),
        code("print('mutate', lst, d, ns, counter, registry)"),
        code("print('read', lst, d, ns, counter, registry)\ntry:\n    tmp\n"
             "except NameError as exc:\n    print('tmp:', exc)", "app:read"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stream(c[2]) == "peek [1, 2] {'a': 1} 1 10 temporary ['make']\n"
    assert stream(c[5]) == ("read [1, 2, 3, 4] {'k': 'v', 'z': 0} namespace(v=2, w=[7]) 15 "
                            "['make', 'mutate']\ntmp: name 'tmp' is not defined\n")


# --------------------------------------------------------------------- 2. nearest definer


def test_nearest_earlier_definer(both: Any) -> None:
    nb = notebook(
        code("x = 1\nprint('first', x)", "app:first"),
        md("`reader` sits between the two definitions of `x`: it must see the first."),
        code("import time\ntime.sleep(0.5)\ny = x * 10\nprint('reader sees', x)", "app:reader"),
        code("x = 100\nprint('redefined', x)", "app:redefine"),
        code("print('last sees', x, y)", "app:last"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stream(runs.merged.cells[2]) == "reader sees 1\n"
    assert stream(runs.merged.cells[4]) == "last sees 100 10\n"
    reads = graph_reads(runs)
    assert reads["reader"] == {"x": "first"}
    assert reads["last"] == {"x": "redefine", "y": "reader"}


# --------------------------------------------------------------------- 3. code objects


def test_functions_classes_lambdas_closures(both: Any) -> None:
    nb = notebook(
        code("import math", "setup"),
        code("factor = 3\n\ndef scaled(v):\n    return v * factor\n\n"
             "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n"
             "    def norm(self):\n        return math.hypot(self.x, self.y)\n\n"
             "    def __repr__(self):\n        return f'Point({self.x}, {self.y})'\n\n"
             "p = Point(3, 4)\ndouble = lambda v: 2 * v\n\n"
             "def make_adder(n):\n    def add(v):\n        return v + n\n    return add\n\n"
             "add5 = make_adder(5)", "app:defs"),
        code("q = Point(1, 2)\nprint(scaled(2), double(21), add5(1), make_adder(10)(1))\n"
             "print(p, p.norm(), q, type(p) is Point, isinstance(q, Point))", "app:use"),
        code("class Point3(Point):\n    pass\n\nr = Point3(0, 1)\n"
             "print(type(p) is type(q), isinstance(r, Point), r.norm())\n[p, q, r]", "app:more"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stream(c[2]) == "6 42 6 11\nPoint(3, 4) 5.0 Point(1, 2) True True\n"
    assert stream(c[3]) == "True True 1.0\n"
    assert c[3].outputs[-1]["data"]["text/plain"] == "[Point(3, 4), Point(1, 2), Point(0, 1)]"


def test_functions_look_their_globals_up_when_called(both: Any) -> None:
    """Late binding: a function (or method) uses the values above the calling cell."""
    nb = notebook(
        code("x = 1\n\ndef helper():\n    return x * 10\n\n"
             "def f():\n    return helper() + threshold", "app:defs"),
        code("threshold = 5", "app:limit"),
        code("x = 2", "app:redefine"),
        code("print(f())", "app:call"),
        code("class K:\n    def get(self):\n        return threshold\n\nk = K()", "app:klass"),
        code("threshold = 7", "app:later"),
        code("print(k.get(), isinstance(k, K))", "app:method"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stream(runs.merged.cells[3]) == "25\n"
    assert stream(runs.merged.cells[6]) == "7 True\n"


def test_a_function_that_assigns_a_global_changes_it_for_later_apps(both: Any) -> None:
    nb = notebook(
        code("count = 0\n\ndef bump():\n    global count\n    count += 1", "app:defs"),
        code("bump()\nbump()", "app:calls"),
        code("print(count)", "app:reads"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stream(runs.merged.cells[2]) == "2\n"


def test_class_defined_in_setup(both: Any) -> None:
    """SPEC §2 puts class definitions in ``setup``; instances must stay instances."""
    nb = notebook(
        code("class Box:\n    def __init__(self, v):\n        self.v = v\n\n"
             "    def __repr__(self):\n        return f'Box({self.v})'", "setup"),
        code("b = Box(1)\nboxes = [b]", "app:make"),
        code("print(b, isinstance(b, Box), type(boxes[0]) is Box)", "app:check"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stream(runs.merged.cells[2]) == "Box(1) True True\n"


# --------------------------------------------------------------------- 4. rich output


def test_display_outputs(both: Any, matplotlib_ready: None) -> None:
    nb = notebook(
        code("from IPython.display import HTML, Markdown, display", "setup"),
        code("xs = [0, 1, 2, 3]\nys = [v * v for v in xs]\n"
             "display(HTML('<b>bold</b> text'))\ndisplay(Markdown('## A heading'))", "app:data"),
        code("import matplotlib.pyplot as plt\n\nfig, ax = plt.subplots(figsize=(3, 2))\n"
             "ax.plot(xs, ys)\nax.set_title('squares')\nplt.show()", "app:plot"),
        code("plt.plot(ys, xs)"),
        code("HTML('<table><tr><td>%d</td></tr></table>' % sum(ys))", "app:table"),
        code("display({'text/plain': 'plain', 'application/json': {'n': len(xs)}}, raw=True)\n"
             "{'total': sum(ys)}"),
        code("class Badge:\n    def __init__(self, n):\n        self.n = n\n\n"
             "    def _repr_html_(self):\n        return f'<span>{self.n}</span>'\n\n"
             "badge = Badge(len(xs))\nbadge", "app:badge"),
        code("badge", "app:show"),  # a shipped instance of a class of the notebook
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert mimes(c[1]) == [["text/html", "text/plain"], ["text/markdown", "text/plain"]]
    assert mimes(c[2]) == [["image/png", "text/plain"]]
    assert mimes(c[3]) == [["text/plain"], ["image/png", "text/plain"]]  # Line2D repr, then the figure
    assert [o.output_type for o in c[4].outputs] == ["execute_result"]
    assert c[4].outputs[0]["data"]["text/html"] == "<table><tr><td>14</td></tr></table>"
    assert c[5].outputs[-1]["data"]["text/plain"] == "{'total': 14}"
    assert c[6].outputs[0]["data"]["text/html"] == c[7].outputs[0]["data"]["text/html"] == "<span>4</span>"


def test_live_display_updates(both: Any) -> None:
    """clear_output, display(..., display_id=...) updated in the same and a later cell, and \\r."""
    nb = notebook(
        code("from IPython.display import Markdown, clear_output, display", "setup"),
        code("print('cleared away')\nclear_output()\n"
             "h = display(Markdown('v1'), display_id=True)\nh.update(Markdown('v2'))\n"
             "for i in range(3):\n    print(f'\\r{i}', end='')\nprint()\nn = 3", "app:live"),
        code("g = display(Markdown('g1'), display_id='gauge')"),
        code("g.update(Markdown('g2'))\nprint('updated')"),
        code("print(n)", "app:other"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert [o.get("data", {}).get("text/markdown") for o in c[1].outputs] == ["v2", None]
    assert stream(c[1]) == "\r0\r1\r2\n"
    assert [o.data["text/markdown"] for o in c[2].outputs] == ["g2"]
    assert stream(c[3]) == "updated\n" and stream(c[4]) == "3\n"


# --------------------------------------------------------------------- 5. stderr


def test_stderr_and_warnings(both: Any) -> None:
    nb = notebook(
        code("import logging\nimport sys\nimport warnings", "setup"),
        code("print('out 1', flush=True)\nprint('err 1', file=sys.stderr, flush=True)\nprint('out 2')",
             "app:a"),
        code("warnings.warn('careful now', UserWarning)\nvalue = 42"),
        code("warnings.warn(f'deprecated {value}', DeprecationWarning)\n"
             "logging.warning('logged %d', value)\nsys.stderr.write('raw stderr\\n')", "app:b"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stream(c[1]) == "out 1\nout 2\n" and stream(c[1], "stderr") == "err 1\n"
    assert "UserWarning: careful now" in stream(c[2], "stderr")
    err = stream(c[3], "stderr")
    assert "DeprecationWarning: deprecated 42" in err and "WARNING:root:logged 42" in err
    assert "raw stderr" in err
    assert c[3].outputs[-1]["data"]["text/plain"] == "11"  # sys.stderr.write's return value


def test_a_stream_an_earlier_cell_held_does_not_reorder_a_later_cell(both: Any) -> None:
    """An earlier cell's sys.stderr, held in a reference cycle, is collected in the middle
    of a later cell: that must not send the later cell's warning before its print."""
    nb = notebook(
        code("import gc\nimport sys\nimport warnings", "setup"),
        code("held = [sys.stderr]\nheld.append(held)\ndel held", "app:a"),
        code("warnings.warn('careful now')\ngc.collect()\nprint('after the warning')", "app:b"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert [o.get("name") for o in runs.merged.cells[2].outputs] == ["stdout", "stderr"]


# --------------------------------------------------------------------- 6. %time


def test_time_magics(both: Any) -> None:
    nb = notebook(
        code("%time x = sum(range(1000))\nprint(x)", "app:t1"),
        code("%%time\ny = x * 2\nz = [i for i in range(3)]", "app:t2"),
        code("print(y, z)\n%time y + 1", "app:t3"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stream(c[0]) == "CPU times: <masked>\nWall time: <masked>\n499500\n"
    assert "Wall time: <masked>" in stream(c[1])
    assert stream(c[2]).startswith("999000 [0, 1, 2]\n")
    assert c[2].outputs[-1]["data"]["text/plain"] == "999001"
    assert graph_reads(runs)["t3"] == {"y": "t2", "z": "t2"}


# --------------------------------------------------------------------- 7. shell


def test_shell_escapes_and_bash(both: Any) -> None:
    nb = notebook(
        code("name = 'world'\n!echo hello {name}\nlisting = !printf 'a\\nb\\n'", "app:sh"),
        code("%%bash\necho from bash\necho second line", "app:bash"),
        code("print(list(listing), len(listing))\nlisting", "app:use"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stream(c[0]).strip() == "hello world"
    assert stream(c[1]) == "from bash\nsecond line\n"
    assert stream(c[2]) == "['a', 'b'] 2\n"
    assert c[2].outputs[-1]["data"]["text/plain"] == "['a', 'b']"


# --------------------------------------------------------------------- 8. no tags


def test_untagged_notebook_is_one_app(both: Any) -> None:
    nb = notebook(
        md("# A plain notebook"),
        code("a = 1\nb = [a, a + 1]"),
        code("print(b)"),
        raw("raw text stays"),
        code(""),
        code("# only a comment"),
        code("b"),
        code("def f(v):\n    return v + 1\n\nprint(__name__)\nf(b[-1])"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert list(runs.result.apps) == ["main"]
    c = runs.merged.cells
    assert stream(c[2]) == "[1, 2]\n"
    assert c[4].execution_count is None and c[5].execution_count is not None
    assert stream(c[7]) == "__main__\n" and c[7].outputs[-1]["data"]["text/plain"] == "3"


# --------------------------------------------------------------------- 9. Kale tags


def test_kale_tags(both: Any) -> None:
    nb = notebook(
        code("import json\nimport math", "imports"),
        code("def area(r):\n    return round(math.pi * r * r, 3)", "functions"),
        code("radius = 2\nscale = 1.5", "pipeline-parameters"),
        code("data = [1, 2, 3]\nprint('loaded', data)", "block:load"),
        code("print('a skipped cell')", "skip"),
        code("data.append(4)"),  # still block load: skip does not interrupt it
        code("total = sum(data) * scale\nprint('total', total)", "step:compute", "prev:load"),
        code("summary = json.dumps({'area': area(radius), 'total': total})\nprint(summary)",
             "block:report", "prev:compute"),
        code("print(total)\nradius", "pipeline-metrics"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    skip = runs.ids_tagged("skip")
    assert len(skip) == 1
    assert_same_outputs(runs, [i for i in runs.code_ids() if i not in skip], counts=False)

    # papermill knows nothing of `skip` and ran it; nbpipe keeps it unexecuted
    assert stream(runs.pm(skip[0])) == "a skipped cell\n"
    skipped = runs.nbp(skip[0])
    assert skipped.outputs == [] and skipped.execution_count is None
    assert skipped.metadata["nbpipe"]["status"] == "skipped"

    c = runs.merged.cells
    assert stream(c[6]) == "total 15.0\n"
    assert stream(c[7]) == '{"area": 12.566, "total": 15.0}\n'
    assert runs.merged.metadata["nbpipe"]["metrics"] == {"total": 15.0, "radius": 2}
    assert runs.result.metrics == {"total": 15.0, "radius": 2}
    assert set(runs.result.apps) == {"load", "compute", "report", "metrics"}


# --------------------------------------------------------------------- 10. parameters


def test_parameters_passed(both: Any) -> None:
    nb = notebook(
        md("Parameters first."),
        code("n = 3\nlabel = 'squares'", "parameters"),
        code("values = list(range(n))\nprint(len(values))", "app:gen"),
        code("squares = [v * v for v in values]\nsquares", "app:sq"),
        code("print(f'{label}: n={n} sum={sum(squares)}')", "app:report"),
    )
    runs = both(nb, parameters={"n": 5})
    assert_well_formed(runs)
    assert_same_outputs(runs)  # execution counts too: both count the injected cell

    def injected(nb: Any) -> tuple[int, Any]:
        found = [(i, c) for i, c in enumerate(nb.cells)
                 if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(found) == 1
        return found[0]

    (pm_at, pm_cell), (at, cell) = injected(runs.papermill), injected(runs.merged)
    params_at = next(i for i, c in enumerate(runs.merged.cells) if "parameters" in c.metadata.get("tags", []))
    assert at == params_at + 1 == pm_at
    assert cell.source == pm_cell.source and "n = 5" in cell.source
    assert cell.cell_type == "code" and cell.execution_count == pm_cell.execution_count
    assert normalise_outputs(cell.outputs) == normalise_outputs(pm_cell.outputs)

    c = runs.merged.cells
    assert stream(c[at + 1]) == "5\n"
    assert c[at + 2].outputs[0]["data"]["text/plain"] == "[0, 1, 4, 9, 16]"
    assert stream(c[at + 3]) == "squares: n=5 sum=30\n"
    assert runs.merged.metadata["nbpipe"]["parameters"] == {"n": 5, "label": "squares"}  # defaults too
    assert runs.merged.metadata["nbpipe"]["parameter_sources"] == {"n": "override", "label": "default"}


# --------------------------------------------------------------------- 11. failure


def test_failing_app(both: Any) -> None:
    nb = notebook(
        code("a = 1\nprint('a', a)", "app:ok"),
        code("b = a + 1\nprint('before', flush=True)\nraise ValueError(f'bad value {b}')", "app:boom"),
        code("print('unreached in boom')"),
        code("c = 10\nprint('c', c)", "app:indep"),
        code("print('dep', b)", "app:dep"),
    )
    runs = both(nb)
    assert_well_formed(runs, failed=True)
    assert runs.papermill_error is not None
    ids = runs.code_ids()
    failing = ids[1]
    assert_same_outputs(runs, ids[: ids.index(failing) + 1])

    for cell in (runs.pm(failing), runs.nbp(failing)):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert [(e.ename, e.evalue) for e in errors] == [("ValueError", "bad value 2")]
        assert errors[0].traceback
    # papermill stopped there; nbpipe ran the independent app and skipped the dependent one
    assert all(runs.pm(i).execution_count is None for i in ids[2:])
    unreached, indep, dep = (runs.nbp(i) for i in ids[2:])
    assert unreached.outputs == [] and unreached.execution_count is None
    assert stream(indep) == "c 10\n" and indep.metadata["nbpipe"]["status"] == "completed"
    assert dep.outputs == [] and dep.execution_count is None
    assert dep.metadata["nbpipe"]["status"] == "skipped"
    status = {a: r.status.value for a, r in runs.result.apps.items()}
    assert status == {"ok": "completed", "boom": "failed", "indep": "completed", "dep": "skipped"}


# --------------------------------------------------------------------- declared files


def test_declared_files(both: Any) -> None:
    nb = notebook(
        code("with open('numbers.txt', 'w') as f:\n    f.write('1 2 3\\n')\nprint('wrote')",
             "app:writer", "outputs:numbers.txt"),
        code("with open('input.csv') as f:\n    print(f.read().strip())", "app:given", "inputs:input.csv"),
        code("with open('numbers.txt') as f:\n    nums = [int(t) for t in f.read().split()]\nsum(nums)",
             "app:reader", "inputs:numbers.txt"),
    )
    runs = both(nb, files={"input.csv": "x,y\n1,2\n"})
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stream(c[1]) == "x,y\n1,2\n"
    assert c[2].outputs[0]["data"]["text/plain"] == "6"


# --------------------------------------------------------------------- the comparison itself


@pytest.mark.parametrize("outputs, expected", [
    ([{"output_type": "stream", "name": "stdout", "text": "a"},
      {"output_type": "stream", "name": "stdout", "text": "b\nWall time: 1.2 ms\n"}],
     [{"output_type": "stream", "name": "stdout", "text": "ab\nWall time: <masked>\n"}]),
    ([{"output_type": "error", "ename": "E", "evalue": "<obj at 0x7f00deadbeef>", "traceback": ["x"]}],
     [{"output_type": "error", "ename": "E", "evalue": "<obj at 0x<address>>"}]),
    ([{"output_type": "stream", "name": "stderr",
       "text": "/tmp/ipykernel_123/456.py:1: UserWarning: w\n"}],
     [{"output_type": "stream", "name": "stderr", "text": "<cell-file>:1: UserWarning: w\n"}]),
])
def test_normalise_outputs(outputs: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """The normaliser masks only what SPEC §3 exempts (no kernel needed)."""
    assert normalise_outputs(outputs) == expected


def test_normalise_keeps_differences() -> None:
    a = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    b = [{"output_type": "stream", "name": "stderr", "text": "1\n"}]
    c = [{"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {}, "execution_count": 3}]
    assert normalise_outputs(a) != normalise_outputs(b) != normalise_outputs(c)
    assert normalise_outputs(c) == [{"output_type": "execute_result", "data": {"text/plain": "1"}}]
