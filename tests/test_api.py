"""The Python API (``nbpipe.execute``), also from inside a running Jupyter kernel."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import ENGINE_PARAMS
from nbbuild import by_id, code, md, read, text_of, write

import nbpipe


def analysis(path: Path) -> Path:
    return write(path,
                 md("# An analysis"),
                 code("n = 2", "parameters"),
                 code("import math", "setup"),
                 code("xs = list(range(n))\nprint('xs', xs)", "app:load"),
                 code("total = sum(xs)\nprint('total', total)", "app:reduce"),
                 code("root = math.sqrt(n)\nprint('root', root)", "app:other"),
                 code("print(total)", "metrics"))


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_execute_returns_the_merged_notebook_and_per_app_results(tmp_path: Path, engine: str) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    ids = [c.id for c in read(src).cells]
    run = nbpipe.execute(src, parameters={"n": 5}, workers=2, engine=engine)
    assert isinstance(run, nbpipe.RunResult)
    assert run.ok, run.summary()
    assert run.output == tmp_path / "nb.merged.ipynb" and run.output.exists()
    assert set(run.apps) == {"load", "reduce", "other", "metrics"}
    for name, result in run.apps.items():
        assert result.status.value == "completed" and result.attempts == 1, name
        assert result.duration is not None and result.duration >= 0 and result.host
    assert run.apps["reduce"].start_time >= run.apps["load"].end_time  # reduce reads xs from load
    assert run.metrics == {"total": 10}

    merged = run.notebook
    nbformat.validate(merged)
    assert [c.id for c in read(run.output).cells] == [c.id for c in merged.cells]
    assert text_of(by_id(merged, ids[3])) == "xs [0, 1, 2, 3, 4]\n"
    assert text_of(by_id(merged, ids[4])) == "total 10\n"
    assert text_of(by_id(merged, ids[5])).startswith("root 2.236")
    assert by_id(merged, ids[4]).metadata["nbpipe"]["app"] == "reduce"
    injected = merged.cells[ids.index(ids[1]) + 1]
    assert "injected-parameters" in injected.metadata["tags"] and "n = 5" in injected.source
    meta = merged.metadata["nbpipe"]
    assert meta["parameters"] == {"n": 5} and meta["site"] == "local" and meta["status"] == "completed"
    assert meta["version"] == nbpipe.__version__
    assert {e["from"] + "->" + e["to"] for e in meta["graph"]["edges"]} == {"load->reduce",
                                                                           "reduce->metrics"}
    summary = run.summary()
    assert summary["status"] == "completed" and summary["metrics"] == {"total": 10}


def test_execute_without_parameters_writes_no_injected_cell(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    run = nbpipe.execute(src, workers=2, output=tmp_path / "elsewhere" / "m.ipynb")
    assert run.output == tmp_path / "elsewhere" / "m.ipynb" and run.output.exists()
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in run.notebook.cells)
    assert run.metrics == {"total": 1}


def test_load_pipeline_gives_the_graph_without_running(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    pipeline = nbpipe.load_pipeline(src)
    assert pipeline.order[:2] == ("load", "reduce")
    assert not (tmp_path / "nb.merged.ipynb").exists()


def test_execute_from_inside_a_running_jupyter_kernel(tmp_path: Path) -> None:
    """A notebook drives a pipeline interactively: papermill runs a driver notebook
    whose cell calls ``nbpipe.execute`` on another notebook."""
    import papermill

    inner = analysis(tmp_path / "inner.ipynb")
    out = tmp_path / "inner.out.ipynb"
    driver = write(tmp_path / "driver.ipynb", code(
        "import nbpipe\n"
        f"run = nbpipe.execute({str(inner)!r}, parameters={{'n': 4}}, workers=2, output={str(out)!r})\n"
        "assert run.ok, run.summary()\n"
        "assert run.apps['reduce'].status.value == 'completed'\n"
        "assert run.metrics == {'total': 6}, run.metrics\n"
        "print('inner ok', sorted(run.apps))"))
    papermill.execute_notebook(str(driver), str(tmp_path / "driver.out.ipynb"), kernel_name="python3",
                               cwd=str(tmp_path), progress_bar=False)
    ran = read(tmp_path / "driver.out.ipynb")
    streams = [o for o in ran.cells[0].outputs if o.output_type == "stream"]
    assert "".join(o.text for o in streams) == "inner ok ['load', 'metrics', 'other', 'reduce']\n"
    views = [o for o in ran.cells[0].outputs if o.output_type == "display_data"]
    assert len(views) == 1 and 'data-state="completed"' in views[0].data["text/html"]  # the live status view
    merged = read(out)
    assert merged.metadata["nbpipe"]["parameters"] == {"n": 4}
    assert "total 6" in text_of(by_id(merged, read(inner).cells[4].id))


def test_input_files_are_hashed_into_provenance_and_cache_keys(tmp_path: Path) -> None:
    from nbpipe.cache import file_digest

    data = tmp_path / "data.txt"
    data.write_text("1 2 3\n")
    nb = write(tmp_path / "nb.ipynb", code("print(open('data.txt').read().split())", "app:read", "inputs:data.txt"),
               code("x = 1", "app:other"))
    first = nbpipe.execute(nb).notebook.metadata["nbpipe"]
    assert first["provenance"]["inputs"][str(data)] == file_digest(data)
    data.write_text("4 5 6\n")
    second = nbpipe.execute(nb).notebook.metadata["nbpipe"]
    assert second["cache_keys"]["read"] != first["cache_keys"]["read"]  # the file's contents count
    assert second["cache_keys"]["other"] == first["cache_keys"]["other"]


def test_the_lazy_executor_starts_the_site_to_say_how_many_workers_it_has(tmp_path: Path) -> None:
    from nbpipe.api import _LazyExecutor
    from nbpipe.execution.local import LocalExecutor

    lazy = _LazyExecutor(lambda: LocalExecutor(3, engine="kernel"), tmp_path)
    try:
        assert lazy.workers == 3
    finally:
        lazy.shutdown()


@pytest.mark.parametrize("text", ["", '{"cells": [{"cell_type": "code", "sou'])
def test_a_torn_executed_notebook_is_read_as_none_not_a_crash_of_the_merge(tmp_path: Path, text: str) -> None:
    """A task killed while papermill rewrote its notebook (a second Ctrl-C) leaves it empty or cut."""
    from nbpipe.api import _read_executed

    torn = tmp_path / "app.out.ipynb"
    torn.write_text(text)
    assert _read_executed(str(torn)) is None
    whole = tmp_path / "whole.out.ipynb"
    whole.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert _read_executed(str(whole))["nbformat"] == 4
