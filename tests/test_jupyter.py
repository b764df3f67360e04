"""Jupyter: the ``%nbpipe`` magics in real kernels (driver notebooks run by papermill, and a
kernel driven by jupyter_client to see the display messages), the live status view,
``--pull``, and what a RunResult and a Pipeline show."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import pytest

import nbpipe
from nbpipe import magics
from nbpipe.events import Event
from nbpipe.parse import parse_notebook
from nbpipe.status import Board

from nbbuild import code, nbpipe_cli, notebook, read, text_of, write

KERNEL = "python3"
N = 3  # the driver's -p n


def _pipeline_notebook(path: Path, items: str = "data") -> Path:
    """Apps defining a list, a function reading a parameter late, a map app and an
    unpicklable generator."""
    return write(
        path,
        code("n = 2", "parameters"),
        code("data = list(range(n))\ndef total(xs):\n    return sum(xs) + n", "app:load"),
        code("squares = [x * x for x in data]", "app:square"),
        code("result = total(squares)\nprint(result)", "app:report"),
        code("cube = k ** 3", f"map:k={items}", "app:each"),
        code("gen = (i for i in range(3))", "app:other"),
    )


def _papermill(src: Path, cwd: Path) -> Any:
    import papermill

    out = src.with_name(src.stem + ".out.ipynb")
    papermill.execute_notebook(str(src), str(out), kernel_name=KERNEL, cwd=str(cwd), progress_bar=False)
    return read(out)


def _html(output: Any) -> str:
    value = output["data"]["text/html"]
    return "".join(value) if isinstance(value, list) else value


def test_a_driver_notebook_runs_the_magic_with_a_status_view_and_pulls_the_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    _pipeline_notebook(tmp_path / "other.ipynb")
    driver = write(
        tmp_path / "driver.ipynb",
        code("%load_ext nbpipe"),
        code(f"run = %nbpipe execute other.ipynb --pull -p n {N}"),
        code("print('pulled', result, squares, cube, total([1]))"),
        code("n = 100\nprint('late', total([0]))"),
        code("run"),
        code("%nbpipe execute", "raises-exception"),
        code("%nbpipe execute missing.ipynb", "raises-exception"),
        code(f"%%nbpipe execute other.ipynb -o cell.ipynb --pull\nn: {N + 1}  # the cell is YAML"),
        code("print('cell', result)"),
        code("import pathlib\n__vsc_ipynb_file__ = str(pathlib.Path('other.ipynb').resolve())\n%nbpipe check"),
        code("%nbpipe graph"),
    )
    executed = _papermill(driver, tmp_path)

    magic = executed.cells[1].outputs
    views = [o for o in magic if o["output_type"] == "display_data"]
    assert len(views) == 1, magic  # one view, updated in place: its final state is what is saved
    view = _html(views[0])
    assert 'data-state="completed"' in view and "running" not in view
    for app in ("load", "square", "report", "each", "other"):
        assert f'data-app="{app}" data-status="completed"' in view, app
    assert f"{N}/{N}" in view  # the map app's items
    warning = text_of(executed.cells[1])
    assert "not pulled" in warning and "gen" in warning and "generator" in warning

    data = list(range(N))
    squares = [x * x for x in data]
    expected = f"pulled {sum(squares) + N} {squares} {[k ** 3 for k in data]} {1 + N}"
    assert text_of(executed.cells[2]).strip() == expected
    # a pulled function looks its globals up in the kernel's namespace, as its cell would have
    assert text_of(executed.cells[3]).strip() == "late 100"

    shown = executed.cells[4].outputs[-1]
    plain = shown["data"]["text/plain"]
    assert re.fullmatch(r"<RunResult completed 5 apps in \d+\.\ds -> other\.merged\.ipynb>", plain), plain
    summary = _html(shown)
    assert 'data-app="report" data-status="completed"' in summary
    assert "pulled 6 names" in summary and "<code>squares</code>" in summary
    assert (tmp_path / "other.merged.ipynb").exists()

    unnamed, missing = text_of(executed.cells[5]), text_of(executed.cells[6])
    assert unnamed.startswith("UsageError: nbpipe: name the notebook") and "JPY_SESSION_NAME" in unnamed
    assert missing.strip() == "UsageError: nbpipe: missing.ipynb: no such notebook"
    assert "Traceback" not in unnamed + missing

    # %%nbpipe: the cell's body is a YAML block of parameters
    assert text_of(executed.cells[8]).strip() == f"cell {sum(x * x for x in range(N + 1)) + N + 1}"
    assert read(tmp_path / "cell.ipynb").metadata["nbpipe"]["parameters"]["n"] == N + 1

    # VS Code names the notebook in the namespace; graph returns the pipeline, shown as tables
    assert text_of(executed.cells[9]).startswith(f"{(tmp_path / 'other.ipynb').resolve()}: 5 app(s), 4 edge(s); ok")
    graph = executed.cells[10].outputs[0]
    assert graph["data"]["text/plain"].startswith("<Pipeline other.ipynb: 5 app(s)")
    assert 'data-edge="load->report"' in _html(graph)


def test_the_kernel_notebook_found_by_jpy_session_name_runs_itself_without_recursion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Jupyter Server names the notebook from its root; the kernel starts in the notebook's directory.
    folder = tmp_path / "sub"
    folder.mkdir()
    driver = write(
        folder / "driver.ipynb",
        code("%load_ext nbpipe"),
        code("import os\npid = os.getpid()", "app:make"),
        code("double = pid * 2", "app:twice"),
        code("run = %nbpipe execute --pull"),
        code("print('from the pipeline', pid != os.getpid(), double == 2 * pid)"),
    )
    monkeypatch.setenv("JPY_SESSION_NAME", "sub/driver.ipynb")
    executed = _papermill(driver, folder)
    assert text_of(executed.cells[4]).strip() == "from the pipeline True True"
    merged = read(folder / "driver.merged.ipynb")
    assert merged.cells[3].outputs == []  # the magic's cell was not run inside the pipeline
    assert merged.cells[3].metadata["nbpipe"]["status"] == "skipped"


def test_the_status_view_is_one_display_updated_in_place_at_most_four_times_a_second(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    write(tmp_path / "other.ipynb",
          code("items = list(range(24))", "app:make"),
          code("value = item * 2", "map:item=items", "app:each"),
          code("total = sum(value)", "app:sum"))
    write(tmp_path / "bad.ipynb", code("x = 1", "app:a", "timeout:soon"))
    write(tmp_path / "stop.ipynb", code("x = 1", "app:a"), code("import sys\nsys.exit(0)", "app:b"),
          code("y = 2", "app:c"))
    manager, client = start_new_kernel(kernel_name=KERNEL, cwd=str(tmp_path))
    try:
        # an output_hook always: without one jupyter_client writes to this process's IPython
        # display, which another test's in-process shell may have left in place
        client.execute_interactive("%load_ext nbpipe", timeout=60, output_hook=lambda message: None)
        messages: list[dict[str, Any]] = []
        started = time.monotonic()
        reply = client.execute_interactive("%nbpipe execute other.ipynb", timeout=120,
                                           output_hook=messages.append)
        elapsed = time.monotonic() - started
        stopped: list[dict[str, Any]] = []
        client.execute_interactive("%nbpipe execute stop.ipynb", timeout=120, output_hook=stopped.append)
        refused = {}
        for line in ("%nbpipe execute missing.ipynb", "%nbpipe execute bad.ipynb",
                     "%nbpipe execute other.ipynb --site nowhere", "%nbpipe execute other.ipynb --sitee x"):
            said: list[dict[str, Any]] = []
            reply_to = client.execute_interactive(line, timeout=60, output_hook=said.append)
            refused[line] = (reply_to["content"]["status"],
                             "".join(m["content"].get("text", "") for m in said if m["msg_type"] == "stream"))
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok"
    # apps skipped below a sys.exit(0) do not make the run fail, in the view as in the RunResult
    final = [m for m in stopped if m["msg_type"] == "update_display_data"][-1]["content"]["data"]["text/html"]
    assert 'data-app="c" data-status="skipped"' in final and 'data-state="completed"' in final
    for line, (status, text) in refused.items():
        assert status == "error", line  # bad input stops a "Run all"
        assert text.startswith("UsageError: nbpipe: ") and text.count("\n") == 1, (line, text)
    assert "timeout:" in refused["%nbpipe execute bad.ipynb"][1]
    assert "nowhere" in refused["%nbpipe execute other.ipynb --site nowhere"][1]
    assert "unrecognized arguments: --sitee x" in refused["%nbpipe execute other.ipynb --sitee x"][1]
    shows = [m for m in messages if m["msg_type"] == "display_data"]
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert len(shows) == 1
    display_id = shows[0]["content"]["transient"]["display_id"]
    assert updates and all(m["content"]["transient"]["display_id"] == display_id for m in updates)
    assert 'data-state="running"' in shows[0]["content"]["data"]["text/html"]
    last = updates[-1]["content"]["data"]["text/html"]
    assert 'data-state="completed"' in last and "24/24" in last
    assert len(updates) <= 4 * elapsed + 2
    # the redraws (all but the last, at the end) come at least a quarter of a second apart
    stamps = [m["header"]["date"].timestamp() for m in updates[:-1]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert not gaps or min(gaps) >= 0.24, gaps


def test_session_notebook_resolves_the_names_jupyter_server_gives(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    nb = write(folder / "x.ipynb", code("1"))
    assert magics.session_notebook("a/b/x.ipynb", folder) == nb  # relative to the server root
    assert magics.session_notebook("a/b/x.ipynb", tmp_path) == nb  # the root is the kernel's directory
    assert magics.session_notebook("x.ipynb", folder) == nb
    assert magics.session_notebook(str(nb), tmp_path / "a") == nb  # absolute
    assert magics.session_notebook("a/b/y.ipynb", folder) is None
    assert magics.session_notebook("console-1-abc", folder) is None
    assert magics.session_notebook("", folder) is None


def test_pull_in_the_api_returns_the_final_value_of_every_name(tmp_path: Path, capsys: Any, engine: str) -> None:
    path = write(
        tmp_path / "nb.ipynb",
        code("n = 2", "parameters"),
        code("import math\nscale = 10", "setup"),
        code("x = [1]\ny = n * scale", "app:first"),
        code("x = x + [2]", "app:second"),
        code("z = len(x)\nx = 'last'", "app:third"),
        code("pending = (i for i in range(3))", "app:lazy"),
    )
    run = nbpipe.execute(path, pull=True, parameters={"n": 4}, engine=engine)
    assert run.ok
    # x's last definer wins; parameters and setup names come with the last plain app
    assert run.values == {"x": "last", "y": 40, "z": 2, "n": 4, "scale": 10, "math": __import__("math")}
    warning = capsys.readouterr().err
    assert "pending" not in run.values and "not pulled from app 'lazy', cannot be pickled: pending" in warning

    plain = nbpipe.execute(path, parameters={"n": 4})
    assert plain.values == {}


def test_a_pull_of_a_failed_app_says_which_names_it_could_not_bring(tmp_path: Path, capsys: Any) -> None:
    path = write(tmp_path / "nb.ipynb",
                 code("a = 1", "app:good"),
                 code("b = 2\nraise ValueError('no')", "app:bad"))
    run = nbpipe.execute(path, pull=True)
    assert not run.ok and run.values == {"a": 1}
    assert "not pulled: b (app 'bad' failed)" in capsys.readouterr().err


@pytest.mark.cache
def test_a_cached_run_pulls_the_same_values(tmp_path: Path) -> None:
    path = _pipeline_notebook(tmp_path / "nb.ipynb")
    first = nbpipe.execute(path, pull=True)
    second = nbpipe.execute(path, pull=True)
    assert all(r.status.value == "cached" for r in second.apps.values())
    assert {k: v for k, v in second.values.items() if k != "total"} == \
        {k: v for k, v in first.values.items() if k != "total"}
    assert second.values["total"]([1]) == first.values["total"]([1])


def test_a_run_result_shows_one_line_and_a_summary_table(tmp_path: Path) -> None:
    path = write(tmp_path / "nb.ipynb",
                 code("text = 'x' * 100_000\nprint(len(text))", "app:big"),
                 code("raise KeyError('missing key')", "app:broken"),
                 code("print(text[:3])", "app:after"))
    run = nbpipe.execute(path)
    line = repr(run)
    assert line == f"<RunResult failed 3 apps in {run.duration:.1f}s -> nb.merged.ipynb>"
    assert len(line) < 200
    html = run._repr_html_()
    assert 'data-state="failed"' in html
    assert 'data-app="big" data-status="completed"' in html
    assert 'data-app="broken" data-status="failed"' in html and "KeyError: &#39;missing key&#39;" in html
    assert 'data-app="after" data-status="completed"' in html
    assert re.search(r'<svg .*<g class="nbpipe-node" data-app="broken">.*</svg>', html, flags=re.S)  # the graph
    assert len(html) < 20_000  # a summary, not the notebook
    # still a dataclass
    assert "values" in {f.name for f in dataclasses.fields(run)}
    assert dataclasses.replace(run, duration=1.25).duration == 1.25


def test_a_pipeline_shows_its_apps_and_what_flows(tmp_path: Path) -> None:
    path = write(tmp_path / "nb.ipynb",
                 code("data = [1, 2]", "app:load"),
                 code("%%writefile table.csv\na,b", "app:write"),
                 code("total = sum(data)\nopen('table.csv').read()", "app:use", "inputs:table.csv"))
    pipeline = nbpipe.load_pipeline(path)
    assert repr(pipeline) == "<Pipeline nb.ipynb: 3 app(s), 2 edge(s): load, write, use>"
    html = pipeline._repr_html_()
    edges = re.findall(r'<tr data-edge="([^"]+)">.*?</tr>', html, flags=re.S)
    assert edges == ["load->use", "write->use"]
    assert re.search(r'data-edge="load->use">.*?>data</td>', html, flags=re.S)
    assert re.search(r'data-edge="write->use">.*?>file table.csv</td>', html, flags=re.S)
    assert "<code>data</code> &larr; load" in html
    assert html.count('<g class="nbpipe-node"') == 3 and "<svg" in html


def test_the_board_counts_items_and_names_a_failed_one(tmp_path: Path) -> None:
    path = write(tmp_path / "nb.ipynb",
                 code("items = [1, 0, 2]", "app:make"),
                 code("value = 1 / item", "map:item=items", "app:each"))
    events: list[Event] = []
    nbpipe.execute(path, on_event=events.append)
    board = Board.of(nbpipe.load_pipeline(path))
    for event in events:
        board.update(event)
    board.ended = time.time()
    html = board.html()
    assert 'data-app="each" data-status="failed"' in html
    assert "3/3 (1 failed)" in html and "ZeroDivisionError" in html
    assert 'data-app="make" data-status="completed"' in html and "<td style" in html


def test_a_cell_running_the_magic_is_never_part_of_the_pipeline() -> None:
    parsed = parse_notebook(notebook(
        code("%load_ext nbpipe"),
        code("x = 1", "app:a"),
        code("run = %nbpipe execute --pull"),
        code("%%nbpipe execute\nn: 3"),
        code("get_ipython().run_line_magic('nbpipe', 'execute')"),
        code("y = x % nbpipe_width if False else 2")))
    assert [c.role for c in parsed.cells] == ["app", "app", "skip", "skip", "skip", "app"]


def test_the_command_line_refuses_pull(tmp_path: Path) -> None:
    path = write(tmp_path / "nb.ipynb", code("x = 1", "app:a"))
    done = nbpipe_cli("execute", path, "--pull", cwd=tmp_path)
    assert done.returncode == 2
    assert "nbpipe: error: --pull puts the values into a Jupyter kernel's namespace" in done.stderr
    assert not (tmp_path / "nb.merged.ipynb").exists()


def test_load_ext_needs_no_compiler_import_until_used() -> None:
    import subprocess
    import sys

    probe = "import sys, nbpipe; print(hasattr(nbpipe, 'load_ipython_extension'), 'nbpipe.magics' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False"]


def test_execute_called_in_a_kernel_shows_the_status_view_too(tmp_path: Path) -> None:
    write(tmp_path / "other.ipynb", code("data = [1, 2]", "app:load"), code("total = sum(data)", "app:add"))
    driver = write(tmp_path / "driver.ipynb",
                   code("import nbpipe\nrun = nbpipe.execute('other.ipynb', output='api.ipynb')\nprint(run.ok)"),
                   code("seen = []\nrun = nbpipe.execute('other.ipynb', output='api.ipynb', on_event=seen.append)\n"
                        "print(len(seen) > 0)"))
    executed = _papermill(driver, tmp_path)
    views = [o for o in executed.cells[0].outputs if o["output_type"] == "display_data"]
    assert len(views) == 1, executed.cells[0].outputs
    assert 'data-state="completed"' in _html(views[0])
    assert 'data-app="add" data-status="completed"' in _html(views[0])
    assert text_of(executed.cells[0]).strip().endswith("True")
    # a caller's own on_event replaces the view
    assert [o["output_type"] for o in executed.cells[1].outputs] == ["stream"], executed.cells[1].outputs
