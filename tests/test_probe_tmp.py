from __future__ import annotations
from pathlib import Path
import pytest
import nbpipe
from nbbuild import code, text_of, write
pytestmark = pytest.mark.cache

def _t(source, cid, *tags):
    c = code(source, *tags); c["id"] = cid; return c

def _text(run, cid):
    return text_of(next(c for c in run.notebook.cells if c.get("id") == cid))

def test_param_default_edit(tmp_path: Path) -> None:
    def nbw(n):
        return write(tmp_path / "nb.ipynb", _t(f"n = {n}", "p", "parameters"), _t("print('n', n)", "a", "app:a"))
    assert "n 1" in _text(nbpipe.execute(nbw(1)), "a")
    assert "n 2" in _text(nbpipe.execute(nbw(2)), "a")

def test_metric_added(tmp_path: Path) -> None:
    cells = [_t("x = 1\ny = 2", "a", "app:a")]
    nb = write(tmp_path / "nb.ipynb", *cells, _t("x", "m", "metrics"))
    r1 = nbpipe.execute(nb)
    assert r1.ok, r1
    nb = write(tmp_path / "nb.ipynb", *cells, _t("x\ny", "m", "metrics"))
    r2 = nbpipe.execute(nb)
    assert r2.ok
    print(r2.metrics)
    assert "y" in str(r2.metrics)

def test_random_seed_param(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", _t("s = 1", "p", "parameters"),
               _t("import random\nrandom.seed(s)", "a", "app:a"),
               _t("import random\nprint('r', random.random())", "b", "app:b"))
    r1 = nbpipe.execute(nb, parameters={"s": 1})
    r2 = nbpipe.execute(nb, parameters={"s": 2})
    assert _text(r1, "b") != _text(r2, "b")

def test_map_items_read_another_name_of_producer(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", _t("k = 1", "p", "parameters"),
               _t("xs = [1, 2]\nscale = k * 10", "prod", "app:prod"),
               _t("print('v', x * scale)", "items", "app:m", "map:x=xs"))
    assert "v 10" in _text(nbpipe.execute(nb, parameters={"k": 1}), "items")
    assert "v 30" in _text(nbpipe.execute(nb, parameters={"k": 3}), "items")

def test_cache_off_upstream(tmp_path: Path) -> None:
    (tmp_path / "v.txt").write_text("1")
    nb = write(tmp_path / "nb.ipynb", _t("v = open('v.txt').read()", "a", "app:a", "cache:off"),
               _t("print('v', v)", "b", "app:b"))
    assert "v 1" in _text(nbpipe.execute(nb), "b")
    (tmp_path / "v.txt").write_text("2")
    assert "v 2" in _text(nbpipe.execute(nb), "b")

def test_file_edge(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", _t("n = 1", "p", "parameters"),
               _t("open('o.txt', 'w').write(str(n))", "a", "app:a", "outputs:o.txt"),
               _t("print('o', open('o.txt').read())", "b", "app:b", "inputs:o.txt"))
    assert "o 1" in _text(nbpipe.execute(nb, parameters={"n": 1}), "b")
    assert "o 2" in _text(nbpipe.execute(nb, parameters={"n": 2}), "b")
    r = nbpipe.execute(nb, parameters={"n": 1})
    assert "o 1" in _text(r, "b") and (tmp_path / "o.txt").read_text() == "1"
