"""Failures: isolation, retries, timeouts, unshippable values, declared files, unsupported tags."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ENGINE_PARAMS
from nbbuild import by_id, code, md, nbpipe_cli, notebook, read, text_of, write

import nbpipe
from nbpipe.errors import GraphError

@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_a_failing_app_is_isolated(tmp_path: Path, engine: str) -> None:
    src = write(tmp_path / "nb.ipynb",
                md("# Analysis"),
                code("x = 1\nprint('ok ran')", "app:ok"),
                code("y = 10", "app:bad"),
                code("raise ValueError(f'boom {y}')"),
                code("z = y + 1", "app:dependent"),
                code("w = z * 2", "app:downstream"),
                code("print('indep', x + 1)", "app:indep"))
    ids = [c.id for c in read(src).cells]
    run = nbpipe.execute(src, workers=2, engine=engine)
    assert not run.ok
    assert {a: r.status.value for a, r in run.apps.items()} == {
        "ok": "completed", "bad": "failed", "dependent": "skipped", "downstream": "skipped",
        "indep": "completed"}
    assert run.apps["bad"].error["ename"] == "ValueError" and run.apps["bad"].error["cell"] == 3
    assert "'bad' failed" in run.apps["dependent"].reason and "reads y from bad" in run.apps["dependent"].reason
    assert "'bad' failed" in run.apps["downstream"].reason

    merged = read(run.output)
    assert [c.id for c in merged.cells] == [c.id for c in run.notebook.cells]
    failing = by_id(merged, ids[3])
    errors = [o for o in failing.outputs if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "ValueError" and errors[0].evalue == "boom 10"
    assert any("boom" in line for line in errors[0].traceback)
    assert failing.metadata["nbpipe"]["status"] == "failed"
    assert by_id(merged, ids[2]).metadata["nbpipe"]["status"] == "completed"
    assert by_id(merged, ids[2]).execution_count is not None
    for skipped in (ids[4], ids[5]):
        meta = by_id(merged, skipped).metadata["nbpipe"]
        assert meta["status"] == "skipped" and "'bad'" in meta["reason"]
        assert by_id(merged, skipped).outputs == []
    assert text_of(by_id(merged, ids[6])) == "indep 2\n"

    banner = merged.cells[0]
    assert banner.cell_type == "markdown" and "nbpipe-error" in banner.metadata["tags"]
    assert "**bad** failed" in banner.source and "ValueError: boom 10" in banner.source
    assert "(#nbpipe-error-bad)" in banner.source and "dependent, downstream" in banner.source
    at = [c.get("id") for c in merged.cells].index(ids[3])
    anchor = merged.cells[at - 1]
    assert anchor.cell_type == "markdown" and 'id="nbpipe-error-bad"' in anchor.source
    assert merged.metadata["nbpipe"]["status"] == "failed"


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_retries_rerun_a_failed_app(tmp_path: Path, engine: str) -> None:
    marker = tmp_path / "attempted"
    src = write(tmp_path / "nb.ipynb",
                code("import pathlib\n"
                     f"marker = pathlib.Path({str(marker)!r})\n"
                     "if not marker.exists():\n"
                     "    marker.write_text('1')\n"
                     "    raise RuntimeError('first attempt fails')\n"
                     "print('second attempt')", "app:flaky", "retries:2"),
                code("raise RuntimeError('always')", "app:always", "retries:1"))
    run = nbpipe.execute(src, workers=2, engine=engine)
    assert (run.apps["flaky"].status.value, run.apps["flaky"].attempts) == ("completed", 2)
    assert run.apps["flaky"].error is None
    assert (run.apps["always"].status.value, run.apps["always"].attempts) == ("failed", 2)
    flaky = by_id(run.notebook, read(src).cells[0].id)
    assert text_of(flaky) == "second attempt\n"
    assert flaky.metadata["nbpipe"]["attempts"] == 2 and flaky.metadata["nbpipe"]["status"] == "completed"
    assert run.notebook.metadata["nbpipe"]["apps"]["always"]["attempts"] == 2


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_timeout_stops_an_app_and_reports_it(tmp_path: Path, engine: str) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("import time\nprint('before')\ntime.sleep(120)\nprint('AFTER-SLEEP')", "app:slow",
                     "timeout:1"),
                code("print('fast done')", "app:fast"))
    started = time.monotonic()
    run = nbpipe.execute(src, workers=2, engine=engine)
    took = time.monotonic() - started
    assert took < 30, f"a 1 s timeout took {took:.0f} s"
    assert run.apps["slow"].status.value == "timed_out"
    assert run.apps["fast"].status.value == "completed"
    slow = by_id(run.notebook, read(src).cells[0].id)
    assert slow.metadata["nbpipe"]["status"] == "timed_out"
    streams = "".join(o.text for o in slow.outputs if o.output_type == "stream")
    assert "AFTER-SLEEP" not in streams
    assert any(o.output_type == "error" and "timeout" in o.evalue for o in slow.outputs)
    assert "**slow** timed out" in run.notebook.cells[0].source  # the banner
    # what the cell printed before it was stopped stays, as under papermill
    assert streams == "before\n"


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_an_unshippable_value_names_variable_type_apps_and_fix(tmp_path: Path, engine: str) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("gen = (i for i in range(3))", "app:make_gen"),
                code("import threading\nlock = threading.Lock()", "app:make_lock"),
                code("fh = open('out.txt', 'w')", "app:make_file"),
                code("print(list(gen))", "app:use_gen"),
                code("print(lock.locked())", "app:use_lock"),
                code("fh.write('x')", "app:use_file"))
    run = nbpipe.execute(src, workers=2, engine=engine)
    for variable, type_name, producer, consumer in [("gen", "generator", "make_gen", "use_gen"),
                                                    ("lock", "_thread.lock", "make_lock", "use_lock"),
                                                    ("fh", "_io.TextIOWrapper", "make_file", "use_file")]:
        result = run.apps[producer]
        assert result.status.value == "failed"
        assert result.error["ename"] == "ShipError"
        message = result.error["evalue"]
        assert f"variable {variable!r}" in message and type_name in message
        assert f"app {producer!r}" in message and consumer in message
        assert "recreate it" in message
        assert ("list(...)" if variable == "gen" else "setup") in message
        assert run.apps[consumer].status.value == "skipped"
        assert f"reads {variable} from {producer}" in run.apps[consumer].reason
        shown = text_of(run.notebook.cells[[c.get("id") for c in run.notebook.cells].index(
            read(src).cells[["make_gen", "make_lock", "make_file"].index(producer)].id)])
        assert "ShipError" in shown and f"{variable!r}" in shown


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_declared_output_not_written_fails_the_app(tmp_path: Path, engine: str) -> None:
    src = write(tmp_path / "nb.ipynb",
                code("x = 1", "app:make", "outputs:result.csv"),
                code("print(open('result.csv').read())", "app:use", "inputs:result.csv"),
                code("open('other.csv', 'w').write('ok')", "app:good", "outputs:other.csv"))
    run = nbpipe.execute(src, workers=2, engine=engine)
    assert run.apps["make"].status.value == "failed"
    assert "result.csv" in run.apps["make"].error["evalue"]
    assert run.apps["use"].status.value == "skipped"
    assert run.apps["good"].status.value == "completed"
    assert (tmp_path / "other.csv").read_text() == "ok"
    assert "result.csv" in run.notebook.cells[0].source  # the banner says which file


def test_a_missing_input_nobody_produces_stops_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    src = write(tmp_path / "nb.ipynb",
                code(f"open({str(marker)!r}, 'w').close()", "app:first"),
                code("print(open('nothing.csv').read())", "app:reader", "inputs:nothing.csv"))
    with pytest.raises(GraphError) as info:
        nbpipe.execute(src, workers=2)
    assert "nothing.csv" in str(info.value) and "'reader'" in str(info.value)
    proc = nbpipe_cli("execute", src, cwd=tmp_path)
    assert proc.returncode == 2 and "inputs:nothing.csv" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "nb.merged.ipynb").exists()


#: The site names the tag as the user wrote it, Kale aliases included.
UNSUPPORTED = [
    pytest.param("gpus:1", "no GPUs", id="gpus"),
    pytest.param("limit:nvidia.com/gpu:1", "no GPUs", id="limit"),
    pytest.param("executor:gpu", "no executor labelled 'gpu'", id="executor"),
    pytest.param("cpus:100000", "CPUs", id="cpus"),
    pytest.param("memory:1000TiB", "GiB of memory", id="memory"),
]


@pytest.mark.parametrize("tag, problem", UNSUPPORTED)
def test_tags_the_local_site_cannot_honour_exit_2(tmp_path: Path, tag: str, problem: str) -> None:
    marker = tmp_path / "ran"
    src = write(tmp_path / "nb.ipynb", code("items = [1, 2]", "app:make"),
                code(f"open({str(marker)!r}, 'w').close()", "app:other"),
                code("print(items)", "app:fan", tag))
    cell_id = read(src).cells[2].id
    proc = nbpipe_cli("execute", src, "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"cell 2 (id {cell_id})" in proc.stderr and repr(tag) in proc.stderr.replace('"', "'")
    assert problem in proc.stderr and "'fan'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "nb.merged.ipynb").exists()


def _kernel_that_dies_first(root: Path, deaths: int) -> Path:
    """A kernelspec ``flaky`` whose first ``deaths`` starts exit before the kernel
    replies, as a kernel does that lost its port to another starting beside it."""
    spec = root / "kernels" / "flaky"
    spec.mkdir(parents=True)
    launcher = root / "ipykernel_flaky.py"  # an ipykernel, as far as nbpipe can tell
    launcher.write_text(
        "import os, sys\n"
        f"count = {str(root / 'starts')!r}\n"
        "n = len(open(count).read()) if os.path.exists(count) else 0\n"
        "open(count, 'a').write('x')\n"
        f"if n < {deaths}:\n"
        "    sys.exit(1)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'ipykernel_launcher', *sys.argv[1:]])\n")
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, str(launcher), "-f", "{connection_file}"],
        "display_name": "Flaky", "language": "python"}))
    return root / "starts"


@pytest.mark.parametrize("deaths, ok", [(2, True), pytest.param(3, False, marks=pytest.mark.slow)])
def test_a_kernel_that_dies_while_starting_is_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deaths: int, ok: bool) -> None:
    starts = _kernel_that_dies_first(tmp_path / "jupyter", deaths)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = notebook(code("x = 41", "app:load"), code("print(x + 1)", "app:show"))
    nb.metadata["kernelspec"] = {"name": "flaky", "display_name": "Flaky", "language": "python"}
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    run = nbpipe.execute(src, workers=1, engine="kernel")
    assert run.ok is ok
    if ok:
        assert len(starts.read_text()) == deaths + 2  # the deaths, then one kernel per app
        assert text_of(by_id(read(run.output), nb.cells[1].id)) == "42\n"
    else:
        assert len(starts.read_text()) == 3
        assert run.apps["load"].error["evalue"] == "Kernel died before replying to kernel_info"
        assert run.apps["show"].status.value == "skipped"
