"""The app graph (SPEC §3, nbpipe/graph.py): data, after: and file edges, cycles."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from nbbuild import code, md, notebook, read, text_of, write

from nbpipe.cli import main

from nbpipe.errors import CycleError, GraphError, TagError
from nbpipe.graph import build_pipeline
from nbpipe.parse import parse_notebook


def pipeline(*cells: Any) -> Any:
    return build_pipeline(parse_notebook(notebook(*cells)))


def edges(p: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["from"], e["to"]): e for e in p.edges()}


def test_a_reader_gets_each_name_from_the_nearest_definer_above() -> None:
    p = pipeline(code("x = 1", "app:a"), code("x = 2", "app:b"), code("y = x + 1", "app:c"),
                 code("x = 3", "app:d"))
    assert p.apps["c"].reads == {"x": "b"}
    assert set(edges(p)) == {("b", "c")}
    assert edges(p)[("b", "c")]["names"] == ["x"] and edges(p)[("b", "c")]["kinds"] == ["data"]
    assert p.apps["b"].ships == {"x": ("c",)}
    assert p.apps["a"].ships == {} and p.apps["d"].ships == {}


def test_a_name_an_app_defines_itself_first_is_not_an_input() -> None:
    p = pipeline(code("x = 1", "app:a"), code("x = 5\nprint(x)", "app:b"))
    assert p.apps["b"].reads == {}
    assert p.graph.number_of_edges() == 0


def test_a_name_defined_only_below_is_not_an_input() -> None:
    p = pipeline(code("print(later)", "app:a"), code("later = 1", "app:b"))
    assert p.apps["a"].reads == {} and p.graph.number_of_edges() == 0


def test_mutation_defines_so_later_apps_see_the_mutated_value() -> None:
    p = pipeline(code("lst = []\ncfg = {}", "app:a"), code("lst.append(1)", "app:b"),
                 code("cfg['k'] = 2", "app:c"), code("print(lst, cfg)", "app:d"))
    assert p.apps["b"].reads == {"lst": "a"}
    assert p.apps["c"].reads == {"cfg": "a"}
    assert p.apps["d"].reads == {"lst": "b", "cfg": "c"}
    assert set(edges(p)) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}


def test_mutation_inside_a_loop_defines() -> None:
    p = pipeline(code("results = []", "app:a"),
                 code("for i in range(3):\n    results.append(i)", "app:b"),
                 code("print(results)", "app:c"))
    assert p.apps["c"].reads == {"results": "b"}


def test_names_bound_by_with_and_for_are_not_taken_from_another_app() -> None:
    # Both apps bind f and i themselves; the second must not wait for (or receive
    # a closed file from) the first.
    p = pipeline(code("with open('a.txt') as f:\n    a = f.read()\nfor i in range(2):\n    pass", "app:a"),
                 code("with open('b.txt') as f:\n    b = f.read()\nfor i in range(2):\n    print(i)",
                      "app:b"))
    assert p.apps["b"].reads == {}
    assert p.graph.number_of_edges() == 0


def test_parameters_and_setup_are_available_to_every_app_without_edges() -> None:
    p = pipeline(code("n = 3", "parameters"), code("import math\nK = 2", "setup"),
                 code("y = math.sqrt(n) * K", "app:a"), code("z = n + K", "app:b"))
    assert p.parameter_names == {"n"} and p.setup_names == {"math", "K"}
    assert p.apps["a"].reads == {} and p.apps["b"].reads == {}
    assert p.graph.number_of_edges() == 0
    assert set(p.order) == {"a", "b"}


def test_an_app_that_redefines_a_setup_name_provides_it_downstream() -> None:
    p = pipeline(code("K = 2", "setup"), code("K = 10", "app:a"), code("print(K)", "app:b"))
    assert p.apps["b"].reads == {"K": "a"}


def test_after_adds_an_edge_without_data() -> None:
    p = pipeline(code("x = 1", "app:a"), code("y = 2", "app:b", "after:a"),
                 code("z = 3", "app:c", "prev:b"))
    assert edges(p)[("a", "b")]["kinds"] == ["after"] and edges(p)[("a", "b")]["names"] == []
    assert edges(p)[("b", "c")]["kinds"] == ["after"]
    assert p.order == ("a", "b", "c")
    assert p.apps["b"].spec.after == ("a",)


def test_after_and_data_on_one_edge() -> None:
    p = pipeline(code("x = 1", "app:a"), code("y = x", "app:b", "after:a"))
    assert edges(p)[("a", "b")]["kinds"] == ["after", "data"]


def test_order_is_topological_with_ties_in_notebook_order() -> None:
    p = pipeline(code("b = a", "app:late", "after:early"), code("x = 1", "app:free"),
                 code("a = 1", "app:early"))
    assert p.order == ("free", "early", "late")


@pytest.mark.parametrize("tag, target", [("after:laod", "laod"), ("prev:laod", "laod"),
                                         ("after:nowhere", "nowhere")])
def test_after_naming_no_app_is_a_tag_error_with_did_you_mean(tag: str, target: str) -> None:
    nb = notebook(code("x = 1", "app:load"), md("m"), code("y = 2", "app:b"),
                  code("z = 3", tag))
    with pytest.raises(TagError) as info:
        build_pipeline(parse_notebook(nb))
    err = info.value
    assert (err.cell_index, err.cell_id, err.tag) == (3, nb.cells[3].id, tag)
    assert f"cell 3 (id {nb.cells[3].id})" in str(err) and repr(tag) in str(err)
    assert repr(target) in str(err)
    if target == "laod":
        assert "did you mean 'load'?" in str(err)
    else:
        assert "did you mean" not in str(err)


def test_a_data_cycle_is_a_cycle_error_listing_the_apps() -> None:
    # a defines y, b reads y and defines x, then a (again) reads x
    p_cells = (code("y = 1", "app:a"), code("x = y + 1", "app:b"), code("z = x", "app:a"))
    with pytest.raises(CycleError) as info:
        pipeline(*p_cells)
    err = info.value
    assert isinstance(err, GraphError) and err.exit_code == 2
    assert {u for u, _, _ in err.cycle} == {"a", "b"}
    assert {v for _, v, _ in err.cycle} == {"a", "b"}
    message = str(err)
    assert "cycle" in message and ("a -> b" in message or "b -> a" in message)
    assert "reads y" in message and "reads x" in message


def test_an_after_cycle_is_a_cycle_error() -> None:
    with pytest.raises(CycleError) as info:
        pipeline(code("x = 1", "app:a", "after:c"), code("y = 2", "app:b", "after:a"),
                 code("z = 3", "app:c", "after:b"))
    assert [u for u, _, _ in info.value.cycle] and len(info.value.cycle) == 3
    assert {u for u, _, _ in info.value.cycle} == {"a", "b", "c"}
    assert "after:" in str(info.value)


def test_an_app_after_itself_is_a_cycle() -> None:
    with pytest.raises(CycleError) as info:
        pipeline(code("x = 1", "app:a", "after:a"))
    assert info.value.cycle == [("a", "a", "after:a")]


def test_file_edges_from_outputs_to_inputs() -> None:
    p = pipeline(code("open('data.csv', 'w').close()", "app:make", "outputs:data.csv"),
                 code("import glob", "app:parts", "outputs:parts/p1.csv", "outputs:parts/p2.csv"),
                 code("print(open('data.csv').read())", "app:use", "inputs:data.csv"),
                 code("print(1)", "app:globber", "inputs:parts/*.csv"),
                 code("print(2)", "app:unrelated", "inputs:other.csv"))
    e = edges(p)
    assert e[("make", "use")]["kinds"] == ["file"] and e[("make", "use")]["files"] == ["data.csv"]
    assert e[("parts", "globber")]["files"] == ["parts/*.csv"]
    assert set(e) == {("make", "use"), ("parts", "globber")}
    assert not any(v == "unrelated" for _, v in e)


def test_metrics_block_reads_from_apps_and_names_its_metrics() -> None:
    p = pipeline(code("acc = 0.9\nloss = 0.1", "app:train"), code("print(acc)\nloss", "metrics"))
    m = p.apps["metrics"]
    assert m.metric_names == ("acc", "loss")
    assert m.reads == {"acc": "train", "loss": "train"}
    assert p.order == ("train", "metrics")


def test_to_json_describes_apps_and_edges() -> None:
    nb = notebook(code("x = 1", "app:a", "retries:2"), code("y = x", "app:b", "timeout:5"))
    data = build_pipeline(parse_notebook(nb)).to_json()
    assert [a["name"] for a in data["apps"]] == ["a", "b"]
    assert data["apps"][0]["cells"] == [nb.cells[0].id]
    assert data["apps"][0]["ships"] == {"x": ["b"]}
    assert data["apps"][0]["options"] == {"retries": 2}
    assert data["apps"][1]["reads"] == {"x": "a"} and data["apps"][1]["options"] == {"timeout": 5.0}
    assert data["edges"] == [{"from": "a", "to": "b", "kinds": ["data"], "names": ["x"], "files": []}]


def test_an_app_split_around_a_redefinition_is_an_error_naming_the_cell() -> None:
    # Serial execution prints 1 then 2; one app cannot receive both values of x.
    split = code("print(x)", "app:c")
    with pytest.raises(GraphError) as info:
        pipeline(code("x = 1", "app:a"), code("print(x)", "app:c"), code("x = 2", "app:d"), split)
    message = str(info.value)
    assert "app 'c' reads 'x' from app 'a' at cell 1 and from app 'd' at cell 3" in message
    assert f"id {split.id}" in message and "start a new app at cell 3" in message


def test_an_app_split_around_an_unrelated_app_is_fine() -> None:
    p = pipeline(code("x = 1", "app:a"), code("print(x)", "app:c"), code("y = 2", "app:d"),
                 code("print(x, y)", "app:c"))
    assert p.apps["c"].reads == {"x": "a", "y": "d"}


def test_a_function_read_from_another_app_brings_the_globals_it_uses_when_called() -> None:
    p = pipeline(code("def f():\n    return helper() + limit\n\ndef helper():\n    return 1", "app:a"),
                 code("limit = 5", "app:b"), code("print(f())", "app:c"))
    assert p.apps["c"].reads == {"f": "a", "helper": "a", "limit": "b"}
    assert set(edges(p)) == {("a", "c"), ("b", "c")}


def test_a_function_called_in_its_own_app_brings_the_globals_another_app_defines() -> None:
    # ``scale`` was not read: the app failed with a NameError (--split auto groups so).
    p = pipeline(code("def f(x):\n    return x * scale", "app:a"), code("scale = 2", "app:b"),
                 code("print(f(3))", "app:a"))
    assert p.apps["a"].reads == {"scale": "b"}
    assert set(edges(p)) == {("b", "a")}


def test_ten_thousand_inputs_and_outputs_check_in_linear_time(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Every input was compared with every output: 14 s for 10,000 of each.
    n = 10_000
    path = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", *[f"outputs:f{i}.txt" for i in range(n)]),
                 code("y = 2", "app:b", *[f"inputs:f{i}.txt" for i in range(n)]),
                 code("z = 3", "app:c", "inputs:f1*.txt"))
    started = time.perf_counter()
    assert main(["check", str(path)]) == 0
    assert time.perf_counter() - started < 3.0
    out = capsys.readouterr().out
    assert "a -> b (" in out and "a -> c (file f1*.txt)" in out


def _mermaid(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Node id -> label, and the edges as (id, id), of ``nbpipe graph --format mermaid``."""
    assert main(["graph", str(path), "--format", "mermaid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "flowchart TD"
    nodes = dict(re.fullmatch(r'\s+(\S+)\["(.*)"\]', line).groups() for line in lines  # type: ignore[union-attr]
                 if "[" in line)
    arrows = [line.split() for line in lines[1:] if "[" not in line]
    return nodes, [(a[0], a[-1]) for a in arrows]


def test_mermaid_gives_my_app_and_my_underscore_app_their_own_nodes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "nb.ipynb", code("x = 1", "app:my-app"), code("y = x", "app:my_app"),
                 code("z = y", "app:end"))
    nodes, arrows = _mermaid(path, capsys)
    assert sorted(nodes.values()) == ["end", "my-app", "my_app"]
    name = {node: label for node, label in nodes.items()}
    assert [(name[u], name[v]) for u, v in arrows] == [("my-app", "my_app"), ("my_app", "end")]
    assert "end" not in nodes  # a Mermaid keyword cannot be a node id


def test_graph_labels_with_quotes_and_bars_stay_inside_their_label(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "nb.ipynb", code("x = 1", "app:a", 'outputs:we"ird|na}me'),
                 code("y = 2", "app:b", 'inputs:we"ird|na}me'))
    nodes, arrows = _mermaid(path, capsys)
    assert len(arrows) == 1 and len(nodes) == 2
    assert main(["graph", str(path), "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    edge = next(line for line in dot.splitlines() if "->" in line)
    assert edge.count('"') - edge.count('\\"') == 6, edge  # from, to and the label, each quoted once


def test_a_merged_notebook_runs_like_its_source(tmp_path: Path) -> None:
    # The merged notebook's banner and injected-parameters cell are nbpipe's own;
    # fed back to nbpipe they were duplicated, and the old injected cell became app main.
    src = write(tmp_path / "nb.ipynb", code("n = 1", "parameters"), code("print(n * 10)", "app:a"),
                code("raise ValueError('boom')", "app:bad"))
    assert main(["execute", str(src), "-p", "n", "2", "--workers", "1"]) == 1
    merged = tmp_path / "nb.merged.ipynb"
    first = read(merged)
    assert sum("nbpipe-error" in c.metadata.get("tags", []) for c in first.cells) == 2  # banner, anchor
    again = parse_notebook(read(merged))
    assert list(again.apps) == ["a", "bad"]
    assert [c.source for c in again.cells] == [c.source for c in read(src).cells]
    rerun = tmp_path / "again.ipynb"
    assert main(["execute", str(merged), "-o", str(rerun), "-p", "n", "3", "--workers", "1"]) == 1
    second = read(rerun)
    assert sum("nbpipe-error" in c.metadata.get("tags", []) for c in second.cells) == 2
    injected = [c for c in second.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert [c.source for c in injected] == ["# Parameters\nn = 3\n"]
    assert "30" in text_of(next(c for c in second.cells if c.source == "print(n * 10)"))


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_compile_into_a_directory_it_cannot_make_is_one_line_and_exit_2(
        where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "nb.ipynb", code("x = 1", "app:a"))
    (tmp_path / "a-file").write_text("not a directory")
    assert main(["compile", str(path), "-d", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nbpipe: error: ") and "\n" not in err and "-d" in err, err
