"""Shared helpers for the test suites.

Notebooks are built in memory with ``nbformat.v4`` (:func:`code`, :func:`md`,
:func:`notebook`). :func:`run_both` (the ``run_both`` fixture) runs one
notebook twice, with plain papermill top to bottom and with ``nbpipe.execute``,
in two separate directories, and returns both executed notebooks.
:func:`normalise_outputs` reduces a cell's outputs to what the fidelity
guarantee (SPEC §3) promises is equal: timings, memory addresses and kernel
temp-file names are masked, consecutive stream outputs of one name are
joined, errors are compared by ``ename`` and ``evalue`` only, and output
``metadata``/``execution_count`` are dropped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbbuild
import nbformat
import pytest
from nbbuild import code, md  # noqa: F401  (the fidelity suite builds cells with these)
from nbformat import v4

import nbpipe
from nbpipe.api import ENGINES
from nbpipe.compare import normalise_outputs as _normalise_outputs


def _children_get_the_default_stop_signals() -> None:
    """A suite started in the background (``cmd &`` in a script, ``nohup``) inherits
    SIGINT and SIGHUP ignored, and an ignored signal stays ignored in every process
    it starts: the ``nbpipe`` the signal tests stop would then rightly ignore them.
    A handler that does nothing keeps this process as it was, and every child
    starts with the default disposition (a handler does not survive ``exec``)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: None)


_children_get_the_default_stop_signals()

KERNEL = "python3"
#: markdown cells nbpipe may add to a merged notebook when an app failed
ERROR_TAG = "nbpipe-error"
INJECTED_TAG = "injected-parameters"


# --------------------------------------------------------------------- building


def raw(source: str) -> Any:
    return v4.new_raw_cell(source)


def notebook(*cells: Any) -> Any:
    """A valid nbformat 4.5 notebook for the ``python3`` kernel.

    Cell ids are derived from position and content, so the same notebook built
    twice is the same file (and its papermill run can be reused).
    """
    nb = nbbuild.notebook(*cells)
    for i, cell in enumerate(nb.cells):
        digest = hashlib.sha1(json.dumps([cell.cell_type, cell.source, cell.metadata],
                                         sort_keys=True).encode()).hexdigest()
        cell.id = f"c{i}-{digest[:8]}"
    nbformat.validate(nb)
    return nb


# --------------------------------------------------------------------- running


@dataclass
class Runs:
    """One notebook run by papermill and by nbpipe."""

    source: Any  # the notebook as written
    papermill: Any  # papermill's executed notebook
    merged: Any  # nbpipe's merged notebook
    result: Any  # nbpipe.RunResult
    papermill_error: Exception | None
    parameters: dict[str, Any] | None

    def code_ids(self) -> list[str]:
        return [c.id for c in self.source.cells if c.cell_type == "code"]

    def ids_tagged(self, tag: str) -> list[str]:
        return [c.id for c in self.source.cells if tag in c.metadata.get("tags", [])]

    def pm(self, cell_id: str) -> Any:
        return _by_id(self.papermill, cell_id)

    def nbp(self, cell_id: str) -> Any:
        return _by_id(self.merged, cell_id)

    def source_index(self, cell_id: str) -> int:
        return next(i for i, c in enumerate(self.source.cells) if c.id == cell_id)


def _by_id(nb: Any, cell_id: str) -> Any:
    found = [c for c in nb.cells if c.get("id") == cell_id]
    assert len(found) == 1, f"{len(found)} cells with id {cell_id!r}"
    return found[0]


def run_papermill(src: Path, out: Path, parameters: dict[str, Any] | None = None) -> Exception | None:
    """Run ``src`` top to bottom with papermill; return the execution error, if any."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    try:
        papermill.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=KERNEL,
                                   progress_bar=False, cwd=str(src.parent))
    except PapermillExecutionError as exc:
        return exc
    return None


_PAPERMILL_RUNS: dict[str, tuple[str, Exception | None]] = {}


def run_both(tmp_path: Path, nb: Any, engine: str, *, parameters: dict[str, Any] | None = None,
             workers: int = 2, files: dict[str, str] | None = None) -> Runs:
    """Write ``nb`` into two fresh directories; run one with papermill, one with nbpipe.

    ``files`` (name -> text) are written beside each copy first.
    """
    sides = {}
    for side in ("papermill", "nbpipe"):
        d = tmp_path / side
        d.mkdir()
        for name, text in (files or {}).items():
            (d / name).write_text(text)
        nbformat.write(nb, d / "nb.ipynb")
        sides[side] = d / "nb.ipynb"
    pm_out = sides["papermill"].with_name("nb.out.ipynb")
    # papermill's side does not depend on the engine: run it once per notebook.
    key = json.dumps([nbformat.writes(nb), parameters, files], sort_keys=True, default=repr)
    if key not in _PAPERMILL_RUNS:
        error = run_papermill(sides["papermill"], pm_out, parameters)
        _PAPERMILL_RUNS[key] = (pm_out.read_text(), error)
    text, error = _PAPERMILL_RUNS[key]
    pm_out.write_text(text)
    merged_path = sides["nbpipe"].with_name("nb.merged.ipynb")
    result = nbpipe.execute(sides["nbpipe"], output=merged_path, engine=engine,
                            parameters=parameters, workers=workers)
    merged = nbformat.read(merged_path, as_version=4)
    return Runs(nbformat.read(sides["papermill"], as_version=4), nbformat.read(pm_out, as_version=4),
                merged, result, error, parameters)


#: Every engine, the default first; the others run with ``-m slow`` (the fidelity suite
#: overrides ``engine`` to run on all of them by default).
ENGINE_PARAMS = [engine if engine == ENGINES[0] else pytest.param(engine, marks=pytest.mark.slow)
                 for engine in ENGINES]


@pytest.fixture(autouse=True)
def _cache_off_unless_asked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that runs a notebook twice tests the engine both times, not the cache:
    the cache is off (``NBPIPE_CACHE=off``, subprocesses too) unless the test is marked ``cache``."""
    if request.node.get_closest_marker("cache") is None:
        monkeypatch.setenv("NBPIPE_CACHE", "off")
    else:
        monkeypatch.delenv("NBPIPE_CACHE", raising=False)


@pytest.fixture(params=ENGINE_PARAMS)
def engine(request: pytest.FixtureRequest) -> str:
    """Every execution engine nbpipe offers; the suites must pass unchanged on each."""
    return str(request.param)


@pytest.fixture
def both(tmp_path: Path, engine: str) -> Any:
    """``both(nb, parameters=..., files=...)``: :func:`run_both` bound to this test's dir and engine."""

    def run(nb: Any, **kwargs: Any) -> Runs:
        return run_both(tmp_path, nb, engine, **kwargs)

    return run


@pytest.fixture(scope="session")
def matplotlib_ready() -> None:
    """Build matplotlib's font cache before any kernel imports matplotlib.

    A first import prints "Matplotlib is building the font cache" to stderr,
    which would show in whichever run came first and make the runs differ.
    """
    pytest.importorskip("matplotlib")
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import matplotlib.pyplot"], check=True,
                   capture_output=True)


# --------------------------------------------------------------------- normalising

#: Whether image bytes are compared too; matplotlib's PNG output was checked to
#: be byte-for-byte deterministic for the same figure in a fresh kernel.
COMPARE_IMAGE_BYTES = True


def normalise_outputs(outputs: list[Any], *, image_bytes: bool = COMPARE_IMAGE_BYTES) -> list[dict[str, Any]]:
    """The part of a cell's outputs that the fidelity guarantee keeps equal (:mod:`nbpipe.compare`)."""
    return _normalise_outputs(outputs, image_bytes=image_bytes)


def _show(outputs: list[dict[str, Any]]) -> str:
    def short(o: dict[str, Any]) -> dict[str, Any]:
        o = copy.deepcopy(o)
        for mime, value in o.get("data", {}).items():
            if mime.startswith("image/") and isinstance(value, str) and len(value) > 60:
                o["data"][mime] = f"<{len(value)} chars, sha {hash(value) & 0xffffffff:08x}>"
        return o

    return json.dumps([short(o) for o in outputs], indent=1, ensure_ascii=False)


# --------------------------------------------------------------------- asserting


def assert_same_outputs(runs: Runs, ids: list[str] | None = None, *, counts: bool = True) -> int:
    """Assert each cell in ``ids`` (default: every code cell) has the same outputs in both.

    With ``counts``, the cells' execution counts must be equal too (true when
    no cell was skipped and no app failed). Returns how many cells were compared.
    """
    ids = runs.code_ids() if ids is None else ids
    assert ids, "nothing to compare"
    problems = []
    for cell_id in ids:
        pm, nbp = runs.pm(cell_id), runs.nbp(cell_id)
        a, b = normalise_outputs(pm.outputs), normalise_outputs(nbp.outputs)
        where = f"cell {runs.source_index(cell_id)} (id {cell_id}):\n{runs.nbp(cell_id).source}\n"
        if a != b:
            problems.append(f"{where}papermill: {_show(a)}\nnbpipe:    {_show(b)}\n"
                            f"nbpipe metadata: {nbp.metadata.get('nbpipe')}")
        elif counts and pm.execution_count != nbp.execution_count:
            problems.append(f"{where}execution_count: papermill {pm.execution_count}, "
                            f"nbpipe {nbp.execution_count}")
    assert not problems, "outputs differ\n\n" + "\n\n".join(problems)
    return len(ids)


def assert_well_formed(runs: Runs, *, failed: bool = False) -> None:
    """The merged notebook is valid, keeps every source cell in order under its id,
    adds only the cells SPEC §6 allows, and numbers executed cells in increasing order."""
    merged, source = runs.merged, runs.source
    nbformat.validate(merged)
    ids = [c.get("id") for c in merged.cells]
    assert all(ids) and len(ids) == len(set(ids)), f"cell ids not unique: {ids}"

    source_ids = [c.id for c in source.cells]
    assert [i for i in ids if i in set(source_ids)] == source_ids, "source cells missing or reordered"
    for cell in source.cells:
        got = runs.nbp(cell.id)
        assert (got.cell_type, got.source) == (cell.cell_type, cell.source), f"cell {cell.id} changed"
        assert [t for t in got.metadata.get("tags", [])] == list(cell.metadata.get("tags", []))

    statuses = {a: r.to_dict() for a, r in runs.result.apps.items()}
    extra = [c for c in merged.cells if c.id not in set(source_ids)]
    injected = [c for c in extra if INJECTED_TAG in c.metadata.get("tags", [])]
    banners = [c for c in extra if ERROR_TAG in c.metadata.get("tags", [])]
    assert len(injected) == (1 if runs.parameters else 0), "injected-parameters cell"
    assert all(c.cell_type == "markdown" for c in banners)
    assert bool(banners) == failed, f"error banner only when an app failed: {statuses}"
    assert len(extra) == len(injected) + len(banners), f"unexpected generated cells: {extra}"

    counts = [c.execution_count for c in merged.cells
              if c.cell_type == "code" and c.execution_count is not None]
    # papermill's numbering: skipped and unreached cells leave their numbers unused
    assert counts == sorted(set(counts)) and all(n >= 1 for n in counts), f"execution counts: {counts}"
    for cell in merged.cells:
        if cell.cell_type != "code":
            continue
        results = [o for o in cell.outputs if o.output_type == "execute_result"]
        assert all(o.execution_count == cell.execution_count for o in results)
        if not failed and "skip" not in cell.metadata.get("tags", []) and cell.source.strip():
            assert cell.execution_count is not None, f"cell {cell.id} did not run:\n{cell.source}"
    assert runs.result.ok is (not failed), statuses
