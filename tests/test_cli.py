"""Every command of SPEC §4 through the real command line, and its exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ENGINE_PARAMS
from nbbuild import by_id, code, md, nbpipe_cli, read, text_of, write

from nbpipe.cli import COMMANDS, parse_value

# --------------------------------------------------------------------- execute


def params_notebook(path: Path) -> Path:
    return write(path,
                 md("# parameters"),
                 code("n = 1\nx = 0.5\nflag = False\nnothing = 'set'\nname = 'default'", "parameters"),
                 code("print([type(v).__name__ for v in (n, x, flag, nothing, name)])\n"
                      "print(repr(n), repr(x), repr(flag), repr(nothing), repr(name))", "app:show"),
                 code("doubled = n * 2\nprint('doubled', doubled)", "app:double"))


@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_execute_with_parameters_json_and_html(tmp_path: Path, engine: str) -> None:
    src = params_notebook(tmp_path / "nb.ipynb")
    out = tmp_path / "out" / "merged.ipynb"
    html = tmp_path / "report.html"
    proc = nbpipe_cli("execute", src, "-o", out, "-p", "n", "3", "-p", "x", "2.5", "-p", "flag", "True",
                      "-p", "nothing", "None", "-p", "name", "hello", "--workers", "2", "--engine", engine,
                      "--json", "--html", html, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # --json: the summary alone is on stdout
    assert summary["status"] == "completed"
    assert Path(summary["output"]) == out and Path(summary["html"]) == html
    assert {a: r["status"] for a, r in summary["apps"].items()} == {"show": "completed", "double": "completed"}
    assert all(r["attempts"] == 1 and r["duration"] >= 0 for r in summary["apps"].values())

    merged = read(out)
    nbformat.validate(merged)
    show = by_id(merged, nbformat.read(src, as_version=4).cells[2].id)
    assert text_of(show) == "['int', 'float', 'bool', 'NoneType', 'str']\n3 2.5 True None 'hello'\n"
    assert "doubled 6" in text_of(merged.cells[-1])
    assert merged.metadata["nbpipe"]["parameters"] == {"n": 3, "x": 2.5, "flag": True, "nothing": None,
                                                       "name": "hello"}
    injected = [c for c in merged.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n = 3" in injected[0].source
    assert html.exists() and "doubled 6" in html.read_text()
    assert not (tmp_path / "nb.merged.ipynb").exists()  # -o was honoured


def test_execute_parameters_file_then_p_overrides(tmp_path: Path) -> None:
    src = params_notebook(tmp_path / "nb.ipynb")
    (tmp_path / "params.yaml").write_text("n: 4\nname: from-yaml\nflag: true\n")
    proc = nbpipe_cli("execute", src, "-f", "params.yaml", "-p", "name", "from-cli", "--workers", "2",
                      "--html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # no --json: nothing on stdout
    assert "from-cli" in (tmp_path / "nb.merged.html").read_text()  # bare --html: beside the output
    merged = read(tmp_path / "nb.merged.ipynb")  # the default output
    # every parameter's value, defaults included (x, nothing), and where it came from
    assert merged.metadata["nbpipe"]["parameters"] == {"n": 4, "x": 0.5, "flag": True, "nothing": "set",
                                                       "name": "from-cli"}
    assert merged.metadata["nbpipe"]["parameter_sources"] == {"n": "override", "x": "default",
                                                              "flag": "override", "nothing": "default",
                                                              "name": "override"}
    show = by_id(merged, read(src).cells[2].id)
    assert text_of(show).endswith("4 0.5 True 'set' 'from-cli'\n")


@pytest.mark.parametrize("value, expected", [
    ("3", 3), ("-2", -2), ("2.5", 2.5), ("1e3", 1000.0), ("True", True), ("False", False),
    ("None", None), ("true", "true"), ("hello", "hello"), ("", ""), ("3x", "3x"), ("'3'", "'3'"),
])
def test_p_values_are_parsed_like_papermill(value: str, expected: object) -> None:
    from papermill.cli import _resolve_type

    assert parse_value(value) == expected and type(parse_value(value)) is type(expected)
    assert parse_value(value) == _resolve_type(value)


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e400", "9" * 5000])
def test_p_words_that_are_no_finite_number_stay_strings(value: str) -> None:
    # papermill makes these floats (or fails on 5000 digits); JSON has no literal for them.
    assert parse_value(value) == value


def test_a_failing_app_exits_1_and_still_writes_the_merged_notebook(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1", "app:ok"), code("1 / 0", "app:bad"))
    proc = nbpipe_cli("execute", src, "--workers", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["status"] == "failed"
    assert "bad failed" in proc.stderr and "ZeroDivisionError" in proc.stderr
    assert "Traceback" not in proc.stderr
    merged = read(tmp_path / "nb.merged.ipynb")
    assert merged.metadata["nbpipe"]["apps"]["ok"]["status"] == "completed"
    assert merged.metadata["nbpipe"]["apps"]["bad"]["status"] == "failed"


# --------------------------------------------------------------------- exit 2: nothing runs

BAD_INPUTS = {
    "bad tag": ([code("x = 1", "app:a", "retries:x")], (), ["cell 1 (id", "'retries:x'", "whole number"]),
    "unknown after": ([code("x = 1", "app:load"), code("y = 2", "app:b", "after:laod")], (),
                      ["'after:laod'", "did you mean 'load'"]),
    "cycle": ([code("y = 1", "app:a"), code("x = y", "app:b"), code("z = x", "app:a")], (),
              ["cycle", "a -> b"]),
    "unknown site": ([code("x = 1", "app:a")], ("--site", "locla"), ["unknown site 'locla'",
                                                                    "did you mean 'local'?"]),
    "bad workers": ([code("x = 1", "app:a")], ("--workers", "0"), ["--workers"]),
    "bad -p name": ([code("x = 1", "app:a")], ("-p", "1x", "3"), ["-p 1x"]),
    "missing -f": ([code("x = 1", "app:a")], ("-f", "nowhere.yaml"), ["nowhere.yaml"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_and_runs_nothing(tmp_path: Path, case: str) -> None:
    cells, extra, messages = BAD_INPUTS[case]
    marker = tmp_path / "ran"
    # every app would leave a marker file, if it ran
    cells = [md("# bad"), *cells]
    for cell in cells[1:]:
        cell.source += f"\nopen({str(marker)!r}, 'w').close()"
    src = write(tmp_path / "nb.ipynb", *cells)
    proc = nbpipe_cli("execute", src, *extra, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("nbpipe: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no traceback
    for message in messages:
        assert message in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "nb.merged.ipynb").exists()
    assert proc.stdout == ""


def test_missing_notebook_exits_2(tmp_path: Path) -> None:
    proc = nbpipe_cli("execute", "absent.ipynb", cwd=tmp_path)
    assert proc.returncode == 2
    assert "absent.ipynb" in proc.stderr and "no such notebook" in proc.stderr
    assert not (tmp_path / "absent.merged.ipynb").exists()


def test_a_file_that_is_not_a_notebook_exits_2(tmp_path: Path) -> None:
    (tmp_path / "junk.ipynb").write_text("{not json")
    proc = nbpipe_cli("check", "junk.ipynb", cwd=tmp_path)
    assert proc.returncode == 2 and "not a readable notebook" in proc.stderr


def test_no_command_and_unknown_options_exit_2(tmp_path: Path) -> None:
    assert nbpipe_cli(cwd=tmp_path).returncode == 2
    proc = nbpipe_cli("execute", "nb.ipynb", "--no-such-option", cwd=tmp_path)
    assert proc.returncode == 2 and "--no-such-option" in proc.stderr


def test_every_spec_command_exists_and_has_help(tmp_path: Path) -> None:
    assert set(COMMANDS) == {"execute", "check", "graph", "tag", "compile", "render", "verify", "cache", "sites"}
    top = nbpipe_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in COMMANDS:
        assert command in top.stdout
    version = nbpipe_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("nbpipe ")


# --------------------------------------------------------------------- check, graph, compile


def small_pipeline(path: Path, marker: Path) -> Path:
    return write(path,
                 code("import math", "setup"),
                 code(f"x = 1\nopen({str(marker)!r}, 'w').close()", "app:load"),
                 code("y = x + 1", "app:square"),
                 code("z = 3", "app:report", "after:square"))


def test_check_prints_apps_and_edges(tmp_path: Path) -> None:
    src = small_pipeline(tmp_path / "nb.ipynb", tmp_path / "ran")
    proc = nbpipe_cli("check", src, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3 app(s), 2 edge(s); ok" in proc.stdout
    assert "square: cells 2; reads x<-load" in proc.stdout
    assert "load -> square (x)" in proc.stdout and "square -> report (after)" in proc.stdout
    assert not (tmp_path / "ran").exists()


def test_check_refuses_what_the_site_cannot_do(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", "gpus:1"))
    proc = nbpipe_cli("check", src, cwd=tmp_path)
    assert proc.returncode == 2 and "'gpus:1'" in proc.stderr and "no GPUs" in proc.stderr


def test_graph_formats(tmp_path: Path) -> None:
    src = small_pipeline(tmp_path / "nb.ipynb", tmp_path / "ran")
    run = {f: nbpipe_cli("graph", src, "--format", f, cwd=tmp_path) for f in ("text", "json", "dot", "mermaid")}
    assert all(p.returncode == 0 for p in run.values()), {f: p.stderr for f, p in run.items()}

    assert "load -> square (x)" in run["text"].stdout
    assert run["text"].stdout == nbpipe_cli("graph", src, cwd=tmp_path).stdout  # text is the default

    data = json.loads(run["json"].stdout)
    assert [a["name"] for a in data["apps"]] == ["load", "square", "report"]
    assert [(e["from"], e["to"], e["names"], e["kinds"]) for e in data["edges"]] == [
        ("load", "square", ["x"], ["data"]), ("square", "report", [], ["after"])]

    dot = run["dot"].stdout
    assert dot.startswith("digraph nbpipe {") and dot.rstrip().endswith("}")
    assert '"load" -> "square" [label="x"];' in dot
    assert '"square" -> "report" [style=dashed];' in dot

    mermaid = run["mermaid"].stdout.splitlines()
    assert mermaid[0] == "flowchart TD"
    assert '    load["load"]' in mermaid
    assert "    load -->|x| square" in mermaid and "    square -.-> report" in mermaid
    assert not (tmp_path / "ran").exists()


def test_graph_svg_needs_graphviz(tmp_path: Path) -> None:
    import shutil

    src = small_pipeline(tmp_path / "nb.ipynb", tmp_path / "ran")
    proc = nbpipe_cli("graph", src, "--format", "svg", cwd=tmp_path)
    if shutil.which("dot") is None:
        assert proc.returncode == 2 and "Graphviz" in proc.stderr and "--format dot" in proc.stderr
    else:
        assert proc.returncode == 0 and "<svg" in proc.stdout and "square" in proc.stdout


def test_graph_of_a_bad_notebook_exits_2(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", "after:zzz"))
    proc = nbpipe_cli("graph", src, "--format", "json", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and "'after:zzz'" in proc.stderr


def test_compile_writes_task_notebooks_and_graph_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    src = small_pipeline(tmp_path / "nb.ipynb", marker)
    out = tmp_path / "compiled"
    proc = nbpipe_cli("compile", src, "-d", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["graph.json", "load.ipynb", "report.ipynb",
                                                     "square.ipynb"]
    assert sorted(Path(line).name for line in proc.stdout.split()) == sorted(p.name for p in out.iterdir())
    for name in ("load", "square", "report"):
        nb = read(out / f"{name}.ipynb")
        nbformat.validate(nb)
        assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code")
        assert any(c.source == "import math" for c in nb.cells)  # setup runs in every app
    square = read(out / "square.ipynb")
    assert any(c.source == "y = x + 1" for c in square.cells)
    assert not any(c.source.startswith("x = 1") for c in square.cells)
    graph = json.loads((out / "graph.json").read_text())
    assert graph == json.loads(nbpipe_cli("graph", src, "--format", "json", cwd=tmp_path).stdout)
    assert not marker.exists()
    assert not (tmp_path / "nb.merged.ipynb").exists()


# --------------------------------------------------------------------- render, sites


def test_render_writes_html_with_the_outputs(tmp_path: Path) -> None:
    cell = code("print('hi')")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="rendered-output-42\n")]
    cell.execution_count = 1
    src = write(tmp_path / "done.ipynb", md("# Report title"), cell)
    proc = nbpipe_cli("render", src, "-o", tmp_path / "r" / "report.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "r" / "report.html").read_text()
    assert "rendered-output-42" in html and "Report title" in html and "<html" in html
    default = nbpipe_cli("render", src, cwd=tmp_path)
    assert default.returncode == 0 and (tmp_path / "done.html").exists()
    assert default.stdout.strip() == str(src.with_suffix(".html"))


def test_sites_lists_the_builtin_local_site(tmp_path: Path) -> None:
    proc = nbpipe_cli("sites", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    local = [line for line in proc.stdout.splitlines() if line.split()[0] == "local"]
    assert len(local) == 1 and "engine=local" in local[0] and "built in" in local[0]


# --------------------------------------------------------------------- SIGINT


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, command line) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0], cmdline)
    return table


def _descendants(root: int) -> set[int]:
    table = _proc_table()
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def _alive(pids: set[int], marker: str) -> dict[int, str]:
    """Which of ``pids`` still run (zombies do not), plus any process naming ``marker``."""
    table = _proc_table()
    return {pid: cmd for pid, (_, state, cmd) in table.items()
            if state != "Z" and (pid in pids or marker in cmd) and pid != os.getpid()}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("engine", ENGINE_PARAMS)
def test_sigint_exits_130_writes_partial_notebook_and_leaves_no_process(tmp_path: Path, engine: str) -> None:
    def sleeper(name: str) -> str:
        return ("import os, pathlib, time\n"
                f"pathlib.Path({str(tmp_path / name)!r}).write_text(f'{{os.getpid()}} {{os.getppid()}}')\n"
                "time.sleep(120)\nslept = 1")

    src = write(tmp_path / "nb.ipynb", code("x = 1\nprint('quick')", "app:quick"),
                code(sleeper("pid1"), "app:slow1"), code(sleeper("pid2"), "app:slow2"),
                code("print(slept)", "app:later"))
    # Temp and kernel-connection files under tmp_path: every task and kernel
    # command line of this run then names tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    (tmp_path / "tmp").mkdir()
    cli = subprocess.Popen([sys.executable, "-m", "nbpipe", "execute", str(src), "--workers", "2",
                            "--engine", engine], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not ((tmp_path / "pid1").exists() and (tmp_path / "pid2").exists()):
            assert cli.poll() is None, cli.communicate()
            assert time.time() < deadline, "the slow apps never started"
            time.sleep(0.1)
        time.sleep(0.3)
        family = _descendants(cli.pid)
        for name in ("pid1", "pid2"):
            family |= set(map(int, (tmp_path / name).read_text().split()))
        assert len(family) >= 3
        cli.send_signal(signal.SIGINT)
        _, stderr = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr

    merged = read(tmp_path / "nb.merged.ipynb")
    nbformat.validate(merged)
    apps = merged.metadata["nbpipe"]["apps"]
    assert apps["quick"]["status"] == "completed"
    assert apps["slow1"]["status"] not in ("completed", "pending", "running")
    assert apps["later"]["status"] == "skipped"
    assert text_of(by_id(merged, read(src).cells[0].id)) == "quick\n"
    assert [c.source for c in merged.cells if c.get("id") in {c.id for c in read(src).cells}] == [
        c.source for c in read(src).cells]

    left: dict[int, str] = {}
    deadline = time.time() + 10
    while time.time() < deadline:
        left = _alive(family, str(tmp_path))
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"


def test_check_takes_every_option_execute_validates_before_running() -> None:
    from nbpipe.cli import _parser

    def options(command: str) -> set[str]:
        sub = next(a for a in _parser()._actions if a.dest == "command").choices[command]
        return {o for action in sub._actions for o in action.option_strings}

    shared = {"-o", "--output", "-p", "--parameter", "-f", "--parameters-file", "--html", "--site",
              "--sites"}
    assert shared <= options("execute") and shared <= options("check")


def test_output_cut_short_by_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """``nbpipe graph nb.ipynb | head -1``: the reader left early; nbpipe ends quietly, as ``cat`` does."""
    path = write(tmp_path / "wide.ipynb", *[code(f"x{i} = {i}", f"app:a{i}") for i in range(3000)])
    proc = subprocess.run(f"{sys.executable} -m nbpipe graph {path} | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
