"""The table of known effects (nbpipe/effects.py) as the analysis applies it, and what
the notebook's imports tell it (nbpipe/imports.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_same_outputs, assert_well_formed, normalise_outputs
from conftest import notebook as fixed_notebook
from nbbuild import code, nbpipe_cli, notebook, read, write

import nbpipe

from nbpipe.effects import ARGUMENT_MUTATORS, METHOD_ARGUMENT_MUTATORS, NAMES_IN_STRINGS, PURE_METHODS
from nbpipe.errors import GraphError
from nbpipe.graph import build_pipeline
from nbpipe.imports import is_module, public_names
from nbpipe.names import Context, analyse_cell
from nbpipe.parse import parse_notebook
from nbpipe.state import is_generator

NUMPY = Context(imports=(("np", "numpy"),), modules=frozenset({"np"}))

MUTATIONS = [
    # source, what it defines (the names it changes, and those it binds)
    ("top = stack.pop()", {"stack", "top"}),
    ("y = f(obj.update(z))", {"obj", "y"}),
    ("print(q.popleft() + 1)", {"q"}),
    ("if d.pop('k', None):\n    pass", {"d"}),
    ("import random\nrandom.shuffle(lst)", {"random", "lst"}),
    ("from random import shuffle\nshuffle(lst)", {"shuffle", "lst"}),
    ("np.random.shuffle(arr)", {"arr"}),
    ("np.add.at(x, [0, 0], 1)", {"x"}),
    ("rng.shuffle(arr)", {"rng", "arr"}),
    ("v = next(it)", {"it", "v"}),
    ("import heapq\nheapq.heappush(h, 3)", {"heapq", "h"}),
    ("import bisect\nbisect.insort(a, 2)", {"bisect", "a"}),
    ("np.copyto(dst, src)", {"dst"}),
    ("np.put(a, [0], 5)", {"a"}),
    ("np.fill_diagonal(m, 0)", {"m"}),
    ("np.add(a, b, out=c)", {"c"}),
    ("df.dropna(inplace=True)", {"df"}),
    ("df['a'].fillna(0, inplace=True)", {"df"}),
    ("setattr(obj, 'a', 1)", {"obj"}),
    ("values = rng.normal(size=3)", {"rng", "values"}),
    ("lst.append(x)", {"lst"}),
]


@pytest.mark.parametrize("source, defines", MUTATIONS, ids=[m[0][:40] for m in MUTATIONS])
def test_calls_that_change_a_value_define_it(source: str, defines: set[str]) -> None:
    names = analyse_cell(source, NUMPY)
    # a shuffle through the global generators also draws: it defines their state too
    assert {n for n in names.defines if not is_generator(n)} == defines
    changed = defines - {"top", "y", "v", "values", "random", "shuffle", "heapq", "bisect"}
    assert changed <= names.reads  # the old value is needed: an edge to its definer


PURE = [
    "print(len(lst), sorted(lst), sum(lst), isinstance(lst, list))",
    "m = df.mean()\ns = df.sum()\nd = df.describe()\nh = df.head()",
    "c = df.copy()\ng = df.groupby('a').size()\nt = df.astype(float)",
    "df2 = df.dropna()\ndf3 = df.fillna(0)",
    "df.plot()\ndf.to_csv('out.csv')\nfig.savefig('f.png')",
    "x = d.get('k')\nks = list(d.keys())\nn = lst.count(1)\ni = lst.index(2)",
    "s = text.strip().split(',')",
    "p = model.predict(X)\nscore = model.score(X, y)",
    "d2 = dict.fromkeys(keys)",
    "[r.append(0) for r in rows]",  # a comprehension's own variable is nobody's value
    "def f():\n    stack.pop()\n",  # the body runs when called, not here
    "sub = df.query('A < 3')",
]


@pytest.mark.parametrize("source", PURE, ids=[p[:40] for p in PURE])
def test_known_pure_calls_change_nothing(source: str) -> None:
    names = analyse_cell(source, NUMPY)
    assigned = {line.partition(" =")[0] for line in source.splitlines() if " = " in line}
    assert set(names.defines) - assigned - {"f"} == set()


@pytest.mark.parametrize("source", [
    "plt.title('x')\nplt.show()", "np.save('a.npy', a)", "time.sleep(0.1)", "os.makedirs('d', exist_ok=True)",
    "np.random.seed(0)", "os.environ['X'] = '1'", "plt.rcParams['figure.dpi'] = 80",
])
def test_calls_on_a_module_never_define_the_module(source: str) -> None:
    ctx = Context(modules=frozenset({"plt", "np", "time", "os"}))
    # ``np.random.seed(0)`` defines the generator's state (a pseudo-name), never ``np``
    assert {n for n in analyse_cell(source, ctx).defines if not is_generator(n)} == set()


def test_the_cells_own_import_makes_a_name_a_module() -> None:
    names = analyse_cell("import time\ntime.sleep(0)")
    assert names.defines == {"time"} and names.modules == {"time"}  # bound by the import only
    assert analyse_cell("import matplotlib.pyplot as plt").imports == (("plt", "matplotlib.pyplot"),)


def test_a_function_that_changes_a_global_changes_it_where_it_is_called() -> None:
    assert analyse_cell("def push(x):\n    stack.append(x)\n").global_writes == (("push", {"stack"}),)
    assert analyse_cell("def push(x):\n    stack.append(x)\n").defines == {"push"}
    assert analyse_cell("def push(x):\n    stack.append(x)\npush(1)").defines == {"push", "stack"}
    local = "def f(a):\n    a.append(1)\n    mine = []\n    mine.append(2)\n"
    assert analyse_cell(local).global_writes == ()  # parameters and locals are not globals
    assert analyse_cell("g = lambda v: acc.append(v)").global_writes == (("g", {"acc"}),)
    p = pipeline(code("stack = []\ndef push(x):\n    stack.append(x)", "app:a"),
                 code("push(1)", "app:b"), code("print(stack)", "app:c"))
    assert p.apps["b"].reads == {"push": "a", "stack": "a"}
    assert p.apps["c"].reads == {"stack": "b"}


def test_a_defaultdict_read_inserts_a_key() -> None:
    assert analyse_cell("from collections import defaultdict\ncounts = defaultdict(int)").defaultdicts == {"counts"}
    ctx = Context(defaultdicts=frozenset({"counts"}))
    assert analyse_cell("print(counts['a'])", ctx).defines == {"counts"}
    assert analyse_cell("print(other['a'])", ctx).defines == set()


STRINGS = [
    # source, reads (beyond builtins), defines, hidden
    ("r = eval('x + 1')", {"x"}, {"r"}, ()),
    ("exec('y = z * 2')", {"z"}, {"y"}, ()),
    ("globals()['s'] = 3", set(), {"s"}, ()),
    ("print(globals()['t'])", {"t"}, set(), ()),
    ("v = globals().get('u')", {"u"}, {"v"}, ()),
    ("sub = df.query('A < @Cmean and B > @lo')", {"df", "Cmean", "lo"}, {"sub"}, ()),
    ("out = df.eval('@x + B')", {"df", "x"}, {"out", "df"}, ()),
    ("import pandas as pd\nr = pd.eval('x + y')", {"x", "y"}, {"pd", "r"}, ()),
    ("import numexpr as ne\nr = ne.evaluate('a * b')", {"a", "b"}, {"ne", "r"}, ()),
    ("r = eval(expr)", {"expr"}, {"r"}, ("eval(expr)",)),
    ("exec(open('s.py').read())", set(), set(), ("exec(open('s.py').read())",)),
    ("globals()[key] = 1", {"key"}, set(), ("globals()[key]",)),
    ("sub = df.query(cond)", {"df", "cond"}, {"sub"}, ("df.query(cond)",)),
    ("from nbpipe_no_such_module import *", set(), set(), ("from nbpipe_no_such_module import *",)),
]


@pytest.mark.parametrize("source, reads, defines, hidden", STRINGS, ids=[s[0][:40] for s in STRINGS])
def test_names_reached_through_strings(source: str, reads: set[str], defines: set[str],
                                       hidden: tuple[str, ...]) -> None:
    names = analyse_cell(source)
    assert set(names.reads) - {"eval", "exec", "globals", "print", "open"} == reads
    assert set(names.defines) == defines
    assert names.hidden == hidden


def test_star_import_defines_the_public_names_from_the_context() -> None:
    ctx = Context(star_names=(("math", frozenset({"sqrt", "pi"})),))
    names = analyse_cell("from math import *\nr = sqrt(2)", ctx)
    assert names.defines == {"sqrt", "pi", "r"} and "sqrt" not in names.reads
    assert names.hidden == ()


def test_public_names_of_installed_local_and_written_modules(tmp_path: Path) -> None:
    assert {"sqrt", "pi", "floor"} <= public_names("math", None, {}) and "__name__" not in public_names("math", None, {})
    assert public_names("json", None, {}) == {"dump", "dumps", "load", "loads", "JSONDecoder",
                                              "JSONDecodeError", "JSONEncoder"}  # its __all__
    (tmp_path / "helpers.py").write_text("import os\n__all__ = ['a']\na = 1\nb = 2\n")
    assert public_names("helpers", tmp_path, {}) == {"a"}
    (tmp_path / "tools.py").write_text("raise SystemExit('never run')\ndef f(): pass\n_hidden = 1\nK = 2\n")
    assert public_names("tools", tmp_path, {}) == {"f", "K"}  # parsed, not run
    assert public_names("mymod", tmp_path, {"mymod.py": "def g():\n    pass\n"}) == {"g"}
    assert public_names("nbpipe_no_such_module", tmp_path, {}) is None


def test_is_module_without_importing(tmp_path: Path) -> None:
    assert is_module("os.path", None, {})
    assert is_module("xml.dom", None, {})
    assert not is_module("json.dumps", None, {})
    assert is_module("pkg.sub", tmp_path, {"pkg/sub.py": ""})


def test_writefile_names_the_file_it_writes() -> None:
    assert analyse_cell("%%writefile mymod.py\ndef f():\n    return 1\n").writes == ("mymod.py",)
    assert analyse_cell("%%file -a 'notes.txt'\nmore\n").writes == ("notes.txt",)
    assert analyse_cell("%%bash\necho hi > x.txt\n").writes == ()


def test_imported_modules() -> None:
    found = analyse_cell("import a.b\nfrom c import d\nfrom .rel import e\nfrom f import *")
    assert found.imported_modules == ("a.b", "c", "c.d", "f")
    assert found.star_imports == ("f",)


def test_the_table_is_consistent_and_documented() -> None:
    assert not PURE_METHODS & METHOD_ARGUMENT_MUTATORS
    assert all("." in name for name in ARGUMENT_MUTATORS)
    assert set(NAMES_IN_STRINGS.values()) == {"code", "expression", "at-names"}
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.partition("### What calls do")[2].partition("\n### ")[0]
    for name in ARGUMENT_MUTATORS | {f".{m}" for m in METHOD_ARGUMENT_MUTATORS}:
        assert f"{name.rpartition('.')[2]}" in table, name
    for method in ("mean", "describe", "head", "copy", "groupby", "astype", "plot", "to_csv", "savefig"):
        assert method in PURE_METHODS and f"`{method}`" in table


# ------------------------------------------------------------------ through the graph


def pipeline(*cells: object, path: Path | None = None) -> object:
    return build_pipeline(parse_notebook(notebook(*cells), path))


def test_module_calls_add_no_edges_between_plot_apps() -> None:
    p = pipeline(code("import matplotlib.pyplot as plt\nimport numpy as np\nimport time", "setup"),
                 code("plt.plot([1, 2])\nplt.title('a')\nplt.show()", "app:a"),
                 code("np.save('b.npy', np.zeros(2))\ntime.sleep(0)", "app:b"),
                 code("plt.plot([2, 1])\nplt.show()", "app:c"))
    assert p.graph.number_of_edges() == 0


def test_from_import_of_a_submodule_is_a_module_everywhere() -> None:
    p = pipeline(code("from matplotlib import pyplot as plt", "app:a"),
                 code("plt.title('x')", "app:b"), code("plt.show()", "app:c"))
    assert p.apps["c"].reads == {"plt": "a"}  # not from b: b's call did not change plt


def test_a_defaultdict_assigned_in_one_app_and_read_in_another() -> None:
    p = pipeline(code("from collections import defaultdict\ncounts = defaultdict(int)", "app:a"),
                 code("print(counts['x'])", "app:b"), code("print(dict(counts))", "app:c"))
    assert p.apps["c"].reads == {"counts": "b"}


def test_star_import_in_one_app_used_in_another() -> None:
    p = pipeline(code("from math import *", "app:a"), code("print(sqrt(2))", "app:b"))
    assert p.apps["b"].reads == {"sqrt": "a"}
    assert p.warnings == ()


def test_invisible_names_are_warnings_naming_the_cell() -> None:
    p = pipeline(code("expr = 'x + 1'\nx = 1", "app:a"), code("print(eval(expr))", "app:b"))
    (warning,) = p.warnings
    cell_id = p.parsed.cells[1].id
    assert warning.startswith(f"cell 1 (id {cell_id}): eval(expr) reaches names nbpipe cannot see")


def test_writefile_declares_outputs_and_the_import_waits_for_it() -> None:
    p = pipeline(code("%%writefile mymod.py\ndef double(x):\n    return 2 * x\n", "app:write"),
                 code("import mymod\nprint(mymod.double(2))", "app:use"),
                 code("from mymod import double\nprint(double(3))", "app:use2"))
    assert p.apps["write"].spec.outputs == ("mymod.py",)
    assert p.apps["use"].spec.inputs == ("mymod.py",)
    edges = {(e["from"], e["to"]): e for e in p.edges()}
    assert edges[("write", "use")]["files"] == ["mymod.py"]
    assert edges[("write", "use2")]["files"] == ["mymod.py"]


def test_writefile_of_a_package_module() -> None:
    p = pipeline(code("%%writefile pkg/__init__.py\n\n", "app:a"), code("%%writefile pkg/m.py\nK = 1\n", "app:b"),
                 code("from pkg.m import K", "app:c"))
    assert set(p.apps["c"].spec.inputs) == {"pkg/__init__.py", "pkg/m.py"}


def test_setup_importing_a_module_an_app_writes_is_an_error_naming_both_cells() -> None:
    with pytest.raises(GraphError) as err:
        pipeline(code("import mymod", "setup"),
                 code("%%writefile mymod.py\nK = 1\n", "app:write"))
    message = str(err.value)
    assert "setup cell 0" in message and "cell 1" in message and "mymod.py" in message
    assert err.value.exit_code == 2


def test_a_setup_cell_may_import_what_setup_writes() -> None:
    p = pipeline(code("%%writefile mymod.py\nK = 1\n", "setup"), code("import mymod", "setup"),
                 code("print(mymod.K)", "app:a"))
    assert p.apps["a"].spec.inputs == ()


def test_star_import_of_a_module_the_notebook_writes(tmp_path: Path) -> None:
    p = pipeline(code("%%writefile shapes.py\ndef area(r):\n    return 3 * r * r\n", "app:a"),
                 code("from shapes import *\nprint(area(2))", "app:b"), path=tmp_path / "nb.ipynb")
    assert p.warnings == ()
    assert p.apps["b"].reads == {} and p.apps["b"].spec.inputs == ("shapes.py",)


# ------------------------------------------------------------------ end to end, against papermill
# Each notebook printed wrong values (or failed) before the analysis saw these effects.


def stdout(cell: Any) -> str:
    return "".join(o["text"] for o in normalise_outputs(cell.outputs)
                   if o["output_type"] == "stream" and o["name"] == "stdout")


def test_mutations_inside_expressions_and_by_known_mutators(both: Any) -> None:
    nb = fixed_notebook(
        code("import random\nimport time\nfrom collections import defaultdict\nimport numpy as np", "setup"),
        code("stack = [1, 2, 3]\nlst = list(range(6))\nx = np.zeros(3)\nit = iter(range(2, 8, 2))\n"
             "counts = defaultdict(int)\ndef push(v):\n    stack.append(v)", "app:make"),
        code("top = stack.pop()\nprint('top', top)", "app:pop"),
        code("push(9)", "app:push"),
        code("random.seed(1)\nrandom.shuffle(lst)", "app:shuffle"),
        code("np.add.at(x, [0, 0, 2], 1)", "app:addat"),
        code("print(next(it))", "app:n1"),
        code("print(next(it))", "app:n2"),
        code("print(next(it))", "app:n3"),
        code("print(counts['seen'])", "app:peek"),
        code("time.sleep(0.2)\nprint(stack, lst, x, dict(counts))", "app:show"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert [stdout(c[i]) for i in (6, 7, 8)] == ["2\n", "4\n", "6\n"]
    expected = random.Random(1)
    order = list(range(6))
    expected.shuffle(order)
    assert stdout(c[10]) == f"[1, 2, 9] {order} [2. 0. 1.] {{'seen': 0}}\n"


def test_names_reached_through_strings_and_star_imports(both: Any) -> None:
    pytest.importorskip("pandas")
    nb = fixed_notebook(
        code("import pandas as pd", "setup"),
        code("x = 41\nexec('y = 2')\nglobals()['s'] = 'set by key'\n"
             "df = pd.DataFrame({'A': [1, 5, 9], 'B': [2, 3, 4]})\nCmean = df['A'].mean()", "app:make"),
        code("from math import *", "app:star"),
        code("print(eval('x + 1'), y, globals()['s'])", "app:strings"),
        code("print(df.query('A < @Cmean'))\nprint(pd.eval('x + y'))", "app:query"),
        code("print(sqrt(16), floor(pi))", "app:math"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    c = runs.merged.cells
    assert stdout(c[3]) == "42 2 set by key\n"
    assert stdout(c[4]).split("\n")[-2] == "43"
    assert stdout(c[5]) == "4.0 3\n"


def test_a_module_written_by_one_app_and_imported_by_a_later_one(both: Any, tmp_path: Path) -> None:
    nb = fixed_notebook(
        code("import time\ntime.sleep(0.5)  # the writer is slow: an importer that did not wait fails",
             "app:write"),
        code("%%writefile shapes.py\ndef area(r):\n    return 3 * r * r\n"),
        code("import shapes\nprint(shapes.area(2))", "app:use"),
        code("from shapes import *\nprint(area(3))", "app:star"),
    )
    runs = both(nb)
    assert_well_formed(runs)
    assert_same_outputs(runs)
    assert stdout(runs.merged.cells[2]) == "12\n" and stdout(runs.merged.cells[3]) == "27\n"
    directory = tmp_path / "nbpipe"
    for attempt in range(2):  # three runs in all: the import never races the writer
        (directory / "shapes.py").unlink()
        again = nbpipe.execute(directory / "nb.ipynb", output=directory / f"again{attempt}.ipynb",
                               workers=3)
        assert again.ok, {a: r.status.value for a, r in again.apps.items()}


# ------------------------------------------------------------------ the command line


def test_check_warns_about_names_it_cannot_see(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1\nexpr = 'x + 1'", "app:a"),
                code("print(eval(expr))\nsub = df.query(cond)", "app:b"))
    proc = nbpipe_cli("check", src, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cell_id = read(src).cells[1].id
    lines = [line for line in proc.stderr.splitlines() if line.startswith("nbpipe: warning:")]
    assert len(lines) == 2
    assert lines[0].startswith(f"nbpipe: warning: cell 1 (id {cell_id}): eval(expr) reaches names")
    assert "df.query(cond)" in lines[1]
    assert "2 app(s)" in proc.stdout


def test_check_refuses_a_setup_import_of_a_module_an_app_writes(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("import mymod", "setup"),
                code("%%writefile mymod.py\nK = 1\n", "app:write"))
    proc = nbpipe_cli("check", src, cwd=tmp_path)
    assert proc.returncode == 2
    ids = [c.id for c in read(src).cells]
    assert f"setup cell 0 (id {ids[0]})" in proc.stderr and f"cell 1 (id {ids[1]}" in proc.stderr
