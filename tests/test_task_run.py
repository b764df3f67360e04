"""The in-process engine's run of a task notebook (``ipython.execute``) gives what
``papermill.execute_notebook`` gives with the same engine: the same cells, outputs,
execution counts, papermill metadata and errors, without papermill's per-notebook
schema checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
from nbbuild import code, notebook

import nbpipe
from nbpipe.compare import normalise_outputs

#: Run in a process of its own: both ways, one after another, in one shell (as the
#: in-process executor runs a second task), each result as JSON on a line.
SCRIPT = """
import json, sys
import papermill
from papermill.engines import papermill_engines
from nbpipe.execution.ipython import IPythonEngine, execute

papermill_engines.register("nbpipe", IPythonEngine)
source, out_dir = sys.argv[1], sys.argv[2]
for way in ("papermill", "nbpipe"):
    output = f"{out_dir}/{way}.ipynb"
    try:
        if way == "papermill":
            papermill.execute_notebook(source, output, parameters={"n": 3}, engine_name="nbpipe",
                                       kernel_name="python3", progress_bar=False, cwd=out_dir)
        else:
            execute(source, output, parameters={"n": 3}, cwd=out_dir, kernel_name="python3")
        error = None
    except papermill.PapermillExecutionError as exc:
        error = [exc.ename, exc.evalue, exc.exec_count, exc.cell_index]
    print(json.dumps({"way": way, "error": error}))
"""

CELLS = [
    code("n = 1", "parameters"),
    code("import warnings\nfrom IPython.display import HTML, display\nprint('n is', n)\n"
         "warnings.warn('careful')\ndisplay(HTML('<b>bold</b>'))\nn * 2"),
    code("%%bash\necho from bash"),
    code("listing = !echo one two\nlisting"),
]


def _both(tmp_path: Path, cells: list) -> tuple[dict, dict]:
    source = tmp_path / "task.ipynb"
    nbformat.write(notebook(*cells), source)
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(source), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reports = {r["way"]: r for r in map(json.loads, done.stdout.splitlines()[-2:])}
    runs = {way: {"report": reports[way], "nb": nbformat.read(tmp_path / f"{way}.ipynb", as_version=4)}
            for way in ("papermill", "nbpipe")}
    return runs["papermill"], runs["nbpipe"]


def _shape(nb: nbformat.NotebookNode) -> list[tuple]:
    return [(c.cell_type, c.source, c.metadata.get("tags"), c.get("execution_count"),
             normalise_outputs(c.get("outputs", [])),
             sorted(c.metadata.get("papermill", {})), c.metadata.get("papermill", {}).get("status"),
             c.metadata.get("papermill", {}).get("exception"))
            for c in nb.cells]


def test_a_task_runs_as_papermill_runs_it_with_the_engine(tmp_path: Path) -> None:
    papermill, ours = _both(tmp_path, CELLS)
    assert papermill["report"]["error"] is None and ours["report"]["error"] is None
    assert _shape(ours["nb"]) == _shape(papermill["nb"])
    # papermill's injected-parameters cell, after the parameters cell, with the given value
    assert ours["nb"].cells[1].metadata.tags == ["injected-parameters"] and "n = 3" in ours["nb"].cells[1].source
    assert "n is 3" in json.dumps(ours["nb"].cells[2].outputs)
    meta, theirs = ours["nb"].metadata.papermill, papermill["nb"].metadata.papermill
    assert sorted(meta) == sorted(theirs)
    assert meta["parameters"] == theirs["parameters"] == {"n": 3}
    assert meta["input_path"] == theirs["input_path"]
    assert all(c.metadata.papermill["duration"] is not None for c in ours["nb"].cells if c.cell_type == "code")
    nbformat.validate(ours["nb"])  # a valid notebook, though its schema was not checked while written


def test_a_failing_cell_fails_the_task_as_papermill_fails_it(tmp_path: Path) -> None:
    cells = [*CELLS[:2], code("1 / 0"), code("print('never')")]
    papermill, ours = _both(tmp_path, cells)
    assert ours["report"]["error"] == papermill["report"]["error"]
    assert ours["report"]["error"][0] == "ZeroDivisionError"
    assert _shape(ours["nb"]) == _shape(papermill["nb"])  # papermill's error cells included
    assert ours["nb"].metadata.papermill["exception"] is True


def test_the_kernel_numbering_step_is_compiled_for_kernels_and_skipped_by_the_engine(tmp_path: Path) -> None:
    path = tmp_path / "nb.ipynb"
    nbformat.write(notebook(code("x = 1", "app:a"), code("print(x + 1)", "app:b")), path)
    run = nbpipe.execute(path, output=tmp_path / "out.ipynb", keep_run_dir=True)
    assert run.ok
    executed = nbformat.read(run.run_dir / "tasks" / "b.out.ipynb", as_version=4)
    step = executed.cells[1]
    assert "number_cells" in step.source and step.metadata.nbpipe == {"kernel_only": True}
    assert step.metadata.papermill["start_time"] is None  # not run: in this engine it would do nothing
    assert "2" in json.dumps(executed.cells[-2].outputs)
    assert not list((run.run_dir / "tasks").glob("*.spec.json"))  # forked tasks get their spec in the request
