"""The realistic corpus: every notebook in tests/corpus/ gives papermill's outputs.

Each notebook runs once under papermill (per session) and then under nbpipe
in four tagging modes (``corpustools.MODES``: untagged, ``--split cells`` on
the notebook as stored, the notebook's hand tags, ``--split auto`` on the
stripped notebook) on every engine. Every output of every
code cell must equal papermill's, image bytes included (conftest.py
``normalise_outputs``), and so must its execution count. A cell tagged
``skip`` is never executed by nbpipe, so it is expected to stay empty; it
keeps its place in the numbering, as in papermill's run.

The default run covers one notebook of each style (``DEFAULT_NOTEBOOKS``)
with ``--split cells``, and a few notebooks ``--split auto`` cuts into
several apps (``DEFAULT_AUTO``), on the default engine; the full matrix, every
notebook in every mode on every engine, is ``pytest -m slow tests/test_corpus.py``.
The few cells that differ for a documented reason are listed in
``KNOWN_DIFFERENCES``, and must keep differing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

import nbpipe
from conftest import Runs, assert_same_outputs, normalise_outputs, run_papermill
from corpustools import MODES, corpus_names, place, read, retag, split_of
from nbpipe.api import ENGINES
from nbpipe.errors import NbpipeError
from nbpipe.parse import ROLE_ALIASES
from nbpipe.split import KEPT_ROLES

DEFAULT_ENGINE = "ipython"  # the engine the default suite runs
#: The notebooks the default suite runs with ``--split cells``: one of each style.
DEFAULT_NOTEBOOKS = ("decay_fit", "decorators", "eval_strings", "histogram_styles", "iris_classifier",
                     "iterators", "magics_tour", "random_walk", "record_arrays", "station_cleaning",
                     "views_and_aliases", "warnings_logging", "writefile_module")
#: The notebooks the default suite runs with ``--split auto``: a few it cuts into several apps.
DEFAULT_AUTO = ("decorators", "random_walk", "wine_clusters")
DEFAULT = {"cells": DEFAULT_NOTEBOOKS, "auto": DEFAULT_AUTO}
#: Cells that differ from papermill for a documented reason, by (notebook, mode).
#: Each must still differ: once it matches, the entry goes (the test says so).
KNOWN_DIFFERENCES = {
    # README "Shipping values": an lru_cache's entries live inside the C wrapper,
    # which does not give them out, so another app's cache starts empty.
    ("decorators", "cells"): {"c08": "fib.cache_info() in another app than fib(30)"},
    ("decorators", "hand"): {"c08": "fib.cache_info() in another app than fib(30)"},
}


def _matrix() -> Iterator[Any]:
    for name in corpus_names():
        for engine in ENGINES:
            for mode in MODES:
                default = engine == DEFAULT_ENGINE and name in DEFAULT.get(mode, ())
                marks = () if default else (pytest.mark.slow,)
                yield pytest.param(name, mode, engine, id=f"{name}-{mode}-{engine}", marks=marks)


@pytest.fixture(scope="session")
def papermill_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """``papermill_run(name)``: the corpus notebook executed by papermill, once per session."""
    done: dict[str, Any] = {}

    def run(name: str) -> Any:
        if name not in done:
            src = place(read(name), tmp_path_factory.mktemp(f"papermill-{name}"), name)
            out = src.with_name(f"{name}.out.ipynb")
            error = run_papermill(src, out)
            assert error is None, f"corpus notebook {name} fails under papermill itself: {error}"
            done[name] = nbformat.read(out, as_version=4)
        return done[name]

    return run


def test_corpus_is_well_formed(tmp_path: Path) -> None:
    """At least 25 notebooks, stored without outputs, titled, hand-tagged; the modes split as promised."""
    names = corpus_names()
    assert len(names) >= 25, names
    assert set(DEFAULT_NOTEBOOKS + DEFAULT_AUTO) <= set(names), set(DEFAULT_NOTEBOOKS + DEFAULT_AUTO) - set(names)
    for name in names:
        nb = read(name)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
        hand_apps = {t.split(":", 1)[1] for c in code for t in c.metadata.get("tags", [])
                     if t.startswith(("app:", "block:"))}
        assert len(hand_apps) >= 2, f"{name} has no hand split into apps"
        for mode, apps in (("untagged", [tuple(nb.cells.index(c) for c in code)]), ("cells", _one_per_cell(nb))):
            path = tmp_path / f"{name}.{mode}.ipynb"
            nbformat.write(retag(nb, mode), path)
            got = [app.spec.cells for app in nbpipe.load_pipeline(path, split_of(mode)).apps.values()]
            assert sorted(got) == sorted(apps), (name, mode)
        if name in DEFAULT_AUTO:
            path = place(retag(nb, "auto"), tmp_path / name, name)
            assert len(nbpipe.load_pipeline(path, split_of("auto")).apps) >= 2, f"--split auto runs {name} as one app"


def _one_per_cell(nb: Any) -> list[tuple[int, ...]]:
    """The apps ``--split cells`` makes: each code cell without a kept role alone,
    the ``metrics`` cells together (their block); parameters, setup, skip cells none."""
    roles = {i: next((ROLE_ALIASES[t] for t in c.metadata.get("tags", []) if ROLE_ALIASES.get(t) in KEPT_ROLES), None)
             for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    metrics = tuple(i for i, role in roles.items() if role == "metrics")
    return [(i,) for i, role in roles.items() if role is None] + ([metrics] if metrics else [])


@pytest.mark.parametrize(("name", "mode", "engine"), list(_matrix()))
def test_corpus_matches_papermill(name: str, mode: str, engine: str, tmp_path: Path,
                                  papermill_run: Callable[[str], Any], matplotlib_ready: None) -> None:
    expected = papermill_run(name)
    path = place(retag(read(name), mode), tmp_path, name)
    where = f"{name}.ipynb [{mode}, engine={engine}]"
    try:
        result = nbpipe.execute(path, engine=engine, workers=2, split=split_of(mode))
    except NbpipeError as exc:
        pytest.fail(f"{where}: nbpipe refused the notebook: {exc}")
    runs = Runs(nbformat.read(path, as_version=4), expected, nbformat.read(result.output, as_version=4),
                result, None, None)
    skipped = runs.ids_tagged("skip")
    known = KNOWN_DIFFERENCES.get((name, mode), {})
    compared = [i for i in runs.code_ids() if i not in skipped and i not in known]
    for cell_id, why in known.items():
        assert normalise_outputs(runs.nbp(cell_id).outputs) != normalise_outputs(runs.pm(cell_id).outputs), \
            f"{where}: cell {cell_id} ({why}) now matches papermill: drop it from KNOWN_DIFFERENCES"
    try:
        assert_same_outputs(runs, compared)
        for cell_id in skipped:
            assert not runs.nbp(cell_id).outputs, f"skip cell {cell_id} was executed"
    except AssertionError as exc:
        errors = {a: f"{r.error.get('ename')}: {r.error.get('evalue')}" for a, r in result.apps.items() if r.error}
        not_run = sorted(a for a, r in result.apps.items() if not r.status.ok and not r.error)
        raise AssertionError(f"{where}: differs from papermill; app errors: {errors or 'none'}; "
                             f"apps not run: {not_run or 'none'}\n{exc}") from None

