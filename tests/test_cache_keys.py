"""Stale hits: a second run must not restore an app whose outputs would differ if it ran.

Each test runs a notebook twice with the cache on, changing one thing between the
runs that the app's outputs depend on, and checks the app ran again (or shows what
it would show if it had).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import nbpipe
from nbbuild import code, text_of, write

pytestmark = pytest.mark.cache


def _cell_text(run: nbpipe.RunResult, cell_id: str) -> str:
    found = [c for c in run.notebook.cells if c.get("id") == cell_id]
    assert len(found) == 1
    return text_of(found[0])


def _tagged(source: str, cell_id: str, *tags: str):  # type: ignore[no-untyped-def]
    cell = code(source, *tags)
    cell["id"] = cell_id
    return cell


def test_map_items_that_read_the_parameter_they_map_over_run_again_when_it_grows(tmp_path: Path) -> None:
    """Items keyed by their element alone are stale when they also read the whole iterable."""
    nb = write(tmp_path / "nb.ipynb",
               _tagged("xs = [1, 2]", "params", "parameters"),
               _tagged("print(x, 'of', len(xs))", "items", "app:m", "map:x=xs"))
    first = nbpipe.execute(nb, parameters={"xs": [1, 2]})
    assert first.ok and "1 of 2" in _cell_text(first, "items")
    second = nbpipe.execute(nb, parameters={"xs": [1, 2, 3]})
    assert second.ok
    text = _cell_text(second, "items")
    assert "1 of 3" in text and "1 of 2" not in text, text


def test_a_parameter_read_by_a_cell_magic_line_enters_the_key(tmp_path: Path) -> None:
    """IPython expands ``$n`` in a cell magic's line (``%%bash -s "$n"``)."""
    nb = write(tmp_path / "nb.ipynb",
               _tagged("n = 1", "params", "parameters"),
               _tagged('%%bash -s "$n"\necho "n is $1"', "shell", "app:a"))
    first = nbpipe.execute(nb, parameters={"n": 1})
    assert first.ok and "n is 1" in _cell_text(first, "shell")
    second = nbpipe.execute(nb, parameters={"n": 7})
    assert second.ok and second.apps["a"].status.value == "completed"
    assert "n is 7" in _cell_text(second, "shell")


def test_readers_of_a_cache_off_map_app_run_again_when_its_items_make_new_values(tmp_path: Path) -> None:
    """A ``cache:off`` map app runs every time; what it hands down must be what its items made."""
    (tmp_path / "scale.txt").write_text("10")
    nb = write(tmp_path / "nb.ipynb",
               _tagged("xs = [1, 2]", "params", "parameters"),
               _tagged("y = x * int(open('scale.txt').read())", "items", "app:m", "map:x=xs", "cache:off"),
               _tagged("print('total', sum(y))", "total", "app:total"))
    first = nbpipe.execute(nb)
    assert first.ok and "total 30" in _cell_text(first, "total")
    (tmp_path / "scale.txt").write_text("100")
    second = nbpipe.execute(nb)
    assert second.ok and second.apps["m"].status.value == "completed"
    assert "total 300" in _cell_text(second, "total")


def test_a_parameter_read_by_carried_state_enters_the_key_of_the_apps_that_replay_it(tmp_path: Path) -> None:
    """``os.environ[...] = str(n)`` in one app is replayed at the start of the apps below it."""
    nb = write(tmp_path / "nb.ipynb",
               _tagged("n = 1", "params", "parameters"),
               _tagged("import os\nos.environ['SCALE'] = str(n)", "env", "app:env"),
               _tagged("import os\nprint('scale', os.environ['SCALE'])", "show", "app:show"))
    first = nbpipe.execute(nb, parameters={"n": 1})
    assert first.ok and "scale 1" in _cell_text(first, "show")
    second = nbpipe.execute(nb, parameters={"n": 5})
    assert second.ok and second.apps["show"].status.value == "completed"
    assert "scale 5" in _cell_text(second, "show")


def test_a_module_of_the_notebook_directory_that_an_imported_one_imports_enters_the_key(tmp_path: Path) -> None:
    (tmp_path / "consts.py").write_text("K = 1\n")
    (tmp_path / "helpers.py").write_text("from consts import K\n\n\ndef k():\n    return K\n")
    nb = write(tmp_path / "nb.ipynb", _tagged("import helpers\nprint('k', helpers.k())", "use", "app:use"))
    assert "k 1" in _cell_text(nbpipe.execute(nb), "use")
    (tmp_path / "consts.py").write_text("K = 2\n")
    second = nbpipe.execute(nb)
    assert second.ok and second.apps["use"].status.value == "completed"
    assert "k 2" in _cell_text(second, "use")


def test_the_files_under_a_directory_in_inputs_enter_the_key(tmp_path: Path) -> None:
    (tmp_path / "data" / "run1").mkdir(parents=True)
    (tmp_path / "data" / "run1" / "v.txt").write_text("1")
    nb = write(tmp_path / "nb.ipynb",
               _tagged("print('v', open('data/run1/v.txt').read())", "read", "app:read", "inputs:data"))
    first = nbpipe.execute(nb)
    assert first.ok and "v 1" in _cell_text(first, "read")
    (tmp_path / "data" / "run1" / "v.txt").write_text("2")
    second = nbpipe.execute(nb)
    assert second.ok and second.apps["read"].status.value == "completed"
    assert "v 2" in _cell_text(second, "read")
    third = nbpipe.execute(nb)
    assert third.apps["read"].status.value == "cached", "an unchanged directory is a hit"


@pytest.mark.parametrize("setup, use", [
    ("def k():\n    import helpers\n    return helpers.K", "print('k', k())"),
    pytest.param("import importlib", "print('k', importlib.import_module('helpers').K)", marks=pytest.mark.slow),
    pytest.param("", "print('k', __import__('helpers').K)", marks=pytest.mark.slow),
    pytest.param("%load_ext helpers", "print('k', K)", marks=pytest.mark.slow),
], ids=["import-in-a-function", "import_module", "__import__", "load_ext"])
def test_a_module_of_the_notebook_directory_loaded_other_than_by_a_top_level_import_enters_the_key(
        tmp_path: Path, setup: str, use: str) -> None:
    module = "K = {k}\n\n\ndef load_ipython_extension(ip):\n    ip.push({{'K': K}})\n"
    (tmp_path / "helpers.py").write_text(module.format(k=1))
    cells = [_tagged(setup, "setup", "setup")] if setup else []
    nb = write(tmp_path / "nb.ipynb", *cells, _tagged(use, "use", "app:use"))
    first = nbpipe.execute(nb)
    assert first.ok and "k 1" in _cell_text(first, "use")
    (tmp_path / "helpers.py").write_text(module.format(k=2))
    second = nbpipe.execute(nb)
    assert second.ok and second.apps["use"].status.value == "completed"
    assert "k 2" in _cell_text(second, "use")


def test_an_inputs_pattern_with_double_star_hashes_the_files_it_matches_at_any_depth(tmp_path: Path) -> None:
    for folder in ("data/a", "data/a/b"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "v.txt").write_text("1")
    nb = write(tmp_path / "nb.ipynb",
               _tagged("print('v', open('data/a/b/v.txt').read())", "read", "app:read", "inputs:data/**/*.txt"))
    first = nbpipe.execute(nb)
    assert first.ok and "v 1" in _cell_text(first, "read")
    (tmp_path / "data" / "a" / "b" / "v.txt").write_text("2")
    second = nbpipe.execute(nb)
    assert second.ok and second.apps["read"].status.value == "completed"
    assert "v 2" in _cell_text(second, "read")


# -- changes the key already saw: guards ------------------------------------------


@pytest.mark.slow
def test_an_edited_parameters_cell_default_re_runs_its_readers(tmp_path: Path) -> None:
    def notebook(n: int) -> Path:
        return write(tmp_path / "nb.ipynb", _tagged(f"n = {n}", "params", "parameters"),
                     _tagged("print('n', n)", "show", "app:show"))
    assert "n 1" in _cell_text(nbpipe.execute(notebook(1)), "show")
    assert "n 2" in _cell_text(nbpipe.execute(notebook(2)), "show")


@pytest.mark.slow
def test_a_seed_parameter_reaches_the_app_that_draws_from_the_generator(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", _tagged("s = 1", "params", "parameters"),
               _tagged("import random\nrandom.seed(s)", "seed", "app:seed"),
               _tagged("import random\nprint('r', random.random())", "draw", "app:draw"))
    first = _cell_text(nbpipe.execute(nb, parameters={"s": 1}), "draw")
    second = nbpipe.execute(nb, parameters={"s": 2})
    assert second.apps["draw"].status.value == "completed" and _cell_text(second, "draw") != first


@pytest.mark.slow
def test_map_items_reading_another_name_of_the_iterable_s_producer_run_again_when_it_changes(
        tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", _tagged("k = 1", "params", "parameters"),
               _tagged("xs = [1, 2]\nscale = k * 10", "make", "app:make"),
               _tagged("print('v', x * scale)", "items", "app:m", "map:x=xs"))
    assert "v 10" in _cell_text(nbpipe.execute(nb, parameters={"k": 1}), "items")
    assert "v 30" in _cell_text(nbpipe.execute(nb, parameters={"k": 3}), "items")


@pytest.mark.slow
def test_readers_of_a_cache_off_app_run_again_when_it_ships_a_new_value(tmp_path: Path) -> None:
    (tmp_path / "v.txt").write_text("1")
    nb = write(tmp_path / "nb.ipynb", _tagged("v = open('v.txt').read()", "load", "app:load", "cache:off"),
               _tagged("print('v', v)", "show", "app:show"))
    assert "v 1" in _cell_text(nbpipe.execute(nb), "show")
    (tmp_path / "v.txt").write_text("2")
    assert "v 2" in _cell_text(nbpipe.execute(nb), "show")


@pytest.mark.slow
def test_a_file_edge_carries_a_change_and_an_old_result_restores_the_old_file(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", _tagged("n = 1", "params", "parameters"),
               _tagged("open('o.txt', 'w').write(str(n))", "make", "app:make", "outputs:o.txt"),
               _tagged("print('o', open('o.txt').read())", "read", "app:read", "inputs:o.txt"))
    assert "o 1" in _cell_text(nbpipe.execute(nb, parameters={"n": 1}), "read")
    assert "o 2" in _cell_text(nbpipe.execute(nb, parameters={"n": 2}), "read")
    again = nbpipe.execute(nb, parameters={"n": 1})
    assert {r.status.value for r in again.apps.values()} == {"cached"}
    assert "o 1" in _cell_text(again, "read") and (tmp_path / "o.txt").read_text() == "1"


@pytest.mark.slow
def test_a_new_app_reading_a_name_a_cached_app_did_not_ship_gets_it(tmp_path: Path) -> None:
    make = _tagged("x = 1\ny = 2", "make", "app:make")
    nb = write(tmp_path / "nb.ipynb", make, _tagged("print('x', x)", "x", "app:x"))
    assert nbpipe.execute(nb).ok
    write(nb, make, _tagged("print('x', x)", "x", "app:x"), _tagged("print('y', y)", "y", "app:y"))
    second = nbpipe.execute(nb)
    assert second.ok and "y 2" in _cell_text(second, "y")


@pytest.mark.slow
def test_a_mapping_parameter_given_in_another_key_order_re_runs_its_readers(tmp_path: Path) -> None:
    """Python shows a dict in insertion order, so ``{"b": 2, "a": 1}`` prints unlike ``{"a": 1, "b": 2}``."""
    nb = write(tmp_path / "nb.ipynb", _tagged("cfg = {}", "params", "parameters"),
               _tagged("print('cfg', list(cfg))", "show", "app:show"))
    first = nbpipe.execute(nb, parameters={"cfg": {"a": 1, "b": 2}})
    assert "cfg ['a', 'b']" in _cell_text(first, "show")
    second = nbpipe.execute(nb, parameters={"cfg": {"b": 2, "a": 1}})
    assert "cfg ['b', 'a']" in _cell_text(second, "show")


@pytest.mark.slow
def test_a_reader_re_wired_to_an_app_that_changes_its_value_unpredicted_follows_that_app(
        tmp_path: Path) -> None:
    def notebook(k: int) -> Path:
        return write(tmp_path / "nb.ipynb", _tagged("def grow(v, k):\n    v.extend(range(k))", "setup", "setup"),
                     _tagged("x = [0]", "make", "app:make"),
                     _tagged(f"grow(x, {k})", "grow", "app:grow"),
                     _tagged("print('len', len(x))", "show", "app:show"))
    first = nbpipe.execute(notebook(1))
    assert first.apps["show"].reruns and "len 2" in _cell_text(first, "show")
    assert "len 4" in _cell_text(nbpipe.execute(notebook(3)), "show")
    again = nbpipe.execute(notebook(3))
    assert again.apps["show"].status.value == "cached" and "len 4" in _cell_text(again, "show")


def test_a_parameter_read_by_a_function_of_the_parameters_cell_enters_the_key_of_its_callers(
        tmp_path: Path) -> None:
    """papermill injects ``factor = 3`` after the parameters cell; ``scale`` reads it when called."""
    nb = write(tmp_path / "nb.ipynb",
               _tagged("factor = 2\n\n\ndef scale(x):\n    return x * factor", "params", "parameters"),
               _tagged("print('scaled', scale(1))", "use", "app:use"))
    first = nbpipe.execute(nb, parameters={"factor": 2})
    assert first.ok and "scaled 2" in _cell_text(first, "use")
    second = nbpipe.execute(nb, parameters={"factor": 3})
    assert second.ok and second.apps["use"].status.value == "completed"
    assert "scaled 3" in _cell_text(second, "use")
