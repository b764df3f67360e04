"""Parameters done right (issue 12): a misspelt name warns with the closest parameter
(command line, YAML file, Python API), ``nbpipe check`` lists the parameters with
their defaults, types and help, and the merged notebook records every parameter's
value, defaults included, and where it came from."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import nbformat
import pytest
from nbbuild import code, md, nbpipe_cli, notebook, read, text_of, write

import nbpipe
from nbpipe.cli import main
from nbpipe.errors import ParameterWarning
from nbpipe.parameters import declared
from nbpipe.parse import parse_notebook

PARAMETERS = ('n_samples = 1000  # events\n'
              'seed = 42\n'
              'out_dir = "results"\n'
              'cuts = [20, 30]  # GeV, leading and subleading jet\n'
              'use_gpu = False\n')


def analysis(path: Path, parameters: str = PARAMETERS) -> Path:
    """A scientist's notebook: defaults in a parameters cell, one app that prints what it got."""
    return write(path, md("# Jet selection"), code(parameters, "parameters"),
                 code("import json\n"
                      "print(json.dumps({k: globals().get(k) for k in "
                      "['n_samples', 'seed', 'out_dir', 'cuts', 'use_gpu', 'n_sampels']}))", "app:select"))


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("nbpipe: warning: ")]


# --------------------------------------------------------------------- unknown names warn


def test_a_misspelt_p_name_warns_with_the_closest_parameter(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb")
    proc = nbpipe_cli("check", "nb.ipynb", "-p", "n_sampels", "100", "-p", "seed", "7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert warning_lines(proc.stderr) == [
        "nbpipe: warning: -p n_sampels: the notebook has no parameter 'n_sampels'; "
        "did you mean 'n_samples'? (injected anyway)"]


def test_a_misspelt_name_is_injected_anyway_and_recorded(tmp_path: Path) -> None:
    """As papermill does: the value is set (a typo defines a name nobody reads), and the
    merged notebook says so; the warning comes before the run starts."""
    src = analysis(tmp_path / "nb.ipynb")
    proc = nbpipe_cli("execute", "nb.ipynb", "-p", "n_sampels", "100", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("nbpipe: warning: -p n_sampels: ")
    assert len(warning_lines(proc.stderr)) == 1  # once, before the run
    merged = read(tmp_path / "nb.merged.ipynb")
    printed = json.loads(text_of(merged.cells[-1]))
    assert printed["n_sampels"] == 100 and printed["n_samples"] == 1000
    meta = merged.metadata["nbpipe"]
    assert meta["parameters"]["n_sampels"] == 100 and meta["parameter_sources"]["n_sampels"] == "override"
    assert src.exists()


def test_a_misspelt_key_of_a_parameters_file_names_the_file(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb")
    (tmp_path / "p.yaml").write_text("seeed: 3\nout_dir: plots\n")
    proc = nbpipe_cli("check", "nb.ipynb", "-f", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert warning_lines(proc.stderr) == [
        "nbpipe: warning: p.yaml: the notebook has no parameter 'seeed'; did you mean 'seed'? (injected anyway)"]


def test_a_name_unlike_any_parameter_lists_them(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb")
    proc = nbpipe_cli("check", "nb.ipynb", "-p", "threshold", "0.5", cwd=tmp_path)
    assert warning_lines(proc.stderr) == [
        "nbpipe: warning: -p threshold: the notebook has no parameter 'threshold'; its parameters are: "
        "n_samples, seed, out_dir, cuts, use_gpu (injected anyway)"]


def test_without_a_parameters_cell_the_warning_says_so(tmp_path: Path) -> None:
    write(tmp_path / "nb.ipynb", code("n_samples = 1000\nprint(n_samples)", "app:run"))
    proc = nbpipe_cli("check", "nb.ipynb", "-p", "n_samples", "10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [line] = warning_lines(proc.stderr)
    assert line.startswith("nbpipe: warning: -p n_samples: the notebook has no cell tagged 'parameters', "
                           "so 'n_samples' is set at its top, where any cell that assigns it overrides it")
    assert "parameters: none (no cell is tagged 'parameters')" in proc.stdout


def test_known_names_do_not_warn(tmp_path: Path) -> None:
    """Any name the parameters cell sets may be given: an import or a function's too."""
    analysis(tmp_path / "nb.ipynb", PARAMETERS + "import math\ndef scale(x):\n    return x\n")
    proc = nbpipe_cli("check", "nb.ipynb", "-p", "n_samples", "10", "-p", "cuts", "[1]", "-p", "math", "1",
                      cwd=tmp_path)
    assert proc.returncode == 0 and warning_lines(proc.stderr) == [], proc.stderr


def test_the_api_warns_with_a_python_warning_at_the_callers_line(tmp_path: Path) -> None:
    """In Jupyter a Python warning shows under the cell that called execute()."""
    src = analysis(tmp_path / "nb.ipynb")
    with pytest.warns(ParameterWarning) as caught:
        run = nbpipe.execute(src, parameters={"n_sampels": 10, "seed": 1}, workers=1)
    assert run.ok
    [warning] = caught.list
    assert str(warning.message) == ("parameters: the notebook has no parameter 'n_sampels'; "
                                    "did you mean 'n_samples'? (injected anyway)")
    assert warning.filename == __file__  # not a line inside nbpipe
    assert (warning.message.name, warning.message.suggestion) == ("n_sampels", "n_samples")
    assert run.notebook.metadata["nbpipe"]["parameter_sources"]["n_sampels"] == "override"


def test_the_warning_is_a_filterable_nbpipe_warning_that_pickles(tmp_path: Path) -> None:
    src = analysis(tmp_path / "nb.ipynb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=nbpipe.NbpipeWarning)
        from nbpipe.api import check

        _, _, checked = check(src, parameters={"sed": 1})
    [warning] = checked.warnings
    back = pickle.loads(pickle.dumps(warning))
    assert (type(back), str(back), back.suggestion) == (ParameterWarning, str(warning), "seed")


def test_a_hostile_name_is_shown_safely(tmp_path: Path) -> None:
    """A very long name is cut in the warning; one with a terminal escape is refused
    with the escape quoted, never written raw to the terminal."""
    analysis(tmp_path / "nb.ipynb")
    long_name = "n_samples" + "x" * 5000
    proc = nbpipe_cli("check", "nb.ipynb", "-p", long_name, "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [line] = warning_lines(proc.stderr)
    assert len(line) < 400 and "..." in line
    proc = nbpipe_cli("check", "nb.ipynb", "-p", long_name + "-", "1", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr) < 400, proc.stderr  # refused in one short line
    (tmp_path / "p.yaml").write_text('"seed\\e[2J": 1\n')
    proc = nbpipe_cli("check", "nb.ipynb", "-f", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "\x1b" not in proc.stderr and "\\x1b" in proc.stderr


# --------------------------------------------------------------------- nbpipe check lists them


def test_check_lists_parameters_with_defaults_types_and_help(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb", PARAMETERS + "n_bins: int = 2 * 25\nlr = 1e-3  # type: float step size\n"
                                                 "from pathlib import Path\nbase = Path('data')\n")
    proc = nbpipe_cli("check", "nb.ipynb", "-p", "seed", "7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("parameters:\n", 1)[1].splitlines()[:9]
    assert listed == [
        "  n_samples: int = 1000  # events",
        "  seed: int = 42 -> 7",
        '  out_dir: str = "results"',
        "  cuts: list = [20, 30]  # GeV, leading and subleading jet",
        "  use_gpu: bool = False",
        "  n_bins: int = 2 * 25",
        "  lr: float = 1e-3  # step size",
        "  base = Path('data')",  # no type is guessed for what only running the cell tells
    ]


def test_check_json_has_the_graph_parameters_and_warnings(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb", PARAMETERS + "n = 2 * 50\n")
    proc = nbpipe_cli("check", "nb.ipynb", "--json", "-p", "use_gpu", "True", "-p", "sed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # the JSON alone is on stdout
    assert [a["name"] for a in data["apps"]] == ["select"] and data["edges"] == []
    by_name = {p["name"]: p for p in data["parameters"]}
    assert by_name["cuts"] == {"name": "cuts", "type": "list", "default": "[20, 30]", "value": [20, 30],
                               "help": "GeV, leading and subleading jet", "cell": 1, "known": True}
    assert by_name["n"]["value"] == 100 and by_name["n"]["default"] == "2 * 50"
    assert data["effective_parameters"]["use_gpu"] is True
    assert data["parameter_sources"] == {"n_samples": "default", "seed": "default", "out_dir": "default",
                                         "cuts": "default", "use_gpu": "override", "n": "default",
                                         "sed": "override"}
    assert [w for w in data["warnings"] if "did you mean 'seed'?" in w]


def test_check_escapes_what_a_terminal_would_act_on(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb", "label = 'x'  # \x1b[2J cleared\n")
    proc = nbpipe_cli("check", "nb.ipynb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "  label: str = 'x'  # \\x1b[2J cleared" in proc.stdout


def parameters_of(*sources: str) -> dict[str, tuple[object, ...]]:
    found = declared(parse_notebook(notebook(*(code(s, "parameters") for s in sources)), None)) or ()
    return {p.name: (p.type, p.default, p.recorded, p.help) for p in found}


def test_declared_parameters_follow_the_cell() -> None:
    assert parameters_of("%matplotlib inline\na, b = 1, 'two'\nx = y = 0.5\n", "a = 3  # again\n"
                         "ratio = 1 / 3\nhuge = 10 ** 100000\nkeys = {1: 'a'}\npoint = (1, 2)\n"
                         "cells = [\n    1,  # first\n    2,\n]  # all\n") == {
        "b": ("str", "'two'", "two", ""),
        "x": ("float", "0.5", 0.5, ""), "y": ("float", "0.5", 0.5, ""),
        "a": ("int", "3", 3, "again"),  # the last assignment wins
        "ratio": ("float", "1 / 3", 1 / 3, ""),
        "huge": (None, "10 ** 100000", "10 ** 100000", ""),  # not worked out: too large
        "keys": ("dict", "{1: 'a'}", "{1: 'a'}", ""),  # no JSON form: recorded as written
        "point": ("tuple", "(1, 2)", [1, 2], ""),
        "cells": ("list", "[1, 2]", [1, 2], "all"),
    }
    assert parameters_of("n = (\n") == {}  # a cell that does not parse: nothing to list


# --------------------------------------------------------------------- the merged notebook records them


def test_merged_metadata_records_every_value_and_its_source(tmp_path: Path) -> None:
    analysis(tmp_path / "nb.ipynb", PARAMETERS + "n_bins = 2 * 50\nfrom pathlib import Path\n"
                                                 "base = Path('data')  # input files\n")
    (tmp_path / "p.yaml").write_text("out_dir: plots\n")
    proc = nbpipe_cli("execute", "nb.ipynb", "-f", "p.yaml", "-p", "seed", "7", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = read(tmp_path / "nb.merged.ipynb")
    nbformat.validate(merged)
    meta = merged.metadata["nbpipe"]
    assert meta["parameters"] == {"n_samples": 1000, "seed": 7, "out_dir": "plots", "cuts": [20, 30],
                                  "use_gpu": False, "n_bins": 100, "base": "Path('data')"}
    assert meta["parameter_sources"] == {"n_samples": "default", "seed": "override", "out_dir": "override",
                                         "cuts": "default", "use_gpu": "default", "n_bins": "default",
                                         "base": "default"}
    json.dumps(meta)  # plain JSON data
    printed = json.loads(text_of(merged.cells[-1]))
    assert {k: printed[k] for k in ("seed", "out_dir", "n_samples")} == {"seed": 7, "out_dir": "plots",
                                                                        "n_samples": 1000}
    injected = [c for c in merged.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n_samples" not in injected[0].source  # given values only, as papermill


@pytest.mark.parametrize("source", [
    "x = " + "[" * 5000 + "]" * 5000,  # deeper than Python parses
    "x = " + "1 + " * 5000 + "1",
    "x = 9 ** 9 ** 9",  # worked out, it would take minutes
    "%%bash\necho hi",
    "%matplotlib inline\nn = 10 ** -3  # type: ignore",
    "x = (-8) ** 0.5\ny = 1 / 0\nz = 1e400",
    "a.b = 1\nc[0] = 2\nd += 1",
])
def test_any_parameters_cell_is_listed_without_error(tmp_path: Path, source: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = analysis(tmp_path / "nb.ipynb", source)
    assert main(["check", str(src), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["parameters"]
    assert all(isinstance(p["value"], (int, float, str)) for p in listed)
    json.dumps(listed, allow_nan=False)  # plain JSON: what the merged notebook would record


def test_in_jupyter_each_cell_that_passes_a_misspelt_name_shows_the_warning(tmp_path: Path) -> None:
    """A driver notebook in a real kernel: the warning shows under the cell that called
    execute(), and again under the next cell that does."""
    import papermill

    inner = analysis(tmp_path / "inner.ipynb")
    call = f"run = nbpipe.execute({str(inner)!r}, parameters={{'n_sampels': 10}}, workers=1)\nassert run.ok"
    write(tmp_path / "driver.ipynb", code("import nbpipe"), code(call), code(call))
    papermill.execute_notebook(str(tmp_path / "driver.ipynb"), str(tmp_path / "driver.out.ipynb"),
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    ran = read(tmp_path / "driver.out.ipynb")
    for cell in ran.cells[1:]:
        shown = [o["text"] for o in cell.outputs if o.get("name") == "stderr"]
        assert any("ParameterWarning: parameters: the notebook has no parameter 'n_sampels'; "
                   "did you mean 'n_samples'?" in text for text in shown), cell.outputs
