"""The tag grammar and grouping rules of SPEC §2 (nbpipe/parse.py), and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbbuild import code, md, nbpipe_cli, notebook, write

from nbpipe.cli import main
from nbpipe.errors import NbpipeError, TagError
from nbpipe.graph import build_pipeline
from nbpipe.parse import MapSpec, parse_notebook, read_notebook


def parse(*cells: Any, **kwargs: Any) -> Any:
    return parse_notebook(notebook(*cells, **kwargs))


def roles(parsed: Any) -> list[tuple[str, str | None]]:
    return [(c.role, c.app) for c in parsed.cells]


# --------------------------------------------------------------------- grouping


def test_untagged_cells_join_the_app_above() -> None:
    p = parse(code("x = 1", "app:a"), code("y = 2"), code("z = 3", "app:b"), code("w = 4"),
              code("v = 5", "app:a"))
    assert {n: s.cells for n, s in p.apps.items()} == {"a": (0, 1, 4), "b": (2, 3)}
    assert roles(p) == [("app", "a"), ("app", "a"), ("app", "b"), ("app", "b"), ("app", "a")]


def test_untagged_cells_join_the_setup_block_above() -> None:
    p = parse(code("import math", "setup"), code("def f(): return 1"), code("x = f()", "app:a"))
    assert roles(p) == [("setup", None), ("setup", None), ("app", "a")]
    assert list(p.apps) == ["a"]


def test_untagged_cells_before_any_block_form_app_main() -> None:
    p = parse(code("x = 1"), code("y = 2"), code("z = x + y", "app:a"))
    assert {n: s.cells for n, s in p.apps.items()} == {"main": (0, 1), "a": (2,)}


def test_a_notebook_without_tags_is_one_app_main() -> None:
    p = parse(md("# Title"), code("x = 1"), md("text"), code("print(x)"))
    assert list(p.apps) == ["main"]
    assert p.apps["main"].cells == (1, 3)
    assert [c.role for c in p.cells] == ["", "app", "", "app"]


def test_markdown_cells_stay_put_and_do_not_interrupt_a_block() -> None:
    # A tag on a markdown cell means nothing to nbpipe.
    p = parse(code("x = 1", "app:a"), md("## why", "app:zzz"), code("y = 2"))
    assert list(p.apps) == ["a"]
    assert p.apps["a"].cells == (0, 2)
    assert p.cells[1].role == "" and p.cells[1].app is None


def test_skip_does_not_interrupt_the_block_around_it() -> None:
    p = parse(code("x = 1", "app:a"), code("slow()", "skip"), code("y = 2"))
    assert p.apps["a"].cells == (0, 2)
    assert (p.cells[1].role, p.cells[1].app) == ("skip", None)
    assert all(1 not in s.cells for s in p.apps.values())


def test_skip_inside_setup_keeps_the_setup_block() -> None:
    p = parse(code("import os", "setup"), code("x()", "skip"), code("import sys"))
    assert roles(p) == [("setup", None), ("skip", None), ("setup", None)]
    assert p.apps == {}


def test_parameters_and_metrics_are_just_their_tagged_cells() -> None:
    p = parse(code("x = 1", "app:a"), code("n = 3", "parameters"), code("y = 2"),
              code("print(x)", "metrics"), code("z = 3"))
    assert roles(p) == [("app", "a"), ("parameters", None), ("app", "a"),
                        ("metrics", "metrics"), ("app", "a")]
    assert p.apps["a"].cells == (0, 2, 4)
    assert p.apps["metrics"].cells == (3,) and p.apps["metrics"].metrics
    assert not p.apps["a"].metrics


def test_untagged_cell_after_parameters_at_the_top_forms_main() -> None:
    p = parse(code("n = 3", "parameters"), code("y = n * 2"))
    assert roles(p) == [("parameters", None), ("app", "main")]


def test_unknown_tags_are_left_alone() -> None:
    tags = ("remove-input", "hide-input", "foo:bar", "app:a", "papermill-error-cell-tag")
    p = parse(code("x = 1", *tags), code("y = 2", "remove-cell"))
    assert list(p.apps) == ["a"]
    assert p.apps["a"].cells == (0, 1)  # a cell with only unknown tags is "untagged"
    assert p.cells[0].tags == tags
    assert list(p.nb.cells[0].metadata["tags"]) == list(tags)
    assert p.apps["a"] == parse(code("x = 1", "app:a"), code("y = 2")).apps["a"]


def test_parse_does_not_modify_the_callers_notebook_and_fills_missing_ids() -> None:
    nb = notebook(code("x = 1", "app:a"), code("y = 2", "app:b"))
    nb.cells[1]["id"] = nb.cells[0]["id"]  # a duplicate id, as copy-pasted notebooks have
    before = nb.cells[1]["id"]
    p = parse_notebook(nb)
    assert nb.cells[1]["id"] == before
    ids = [c.id for c in p.cells]
    assert len(set(ids)) == 2 and ids[0] == before


# --------------------------------------------------------------------- options and aliases


def test_every_option_tag_reaches_the_app() -> None:
    p = parse(code("x = 1", "app:a", "after:b", "map:item=items", "executor:gpu",
                   "container:ghcr.io/org/img:1.2", "cpus:4", "gpus:1", "memory:4GB",
                   "walltime:01:30:00", "retries:3", "timeout:2.5", "inputs:data/*.csv",
                   "outputs:out.csv", "cache:off"),
              code("y = 2", "app:b"))
    a = p.apps["a"]
    assert a.after == ("b",)
    assert a.map == MapSpec("item", "items")
    assert (a.executor, a.container) == ("gpu", "ghcr.io/org/img:1.2")
    assert a.resources.as_dict() == {"cpus": 4, "gpus": 1, "memory": 4 << 30, "walltime": 5400}
    assert (a.retries, a.timeout) == (3, 2.5)
    assert (a.inputs, a.outputs, a.cache) == (("data/*.csv",), ("out.csv",), False)
    b = p.apps["b"]
    assert (b.retries, b.timeout, b.cache, b.resources.as_dict()) == (0, None, True, {})


def test_options_on_a_later_cell_of_the_app_apply_to_the_app() -> None:
    p = parse(code("x = 1", "app:a"), code("y = 2", "retries:2", "outputs:o1"),
              code("z = 3", "app:a", "outputs:o2"))
    assert p.apps["a"].retries == 2
    assert p.apps["a"].outputs == ("o1", "o2")


@pytest.mark.parametrize("size, expected", [("512MiB", 512 << 20), ("1.5G", int(1.5 * (1 << 30))),
                                            ("100", 100), ("2kb", 2048), ("1TiB", 1 << 40)])
def test_memory_sizes(size: str, expected: int) -> None:
    assert parse(code("x", "app:a", f"memory:{size}")).apps["a"].resources.memory == expected


@pytest.mark.parametrize("tag, check", [
    ("imports", lambda p: p.cells[0].role == "setup"),
    ("functions", lambda p: p.cells[0].role == "setup"),
    ("pipeline-parameters", lambda p: p.cells[0].role == "parameters"),
    ("pipeline-metrics", lambda p: p.cells[0].role == "metrics" and p.apps["metrics"].metrics),
    ("step:train", lambda p: "train" in p.apps and p.cells[0].app == "train"),
    ("block:train", lambda p: "train" in p.apps and p.cells[0].app == "train"),
    ("prev:load", lambda p: p.apps["main"].after == ("load",)),
    ("image:docker.io/lib/python:3.11", lambda p: p.apps["main"].container == "docker.io/lib/python:3.11"),
    ("limit:nvidia.com/gpu:2", lambda p: p.apps["main"].resources.gpus == 2),
    ("cache:disabled", lambda p: p.apps["main"].cache is False),
    ("cache:enabled", lambda p: p.apps["main"].cache is True),
])
def test_kale_aliases(tag: str, check: Any) -> None:
    # cell 0 carries the alias; cell 1 is app "load" so prev:load has a target.
    p = parse(code("x = 1", tag), code("y = 2", "app:load"))
    assert check(p), roles(p)


def test_notebook_level_defaults_and_their_override() -> None:
    p = parse(code("x = 1", "app:a"), code("y = 2", "app:b", "retries:5", "timeout:3"),
              nbpipe={"retries": 2, "timeout": 10, "container": "img:1"})
    assert (p.apps["a"].retries, p.apps["a"].timeout, p.apps["a"].container) == (2, 10.0, "img:1")
    assert (p.apps["b"].retries, p.apps["b"].timeout) == (5, 3.0)


# --------------------------------------------------------------------- bad input


BAD_TAGS = [
    (("app:a", "retries:x"), "retries:x", "whole number"),
    (("app:a", "retries:-1"), "retries:-1", "whole number"),
    (("app:a", "retries:"), "retries:", "needs a value"),
    (("app:a", "timeout:-1"), "timeout:-1", "seconds > 0"),
    (("app:a", "timeout:0"), "timeout:0", "seconds > 0"),
    (("app:a", "timeout:soon"), "timeout:soon", "seconds > 0"),
    (("app:a", "timeout:nan"), "timeout:nan", "seconds > 0"),
    (("app:a", "memory:lots"), "memory:lots", "size such as"),
    (("app:a", "walltime:1h"), "walltime:1h", "HH:MM:SS"),
    (("app:a", "walltime:1:75:00"), "walltime:1:75:00", "HH:MM:SS"),
    (("app:a", "cpus:two"), "cpus:two", "whole number"),
    (("app:a", "gpus:1.5"), "gpus:1.5", "whole number"),
    (("app:a", "limit:cpu:2"), "limit:cpu:2", "limit:nvidia.com/gpu:N"),
    (("app:a", "cache:maybe"), "cache:maybe", "cache:"),
    (("app:1abc",), "app:1abc", "must match"),
    (("app:a b",), "app:a b", "must match"),
    (("app:a.b",), "app:a.b", "must match"),
    (("step:-x",), "step:-x", "must match"),
    (("app:a", "app:b"), "app:b", "belongs to one app"),
    (("app:a", "step:b"), "step:b", "belongs to one app"),
    (("app:setup",), "app:setup", "reserved"),
    (("app:parameters",), "app:parameters", "reserved"),
    (("app:metrics",), "app:metrics", "reserved"),
    (("block:skip",), "block:skip", "reserved"),
    (("app:injected-parameters",), "app:injected-parameters", "reserved"),
    (("app:a", "map:x"), "map:x", "ITEM=ITERABLE"),
    (("app:a", "map:=xs"), "map:=xs", "ITEM=ITERABLE"),
    (("app:a", "map:x=1xs"), "map:x=1xs", "ITEM=ITERABLE"),
    (("app:a", "map:x=xs.items()"), "map:x=xs.items()", "ITEM=ITERABLE"),
    (("app:a", "after:no way"), "after:no way", "app name"),
    (("app:a", "executor:gpu;reboot"), "executor:gpu;reboot", "label"),
    (("app:a", "container:x;touch /tmp/p"), "container:x;touch /tmp/p", "image reference"),
    (("app:a", "image:$(touch /tmp/p)"), "image:$(touch /tmp/p)", "image reference"),
    (("app:a", "container:img`id`"), "container:img`id`", "image reference"),
    (("app:a", "container:img|sh"), "container:img|sh", "image reference"),
    (("app:a", "container:--privileged"), "container:--privileged", "image reference"),
    (("app:a", "image:-v/:/host"), "image:-v/:/host", "image reference"),
    (("app:a", "retries:1", "retries:2"), "retries:2", "conflicts"),
    (("parameters", "setup"), "setup", "cannot be both"),
    (("parameters", "retries:2"), "retries:2", "apply to apps"),
    (("setup", "timeout:5"), "timeout:5", "apply to apps"),
    (("metrics", "cpus:2"), "cpus:2", "apply to apps"),
    (("app:a", "skip"), "skip", "cannot be both"),
    (("app:a", "setup"), "setup", "cannot be both"),
]


def assert_names_cell(err: TagError, index: int, cell_id: str, tag: str) -> None:
    """The error names the cell (index and id) and the tag, in its fields and its message."""
    assert (err.cell_index, err.cell_id, err.tag) == (index, cell_id, tag)
    message = str(err)
    assert f"cell {index} " in message
    assert cell_id in message
    assert repr(tag) in message or tag in message


@pytest.mark.parametrize("tags, tag, problem", BAD_TAGS, ids=[" ".join(t[0]) for t in BAD_TAGS])
def test_bad_tag_is_an_error_naming_cell_id_and_tag(tags: tuple[str, ...], tag: str, problem: str) -> None:
    # The bad cell is the third cell (index 2), after a markdown cell and an app.
    cells = [md("# intro"), code("x = 1", "app:first"), code("y = 2", *tags)]
    nb = notebook(*cells)
    with pytest.raises(TagError) as info:
        parse_notebook(nb)
    assert_names_cell(info.value, 2, nb.cells[2].id, tag)
    assert problem in info.value.problem
    assert isinstance(info.value, NbpipeError) and info.value.exit_code == 2


def test_conflicting_option_on_a_later_cell_names_that_cell() -> None:
    nb = notebook(code("x = 1", "app:a", "retries:1"), md("m"), code("y = 2", "app:a", "retries:2"))
    with pytest.raises(TagError) as info:
        parse_notebook(nb)
    assert_names_cell(info.value, 2, nb.cells[2].id, "retries:2")
    assert "from cell 0" in info.value.problem


def test_shell_metacharacters_in_a_tag_never_reach_a_shell(tmp_path: Path) -> None:
    planted = tmp_path / "p"
    tmp_p = Path("/tmp/p")
    existed = tmp_p.exists()
    path = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", f"container:x;touch {planted}"),
                 code("y = 2", "app:b", "image:x;touch /tmp/p"))
    with pytest.raises(TagError):
        parse_notebook(__import__("nbformat").read(path, as_version=4))
    proc = nbpipe_cli("execute", path, "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "container:x;touch" in proc.stderr and "cell 0" in proc.stderr
    assert not planted.exists()
    assert tmp_p.exists() == existed
    assert not (tmp_path / "nb.merged.ipynb").exists()


# ------------------------------------------------- malformed notebooks (exit 2, one line)


def _raw(*cells: Any, nbpipe: Any = None, **metadata: Any) -> dict[str, Any]:
    """A notebook as plain JSON data, so a test can break any part of it."""
    nb = json.loads(nbformat.writes(notebook(*cells)))
    if nbpipe is not None:
        nb["metadata"]["nbpipe"] = nbpipe
    nb["metadata"].update(metadata)
    return nb


def _broken(change: Any) -> dict[str, Any]:
    nb = _raw(code("x = 1", "app:a"), code("y = x", "app:b"))
    change(nb)
    return nb


def _set(path: str, value: Any) -> Any:
    """A change that sets ``nb[k1][k2]...`` (``cells.0.source``); ``value`` DELETE removes the key."""
    def change(nb: dict[str, Any]) -> None:
        *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = nb
        for key in keys:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return change


DELETE = object()

#: (notebook, what the one-line error must say)
MALFORMED = {
    "lone surrogate": (_broken(_set("cells.0.source", "x = '\ud800'")), "cell 0"),
    "retries x": (_raw(code("x = 1"), nbpipe={"retries": "x"}), "metadata.nbpipe.retries"),
    "retries empty": (_raw(code("x = 1"), nbpipe={"retries": ""}), "metadata.nbpipe.retries"),
    "retries null": (_raw(code("x = 1"), nbpipe={"retries": None}), "metadata.nbpipe.retries"),
    "retries negative": (_raw(code("x = 1"), nbpipe={"retries": -1}), "metadata.nbpipe.retries"),
    "retries true": (_raw(code("x = 1"), nbpipe={"retries": True}), "metadata.nbpipe.retries"),
    "timeout negative": (_raw(code("x = 1"), nbpipe={"timeout": -1}), "metadata.nbpipe.timeout"),
    "timeout zero": (_raw(code("x = 1"), nbpipe={"timeout": 0}), "metadata.nbpipe.timeout"),
    "timeout x": (_raw(code("x = 1"), nbpipe={"timeout": "x"}), "metadata.nbpipe.timeout"),
    "timeout huge": (_raw(code("x = 1"), nbpipe={"timeout": 1e10}), "metadata.nbpipe.timeout"),
    "container 5": (_raw(code("x = 1"), nbpipe={"container": 5}), "metadata.nbpipe.container"),
    "nbpipe 5": (_raw(code("x = 1"), nbpipe=5), "metadata.nbpipe"),
    "tags 5": (_broken(_set("cells.1.metadata.tags", 5)), "cell 1"),
    "tags a string": (_broken(_set("cells.1.metadata.tags", "app:b")), "cell 1"),
    "tag not a string": (_broken(_set("cells.1.metadata.tags", ["app:b", 5])), "cell 1"),
    "no source": (_broken(_set("cells.1.source", DELETE)), "cell 1"),
    "unknown cell type": (_broken(_set("cells.1.cell_type", "weird")), "cell 1"),
    "cell metadata 5": (_broken(_set("cells.1.metadata", 5)), "cell 1"),
    "kernelspec 5": (_raw(code("x = 1"), kernelspec=5), "metadata.kernelspec"),
    "timeout tag huge": (_raw(code("x = 1", "app:a", "timeout:1e10")), "timeout:1e10"),
    "walltime tag huge": (_raw(code("x = 1", "app:a", "walltime:99999999999:00:00")), "walltime:"),
    "retries tag huge": (_raw(code("x = 1", "app:a", "retries:99999999999999999999")), "retries:"),
    "cpus tag huge": (_raw(code("x = 1", "app:a", "cpus:99999999999999999999")), "cpus:"),
    "memory tag huge": (_raw(code("x = 1", "app:a", "memory:99999999999999TB")), "memory:"),
    "retries tag superscript": (_raw(code("x = 1", "app:a", "retries:\u00b2")), "retries:"),
}


@pytest.mark.parametrize("command", ["check", "compile", "graph", "execute"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_notebook_is_one_line_and_exit_2(case: str, command: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    nb, says = MALFORMED[case]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))  # ASCII escapes keep a lone surrogate writable
    extra = {"compile": ["-d", str(tmp_path / "out")], "execute": ["--workers", "1"]}.get(command, [])
    assert main([command, str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nbpipe: error: ") and "\n" not in err, err
    assert says in err
    assert not (tmp_path / "nb.merged.ipynb").exists()


def test_a_330_term_expression_is_analysed_as_python_runs_it() -> None:
    # Python compiles it; ast.unparse at the default recursion limit did not.
    long_sum = "+".join(["a"] * 330)
    p = build_pipeline(parse(code("a = 1", "app:a"), code(f"total = {long_sum}", "app:b"),
                             code("print(total)", "app:c")))
    assert p.apps["b"].reads == {"a": "a"}
    assert p.apps["c"].reads == {"total": "b"}


def test_an_expression_too_deep_for_python_fails_only_when_it_runs() -> None:
    too_deep = "+".join(["a"] * 50000)
    p = build_pipeline(parse(code("a = 1", "app:a"), code(f"total = {too_deep}", "app:b")))
    assert set(p.apps) == {"a", "b"}


def test_a_notebook_without_kernelspec_runs_with_python3(tmp_path: Path) -> None:
    nb = _raw(code("x = 1", "app:a"), code("print(x + 1)", "app:b"))
    del nb["metadata"]["kernelspec"], nb["metadata"]["language_info"]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert parse_notebook(read_notebook(path)).kernel_name == "python3"
    assert main(["execute", str(path), "--workers", "1"]) == 0
    merged = nbformat.read(tmp_path / "nb.merged.ipynb", as_version=4)
    assert "2" in merged.cells[1].outputs[0]["text"]


def test_an_nbformat_3_notebook_runs(tmp_path: Path) -> None:
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"}, "worksheets": [{
        "metadata": {}, "cells": [
            {"cell_type": "code", "input": "x = 20", "language": "python", "metadata": {},
             "outputs": [], "prompt_number": 1},
            {"cell_type": "code", "input": "print(x + 1)", "language": "python", "metadata": {},
             "outputs": [], "prompt_number": 2}]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(v3))
    assert main(["execute", str(path), "--workers", "1"]) == 0
    merged = nbformat.read(tmp_path / "nb.merged.ipynb", as_version=4)
    assert "21" in merged.cells[1].outputs[0]["text"]


def test_duplicate_tags_are_merged_once_so_the_run_and_its_notebook_agree(tmp_path: Path) -> None:
    nb = _raw(code("x = 1", "app:a"), code("print(x)", "app:b"))
    nb["cells"][0]["metadata"]["tags"] = ["app:a", "app:a", "hide-input", "hide-input"]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    parsed = parse_notebook(read_notebook(path))
    assert parsed.cells[0].tags == ("app:a", "hide-input")
    assert main(["execute", str(path), "--workers", "1"]) == 0
    merged = nbformat.read(tmp_path / "nb.merged.ipynb", as_version=4)
    assert merged.cells[0].metadata.tags == ["app:a", "hide-input"]
