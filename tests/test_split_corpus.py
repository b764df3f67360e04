"""``--split auto`` and ``nbpipe tag`` on the realistic corpus (tests/corpus/).

test_corpus.py runs every split against papermill; this module holds what
needs no run: ``nbpipe tag NB --split M -o X`` writes a notebook that
``nbpipe check X`` accepts and that runs as the split chose, for every
corpus notebook, as stored (hand-tagged) and stripped of its tags; and the
regression tests of the grouping rules the corpus showed wrong.
"""

from __future__ import annotations

import random
from pathlib import Path

import nbformat
import networkx as nx
import pytest

import nbpipe
from conftest import normalise_outputs, run_papermill
from corpustools import corpus_names, place, read, strip_tags
from nbbuild import code, notebook, write
from nbbuild import read as read_nb
from nbpipe.cli import main
from nbpipe.errors import NbpipeError
from nbpipe.graph import Pipeline, build_pipeline
from nbpipe.parse import parse_notebook
from nbpipe.split import MODES, split_notebook


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", corpus_names())
def test_tag_then_check_accepts_every_corpus_notebook(name: str, mode: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for kind, nb in (("stored", read(name)), ("stripped", strip_tags(read(name)))):
        src = place(nb, tmp_path / kind, name)
        out = tmp_path / kind / f"{name}.tagged.ipynb"
        assert main(["tag", str(src), "--split", mode, "-o", str(out)]) == 0, (name, kind)
        assert main(["check", str(out)]) == 0, f"nbpipe check refuses what nbpipe tag wrote for {name} ({kind})"
        run, written = nbpipe.load_pipeline(src, mode), nbpipe.load_pipeline(out)
        assert _apps(written) == _apps(run), f"{name} ({kind}): the tags written are not the split a run uses"
        assert [c.index for c in written.parsed.cells_of("setup")] == [c.index for c in run.parsed.cells_of("setup")]
    capsys.readouterr()


def _apps(pipeline: Pipeline) -> dict[str, tuple[int, ...]]:
    return {app: node.spec.cells for app, node in pipeline.apps.items()}


# ------------------------------------------------------------ grouping rules


def test_auto_keeps_a_metrics_cell_as_its_block(tmp_path: Path) -> None:
    """kale_iris: a ``pipeline-metrics`` cell stays the ``metrics`` block; the
    split groups the other cells around it (it crashed on the block's app)."""
    path = write(tmp_path / "nb.ipynb", code("import math"), code("a = math.sqrt(4)"), code("b = a + 1"),
                 code("c = math.pi * 2"), code("print(b)", "pipeline-metrics"))
    chosen = split_notebook(read_nb(path), "auto", path)
    pipeline = nbpipe.load_pipeline(path, "auto")
    assert pipeline.apps["metrics"].spec.cells == (4,)
    assert sorted(c for g in chosen.groups for c in g.cells) == [1, 2, 3]
    assert "metrics" not in {g.app for g in chosen.groups}


def test_auto_makes_an_import_cell_with_matplotlib_inline_setup(tmp_path: Path) -> None:
    """bootstrap_ci, decay_fit, wine_clusters...: ``%matplotlib inline`` above the
    imports kept the cell out of ``setup``, and every cell read the modules from
    it, so the whole notebook was one chain; the two branches now run apart."""
    path = write(tmp_path / "nb.ipynb", code("%matplotlib inline\n%load_ext autoreload\n%autoreload 2\n"
                                             "import numpy as np"),
                 code("a = [np.sqrt(i) for i in range(3)]"), code("b = [np.ones(i) for i in range(2)]"),
                 code("print(a)"), code("print(b)"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert [i for i, _ in chosen.setup] == [0]
    assert sorted(g.cells for g in chosen.groups) == [(1, 3), (2, 4)]


def test_auto_keeps_a_cell_with_another_magic_out_of_setup(tmp_path: Path) -> None:
    """A magic that changes the process (``%env``, ``%cd``, ...) is not run again in every app."""
    path = write(tmp_path / "nb.ipynb", code("%env FLAG=on\nimport os"), code("print(os.environ['FLAG'])"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert chosen.setup == ()


def test_auto_sees_a_generator_function_defined_in_a_tagged_setup_cell(tmp_path: Path) -> None:
    """A generator made from a function of a cell the user tagged ``setup`` (or Kale's
    ``functions``) cannot ship either: its reader stays in the app that makes it."""
    path = write(tmp_path / "nb.ipynb", code("def gen():\n    yield from range(5)", "functions"),
                 code("g = gen()\nn = [i for i in range(3)]"), code("rest = [x * 2 for x in g]"),
                 code("m = [i * 2 for i in n]"))
    chosen = split_notebook(read_nb(path), "auto", path)
    maker = next(g for g in chosen.groups if 1 in g.cells)
    assert 2 in maker.cells, chosen.explain()
    assert any("g is a generator (gen() yields)" in why for why in maker.why)


def test_auto_weighs_a_call_of_a_setup_function_alike_tagged_or_not(tmp_path: Path) -> None:
    """decay_fit: a cell calling ``model()`` counted as heavy when the cell defining
    it was untagged but light when it was tagged ``setup``; the tag no longer matters."""
    cells = [code("import math"), code("def model(t):\n    return math.exp(-t)"), code("y = model(1.0)"),
             code("z = [model(i) for i in range(3)]"), code("print(model(y))")]
    untagged = split_notebook(read_nb(write(tmp_path / "a.ipynb", *cells)), "auto")
    cells[1].metadata["tags"] = ["setup"]
    tagged = split_notebook(read_nb(write(tmp_path / "b.ipynb", *cells)), "auto")
    assert [i for i, _ in untagged.setup] == [0, 1] and [i for i, _ in tagged.setup] == [0]
    assert [g.cells for g in tagged.groups] == [g.cells for g in untagged.groups]


def test_auto_runs_the_independent_branches_of_a_corpus_notebook_apart(tmp_path: Path) -> None:
    """wine_clusters, untagged: the PCA (cell 3) and the k-means (cell 4) both read the
    scaled data and nothing of each other, so they are apps that can run at once."""
    path = place(strip_tags(read("wine_clusters")), tmp_path, "wine_clusters")
    pipeline = nbpipe.load_pipeline(path, "auto")
    app_of = {cell: app for app, node in pipeline.apps.items() for cell in node.spec.cells}
    pca, km = app_of[3], app_of[4]
    assert pca != km
    assert not nx.has_path(pipeline.graph, pca, km) and not nx.has_path(pipeline.graph, km, pca)


COUNTING_CLASS = "class Particle:\n    count = 0\n    def __init__(self):\n        Particle.count += 1"


def test_auto_keeps_a_class_that_changes_itself_out_of_setup(tmp_path: Path) -> None:
    """particles: ``Particle.count += 1`` in ``__init__``. Run again at the start of
    every app, as ``setup``, the class would count from 0 in each one."""
    path = write(tmp_path / "nb.ipynb", code("import math"), code(COUNTING_CLASS),
                 code("class Plain:\n    unit = 'cm'\n    def scale(self, x):\n        self.x = x * 2"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert [i for i, _ in chosen.setup] == [0, 2]


def test_auto_runs_the_users_of_a_class_that_changes_itself_in_one_app(tmp_path: Path) -> None:
    """Each app gets its own copy of the class, so the cells that make instances and the
    cell that reads the count run where the class is, and print what papermill prints."""
    path = write(tmp_path / "nb.ipynb", code(COUNTING_CLASS), code("a = [Particle() for _ in range(2)]"),
                 code("b = [Particle() for _ in range(3)]"), code("print(Particle.count, len(a), len(b))"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert [g.cells for g in chosen.groups] == [(0, 1, 2, 3)], chosen.explain()
    _assert_auto_gives_papermills_outputs(path, tmp_path)


def test_auto_keeps_a_function_reading_a_later_global_out_of_setup(tmp_path: Path) -> None:
    """``def f(x): return x * scale`` above ``scale = 2``: made ``setup``, the app
    calling it was not given ``scale`` and failed with a NameError."""
    path = write(tmp_path / "nb.ipynb", code("import math"), code("def f(x):\n    return x * scale"),
                 code("scale = 2\nA = [i for i in range(3)]"), code("B = [i + 1 for i in range(3)]"),
                 code("r = [f(i) for i in B]\nprint(r)"), code("print(A)"),
                 code("def g(x):\n    return math.floor(x) + len([x])"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert [i for i, _ in chosen.setup] == [0, 6]
    result = nbpipe.execute(path, split="auto", workers=2)
    assert result.ok, {a: r.error for a, r in result.apps.items() if r.error}
    assert read_nb(result.output).cells[4].outputs[0]["text"] == f"{[(i + 1) * 2 for i in range(3)]}\n"


def test_auto_runs_the_callers_of_a_function_keeping_state_in_one_app(tmp_path: Path) -> None:
    """``def seen(x, memo={})`` remembers across calls; in two apps each copy would
    count its own calls, as a setup cell would start each app's count afresh."""
    path = write(tmp_path / "nb.ipynb", code("def seen(x, memo={}):\n    memo[x] = True\n    return len(memo)"),
                 code("def tally():\n    tally.calls = getattr(tally, 'calls', 0) + 1\n    return tally.calls"),
                 code("a = [seen(i) for i in range(3)]"), code("b = [seen(i) for i in range(10, 12)]"),
                 code("t = [tally() for _ in range(2)]"), code("u = [tally() for _ in range(3)]"),
                 code("print(seen(99), a, b, t, u, tally())"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert chosen.setup == ()
    assert [g.cells for g in chosen.groups] == [tuple(range(7))], chosen.explain()
    _assert_auto_gives_papermills_outputs(path, tmp_path)


def test_auto_runs_a_file_written_and_read_by_two_cells_in_one_app(tmp_path: Path) -> None:
    """Cells that share nothing but a file (``open("out.txt", "w")`` above
    ``open("out.txt")``) became parallel apps, and the reader found no file. Two
    cells that only read one file still run apart."""
    path = write(tmp_path / "nb.ipynb", code("rows = [str(i) for i in range(5)]"),
                 code("with open('out.txt', 'w') as fh:\n    fh.write(','.join(rows))"),
                 code("with open('out.txt') as fh:\n    text = [line for line in fh]\nprint(text)"),
                 code("Path('more.txt').write_text('x')"),
                 code("n = [len(Path('more.txt').read_text()) for _ in 'ab']"),
                 code("a = [c for c in open('data.txt')]"), code("b = [c * 2 for c in open('data.txt')]"))
    nb = read_nb(path)
    nb.cells.insert(0, code("from pathlib import Path"))
    nbformat.write(nb, path)
    (tmp_path / "data.txt").write_text("1\n2\n")
    chosen = split_notebook(read_nb(path), "auto", path)
    app_of = {cell: g.app for g in chosen.groups for cell in g.cells}
    assert app_of[2] == app_of[3] and app_of[4] == app_of[5], chosen.explain()
    assert app_of[6] != app_of[7], chosen.explain()
    result = nbpipe.execute(path, split="auto", workers=2)
    assert result.ok, {a: r.error for a, r in result.apps.items() if r.error}
    assert read_nb(result.output).cells[3].outputs[0]["text"] == f"{[','.join(map(str, range(5)))]}\n"


def test_auto_merges_what_lies_between_two_cells_in_either_direction(tmp_path: Path) -> None:
    """The writer of a file (cell 4) reads, through cell 3, from the app that also holds
    the file's reader (cells 2 and 5, kept together by a generator): merging them must
    take cell 3 along, or the apps wait on each other (a cycle nbpipe refuses)."""
    path = write(tmp_path / "nb.ipynb", code("def gen():\n    yield from range(3)"),
                 code("z = [i for i in range(4)]"), code("g = gen()\nk = 2"),
                 code("m = [k * i + z[i] for i in range(3)]"),
                 code("with open('f.txt', 'w') as fh:\n    fh.write(str([x for x in m]))"),
                 code("r = [x for x in g]\nprint(r, z, open('f.txt').read())"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert main(["check", str(path), "--split", "auto"]) == 0
    assert len({g.app for g in chosen.groups for cell in g.cells if cell in (2, 3, 4, 5)}) == 1, chosen.explain()


def test_auto_merges_a_redefinition_between_two_cells_it_puts_together(tmp_path: Path) -> None:
    """Cells 1 and 3 write one file, so they run in one app; between them cell 2
    redefines the ``f`` both read. The app would need two values of ``f`` (nbpipe
    refuses that): cell 2 joins it, and the app reads ``f`` once, from cell 0."""
    write_f = "with open('f.txt', 'w') as fh:\n    fh.write(str([i for i in f]))"
    path = write(tmp_path / "nb.ipynb", code("f = [6]\nn = [i for i in range(2)]"), code(write_f),
                 code("f = [i for i in range(3)]"), code(write_f), code("print([i * 2 for i in n])"))
    chosen = split_notebook(read_nb(path), "auto", path)
    assert main(["check", str(path), "--split", "auto"]) == 0
    app_of = {cell: g.app for g in chosen.groups for cell in g.cells}
    assert app_of[1] == app_of[2] == app_of[3], chosen.explain()


def _random_cell(r: random.Random) -> str:
    x, y = r.choice("abc"), r.choice("abc")
    return r.choice([f"{x} = [i for i in range(3)]", f"{x} = {y}[:] + [1]", f"print({x}, {y})",
                     f"def f_{x}(v):\n    return v + len({y})", f"{x} = (i for i in range(3))",
                     f"with open('{x}.txt', 'w') as fh:\n    fh.write(str([i for i in {y}]))",
                     f"{x} = [line for line in open('{y}.txt')]", f"{x}.append([i for i in {y}])"])


def test_auto_splits_random_notebooks_into_apps_nbpipe_accepts() -> None:
    """Whatever the merges (unshippable values, shared files, chains), the apps chosen
    form no cycle and no app needs two values of a name, when one app per cell does not."""
    tried = 0
    for seed in range(300):
        r = random.Random(seed)
        nb = notebook(code("a, b, c = [1], [2], [3]"),
                      *[code(_random_cell(r)) for _ in range(r.randrange(3, 10))])
        try:
            build_pipeline(parse_notebook(split_notebook(nb, "cells").nb))
        except NbpipeError:
            continue
        chosen = split_notebook(nb, "auto")
        build_pipeline(parse_notebook(chosen.nb))
        tried += 1
    assert tried > 100


def _assert_auto_gives_papermills_outputs(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "nb.out.ipynb"
    assert run_papermill(path, out) is None
    result = nbpipe.execute(path, split="auto", workers=2)
    expected, merged = read_nb(out), read_nb(result.output)
    assert [normalise_outputs(c.outputs) for c in merged.cells] \
        == [normalise_outputs(c.outputs) for c in expected.cells]
