"""What a cell reads and defines (SPEC §3, nbpipe/names.py)."""

from __future__ import annotations

import time

import pytest
from nbbuild import code, notebook

from nbpipe.graph import build_pipeline
from nbpipe.names import analyse_cell
from nbpipe.parse import parse_notebook

#: Names every IPython-transformed cell may read that no app ever defines.
IGNORED = {"get_ipython", "print", "sum", "len", "range", "list"}

CASES = [
    # source, reads, defines
    ("x = y + 1", {"y"}, {"x"}),
    ("a, (b, *c) = t", {"t"}, {"a", "b", "c"}),
    ("x: int = y", {"int", "y"}, {"x"}),
    ("del x", {"x"}, {"x"}),
    ("import os\nimport numpy as np\nfrom a.b import c as d\nimport xml.dom", set(),
     {"os", "np", "d", "xml"}),
    ("def f(a):\n    return a + g\n", {"g"}, {"f"}),
    ("@deco\ndef f():\n    pass\n", {"deco"}, {"f"}),
    ("class C(Base):\n    k = v\n    def m(self):\n        return w\n", {"Base", "v", "w"}, {"C"}),
    ("x += 1", {"x"}, {"x"}),
    ("df['x'] = 3", {"df"}, {"df"}),
    ("df.loc[i, 'x'] = v", {"df", "i", "v"}, {"df"}),
    ("obj.a = val", {"obj", "val"}, {"obj"}),
    ("obj.a.b += 1", {"obj"}, {"obj"}),
    ("del d['k']", {"d"}, {"d"}),
    ("lst.append(item)", {"lst", "item"}, {"lst"}),
    ("model.fit(X, y)", {"model", "X", "y"}, {"model"}),
    ("print(lst.count(1))", {"lst"}, set()),  # a known-pure method changes nothing
    ("top = stack.pop()", {"stack"}, {"top", "stack"}),  # any other method may change its receiver
    ("print(q.popleft())", {"q"}, {"q"}),
    ("while stack.pop():\n    pass", {"stack"}, {"stack"}),
    ("df.dropna(inplace=True)", {"df"}, {"df"}),
    ("import time\ntime.sleep(1)", set(), {"time"}),  # bound by the import, not changed by the call
    ("x = 1\ny = x", set(), {"x", "y"}),  # defined before it is read: not an input
    ("y = x\nx = 1", {"x"}, {"x", "y"}),
    ("total = sum(v for v in values)", {"values"}, {"total"}),
    ("def f():\n    global G\n    G = 1\n", set(), {"f", "G"}),
    ("with open(p) as fh:\n    data = fh.read()", {"p", "open"}, {"fh", "data"}),
    ("for i in items:\n    acc.append(i)", {"items", "acc"}, {"i", "acc"}),
    # compound statements are analysed body by body: mutations inside count,
    # names the statement binds first (loop variables, ``as`` targets) are not inputs
    ("if flag:\n    d['k'] = 1\nelse:\n    d['k'] = 2", {"flag", "d"}, {"d"}),
    ("with open(p) as fh:\n    obj.data = fh.read()", {"open", "p", "obj"}, {"fh", "obj"}),
    ("try:\n    lst.append(1)\nexcept ValueError as e:\n    log(e)", {"lst", "ValueError", "log"},
     {"lst", "e"}),
    ("while (line := nxt()):\n    lines.append(line)", {"nxt", "lines"}, {"line", "lines"}),
    ("for k, v in d.items():\n    total += v", {"d", "total"}, {"k", "v", "total"}),
    ("for row in rows:\n    if row:\n        out[row] = f(row)", {"rows", "out", "f"}, {"row", "out"}),
    ("for i in xs:\n    pass\nelse:\n    print(i)", {"xs", "i"}, {"i"}),  # xs may be empty
    ("1 +", set(), set()),  # a syntax error: the cell fails at run time, nothing flows
    ("", set(), set()),
    # IPython syntax: magics that run Python code are analysed as that code
    ("%time z = w * 2", {"w"}, {"z"}),
    ("%%time\nz = w * 2\n", {"w"}, {"z"}),
    ("%timeit q = w2 + 1", {"w2"}, set()),  # %timeit runs in a scope of its own
    ("%%timeit\nq = w2 + 1\n", {"w2"}, set()),
    ("%%capture cap\nk = m + 1\nprint(k)\n", {"m"}, {"cap", "k"}),
    ("%%capture --no-stderr out\nk = 1\n", set(), {"out", "k"}),
    ("%prun -s cumulative r = work(n)", {"work", "n"}, {"r"}),
    ("!echo {x}", {"x"}, set()),
    ("!echo $y and {z + 1}", {"y", "z"}, set()),
    ("files = !ls {pattern}", {"pattern"}, {"files"}),
    ("%%bash\necho $x\nls\n", set(), set()),  # the shell sees $x, not Python
    ("%%bash --out listing\nls\n", set(), {"listing"}),
    ("%%script bash --out so --err se\nls\n", set(), {"so", "se"}),
    ("%matplotlib inline\nimport math", set(), {"math"}),
    ("a = 1\n%time b = a + c\n!echo {b}\nd = b", {"c"}, {"a", "b", "d"}),
]


@pytest.mark.parametrize("source, reads, defines", CASES, ids=[c[0][:40] for c in CASES])
def test_reads_and_defines(source: str, reads: set[str], defines: set[str]) -> None:
    names = analyse_cell(source)
    assert set(names.reads) - IGNORED == reads
    assert set(names.defines) == defines


def test_magics_do_not_break_the_analysis_of_the_rest_of_the_cell() -> None:
    names = analyse_cell("%load_ext autoreload\n%autoreload 2\nresult = compute(data)\n!ls -l\n")
    assert set(names.reads) - IGNORED == {"compute", "data"}
    assert names.defines == {"result"}


@pytest.mark.parametrize("body", ["__all__ = 5", "__all__ = [1]", "__all__ = 'x'", "x = 1\0",
                                  "__all__ = " + "[" * 300 + "]" * 300, "x = " + "+".join(["a"] * 1500)])
def test_a_star_import_of_a_written_module_with_odd_contents_is_analysed(body: str) -> None:
    # `__all__ = 5` in a module a cell writes raised TypeError in `nbpipe check`.
    p = build_pipeline(parse_notebook(notebook(code(f"%%writefile mod.py\n{body}", "app:a"),
                                               code("from mod import *\nprint(x)", "app:b"))))
    assert set(p.apps) == {"a", "b"}
    assert "mod.py" in p.apps["b"].spec.inputs


def test_a_long_attribute_chain_is_analysed_in_linear_time() -> None:
    # Each link of the chain was followed to its root again, looking for a random generator.
    chain = "x = " + ".".join(["a"] * 8000)
    started = time.perf_counter()
    found = analyse_cell(chain)
    assert time.perf_counter() - started < 2.0
    assert found.reads == {"a"} and found.defines == {"x"}
