"""The report's figures: the app graph and the timeline (nbpipe/layout.py, templates/nbpipe/figures.j2)."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from nbbuild import code, md, nbpipe_cli, notebook, read

from nbpipe import layout
from nbpipe.render import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def graph_meta(names: list[str], pairs: list[tuple[str, str]], **apps: dict[str, Any]) -> dict[str, Any]:
    """``metadata.nbpipe`` with the graph of ``names`` and ``pairs`` (data edges) and the ``apps`` records."""
    return {"graph": {"apps": [{"name": n, "cells": [f"c-{n}"]} for n in names],
                      "edges": [{"from": u, "to": v, "kinds": ["data"], "names": [f"{u}_out"], "files": []}
                                for u, v in pairs]},
            "apps": {n: {"status": "completed", **apps.get(n, {})} for n in names}}


def random_dag(seed: int, n: int = 14) -> tuple[list[str], list[tuple[str, str]]]:
    rng = random.Random(seed)
    names = [f"app{i}" for i in range(n)]
    pairs = [(names[i], names[j]) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.18]
    return names, pairs


def crossings(d: dict[str, Any]) -> int:
    """Pairs of edges between the same two columns whose ends are in opposite vertical order."""
    spans = [(e["points"][0], e["points"][-1]) for e in d["edges"]]
    count = 0
    for i, (a0, a1) in enumerate(spans):
        for b0, b1 in spans[i + 1:]:
            if a0[0] == b0[0] and a1[0] == b1[0] and (a0[1] - b0[1]) * (a1[1] - b1[1]) < 0:
                count += 1
    return count


@pytest.mark.parametrize("seed", range(12))
def test_every_edge_goes_right_and_no_two_nodes_overlap(seed: int) -> None:
    names, pairs = random_dag(seed)
    d = layout.dag(graph_meta(names, pairs))
    assert d is not None
    box = {n["name"]: n for n in d["nodes"]}
    assert sorted(box) == sorted(names)
    for u, v in pairs:  # layers respect the edges: a producer is in a column left of its consumer
        assert box[u]["x"] + box[u]["w"] < box[v]["x"]
    nodes = list(box.values())
    for i, a in enumerate(nodes):
        assert a["x"] >= 0 and a["y"] >= 0
        assert a["x"] + a["w"] <= d["width"] and a["y"] + a["h"] <= d["height"]
        for b in nodes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, (a["name"], b["name"])
    for e in d["edges"]:  # each edge starts on its producer's right side and ends on its consumer's left side
        (x0, y0), (x1, y1) = e["points"][0], e["points"][-1]
        src, dst = box[e["from"]], box[e["to"]]
        assert x0 == src["x"] + src["w"] and src["y"] <= y0 <= src["y"] + src["h"]
        assert x1 == dst["x"] and dst["y"] <= y1 <= dst["y"] + dst["h"]


def test_the_ordering_undoes_crossings_the_notebook_order_would_draw() -> None:
    # a_i feeds b_(5-i): in the notebook's order every pair of edges crosses (6 crossings)
    a, b = [f"a{i}" for i in range(1, 5)], [f"b{i}" for i in range(1, 5)]
    pairs = [(a[i], b[3 - i]) for i in range(4)] + [(b[i], "end") for i in range(4)]
    d = layout.dag(graph_meta([*a, *b, "end"], pairs))
    assert d is not None
    assert crossings(d) == 0


def test_edges_are_labelled_with_what_flows_shortened() -> None:
    meta = graph_meta(["load", "fit", "tidy"], [])
    meta["graph"]["edges"] = [
        {"from": "load", "to": "fit", "kinds": ["data"], "files": [],
         "names": ["chunks", "mass", "momentum_x", "momentum_y"]},
        {"from": "load", "to": "tidy", "kinds": ["file"], "names": [], "files": ["out/histogram.csv"]},
        {"from": "fit", "to": "tidy", "kinds": ["after"], "names": [], "files": []},
    ]
    d = layout.dag(meta)
    assert d is not None
    edges = {(e["from"], e["to"]): e for e in d["edges"]}
    assert edges["load", "fit"]["label"] == "chunks, mass +2"
    assert "momentum_y" in edges["load", "fit"]["title"]  # the tooltip names them all
    assert (edges["load", "tidy"]["kind"], edges["load", "tidy"]["label"]) == ("file", "histogram.csv")
    assert (edges["fit", "tidy"]["kind"], edges["fit", "tidy"]["label"]) == ("after", "")


def test_nodes_link_to_their_first_cell_when_the_page_has_it() -> None:
    meta = graph_meta(["load", "fit"], [("load", "fit")])
    d = layout.dag(meta, cell_ids={"c-load"})
    assert d is not None
    assert {n["name"]: n["href"] for n in d["nodes"]} == {"load": "#cell-id=c-load", "fit": None}


def test_no_figure_without_a_graph_or_for_a_huge_one() -> None:
    assert layout.dag({}) is None
    names = [f"a{i}" for i in range(layout.MAX_APPS + 1)]
    assert layout.dag(graph_meta(names, list(zip(names, names[1:])))) is None
    assert layout.dag(graph_meta(names[:layout.MAX_APPS], [])) is not None


def test_no_timeline_from_metadata_without_times() -> None:
    assert layout.timeline({}) is None
    old = graph_meta(["load", "fit"], [("load", "fit")], load={"duration": 1.0, "host": "h"})
    assert layout.timeline(old) is None


def tasks_meta(*tasks: tuple[str, str, float, float, float]) -> dict[str, Any]:
    """Apps (name, host, submit, start, end)."""
    names = [t[0] for t in tasks]
    return graph_meta(names, [], **{name: {"host": host, "submit_time": 1000 + s, "start_time": 1000 + a,
                                           "end_time": 1000 + b} for name, host, s, a, b in tasks})


@pytest.mark.parametrize("seed", range(8))
def test_tasks_on_one_lane_never_overlap_in_time(seed: int) -> None:
    rng = random.Random(seed)
    tasks = []
    for i in range(60):
        start = rng.uniform(0, 100)
        tasks.append((f"t{i}", rng.choice(["alpha", "beta"]), start, start, start + rng.uniform(0.1, 20)))
    t = layout.timeline(tasks_meta(*tasks))
    assert t is not None and len(t["bars"]) == 60
    by_row: dict[int, list[dict[str, Any]]] = {}
    for bar in t["bars"]:
        by_row.setdefault(bar["row"], []).append(bar)
    for row, bars in by_row.items():
        bars.sort(key=lambda b: b["start"])
        assert all(a["end"] <= b["start"] for a, b in zip(bars, bars[1:])), row
    hosts = [r["host"] for r in t["rows"]]
    assert hosts == sorted(hosts, key=hosts.index) and set(hosts) <= {"alpha", "beta"}  # a host's lanes together
    # lanes are few: never more than the most tasks running at once on that host
    for host in set(hosts):
        mine = [(s, e) for name, h, _, s, e in tasks if h == host]
        most = max(sum(1 for s, e in mine if s <= at < e) for at, _ in mine)
        assert hosts.count(host) == most


def test_queue_wait_is_drawn_only_when_significant() -> None:
    # waits of 50 s, 0.1 s (under 0.2 s) and 0.5 s (under 2% of the 1000 s run)
    t = layout.timeline(tasks_meta(("batch", "n1", 0, 50, 100), ("quick", "n1", 100, 100.1, 200),
                                   ("later", "n2", 200, 200.5, 1000)))
    assert t is not None
    bars = {b["app"]: b for b in t["bars"]}
    assert [q["title"] for q in t["queue"]] == ["batch queued 50.0 s"]
    (q,) = t["queue"]
    assert q["row"] == bars["batch"]["row"] and q["x"] + q["w"] == pytest.approx(bars["batch"]["x"], abs=0.2)
    assert "queued 50.0 s" in bars["batch"]["title"] and "queued 0.50 s" in bars["later"]["title"]


def test_a_cached_app_is_a_thin_marker() -> None:
    meta = tasks_meta(("fresh", "h", 0, 0, 50), ("hit", "h", 50, 50, 50.01))
    meta["apps"]["hit"]["status"] = "cached"
    t = layout.timeline(meta)
    assert t is not None
    bars = {b["app"]: b for b in t["bars"]}
    assert bars["hit"]["cached"] and bars["hit"]["w"] == 3 and bars["hit"]["status"] == "cached"
    assert bars["fresh"]["w"] > 100


def big_map(n: int, workers: int = 4) -> dict[str, Any]:
    items = [{"index": i, "item": str(i), "status": "failed" if i == 77 else "completed", "host": "node1",
              "submit_time": 1000.0, "start_time": 1000.0 + (i // workers) * 0.01,
              "end_time": 1000.0 + (i // workers) * 0.01 + 0.009} for i in range(n)]
    return graph_meta(["work"], [], work={"status": "failed", "host": "node1", "items": items,
                                          "submit_time": 1000.0, "start_time": 1000.0, "end_time": 1100.0})


def test_ten_thousand_items_make_a_bounded_number_of_bars() -> None:
    t = layout.timeline(big_map(10_000))
    assert t is not None
    assert len(t["rows"]) == 4 and len(t["bars"]) <= layout.MAX_BARS
    assert sum(b["count"] for b in t["bars"]) == 10_000  # every item is in a bar
    (failed,) = [b for b in t["bars"] if b["status"] == "failed"]  # the failed item stays a bar of its own
    assert failed["count"] == 1 and failed["name"] == "work[77]"
    mixed = big_map(10_000)
    for item in mixed["apps"]["work"]["items"]:
        if item["index"] // 4 % 2:  # statuses alternate on each lane: bars of one status would be too many
            item["status"] = "failed"
    t = layout.timeline(mixed)
    assert t is not None and len(t["bars"]) <= layout.MAX_BARS
    assert len(t["bars"]) == 4 and {b["status"] for b in t["bars"]} == {"failed"}  # a merged bar: its worst
    html = render_figures(notebook(code("x = 1"), nbpipe=big_map(10_000)))
    assert html.count("<rect") < 100
    small = layout.timeline(big_map(100))
    assert small is not None and len(small["bars"]) == 100  # below the limit: one bar per item


def render_figures(nb: Any, tmp: Path | None = None) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as where:
        return render_html(nb, Path(tmp or where) / "page.html").read_text()


def test_hostile_strings_are_escaped_in_the_svg() -> None:
    evil = '<script>alert(1)</script>"\'&'
    meta = graph_meta(["load", "fit"], [("load", "fit")])
    meta["graph"]["edges"][0].update(names=[], files=[f"{evil}.csv"], kinds=["file"])
    meta["apps"]["load"].update(host=evil, submit_time=0.0, start_time=0.5, end_time=2.0, reason=evil)
    meta["apps"]["fit"].update(host="h", submit_time=2.0, start_time=2.0, end_time=3.0, status=evil,
                               items=[{"index": 0, "item": evil, "host": evil, "status": "completed",
                                       "submit_time": 2.0, "start_time": 2.1, "end_time": 3.0}])
    html = render_figures(notebook(code("x = 1"), nbpipe=meta))
    start = html.index('<figure class="nbpipe-figure nbpipe-dag"')
    figures = html[start:html.index("</figure>", html.index('<figure class="nbpipe-figure nbpipe-timeline"'))]
    assert figures.count("<svg") == 2
    assert "<script>alert" not in figures and "&lt;script&gt;alert(1)&lt;/script&gt;" in figures
    assert not re.search(r'="[^"]*"\'&', figures)  # no attribute closed early by a quote


def map_notebook(path: Path) -> Path:
    import nbformat

    nb = notebook(
        md("# Figures"),
        code("chunks = list(range(4))\nscale = 2", "app:load"),
        code("part = sum(range(chunk * 10)) * scale", "app:square", "map:chunk=chunks"),
        code("total = sum(part)\nprint('total', total)", "app:merge"),
        code("check = total > 0\nprint('check', check)", "app:check"),
    )
    nbformat.write(nb, path)
    return path


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_the_report_draws_the_graph_and_the_timeline_in_a_browser(tmp_path: Path) -> None:
    nb = map_notebook(tmp_path / "fig.ipynb")
    done = nbpipe_cli("execute", nb, "-o", "merged.ipynb", "--html", "report.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    browse = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browse, "--dump-dom", (tmp_path / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    svgs = re.findall(r'<svg [^>]*role="img"[^>]*>', dom)
    assert len(svgs) == 2 and 'aria-label="Graph of 4 apps and 3 edges"' in svgs[0]
    apps = re.findall(r'<g class="nbpipe-node" data-app="([^"]+)"', dom)
    assert sorted(apps) == ["check", "load", "merge", "square"]
    links = re.findall(r'<a href="#([^"]+)"><g class="nbpipe-node"', dom)
    assert len(links) == 4
    for target in links:  # each node links to an element of the page: its app's first cell
        assert f'id="{target}"' in dom
    merged = read(tmp_path / "merged.ipynb")
    first = {c.metadata["nbpipe"]["app"]: c.id for c in merged.cells if "nbpipe" in c.metadata}
    assert f"#cell-id={first['square']}" in dom
    # the timeline: the four items of the map app and the three other apps
    assert len(re.findall(r'class="nbpipe-bar nbpipe-b-completed"', dom)) == 7
    shot = tmp_path / "report.png"
    subprocess.run([*browse, "--window-size=1000,1400", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_a_node_says_how_many_items_of_a_map_failed() -> None:
    items = [{"index": i, "status": "failed" if i == 2 else "completed"} for i in range(4)]
    meta = graph_meta(["load", "inv", "total"], [("load", "inv"), ("inv", "total")],
                      inv={"status": "failed", "duration": 0.4, "items": items}, total={"status": "skipped"})
    d = layout.dag(meta)
    assert d is not None
    nodes = {n["name"]: n for n in d["nodes"]}
    assert nodes["inv"]["detail"] == "1 of 4 items failed · 0.40 s" and nodes["inv"]["items"] == 4
    assert (nodes["total"]["status"], nodes["total"]["detail"]) == ("skipped", "skipped")


@pytest.mark.parametrize(("span", "first_steps"), [
    (2.45, ["0.0 s", "0.5 s", "1.0 s"]),
    (0.004, ["0.0000 s", "0.0005 s", "0.0010 s"]),
    (95.0, ["0 s", "20 s", "40 s"]),
    (5400.0, ["0 min", "10 min", "20 min"]),
    (3 * 86400.0, ["0 min", "12 h", "24 h"]),
    (4000.0, ["0 min", "10 min", "20 min"]),
])
def test_the_time_axis_has_round_ticks_across_the_plot(span: float, first_steps: list[str]) -> None:
    t = layout.timeline(tasks_meta(("run", "h", 0, 0, span)))
    assert t is not None
    labels = [tick["label"] for tick in t["ticks"]]
    assert labels[:3] == first_steps
    xs = [tick["x"] for tick in t["ticks"]]
    assert xs[0] == t["left"] and xs[-1] <= t["width"] and len(xs) >= 4
    assert all(b - a >= 80 for a, b in zip(xs, xs[1:]))  # labels never run into each other


def test_a_notebook_from_an_older_nbpipe_renders_without_figures() -> None:
    old = {"status": "completed", "site": "local", "apps": {"load": {"status": "completed", "duration": 1.0}}}
    html = render_figures(notebook(code("x = 1"), nbpipe=old))
    assert "How this notebook was run" in html and "nbpipe-figure" not in html.split("</style>")[-1]


def test_hosts_are_labelled_by_their_short_names_when_those_are_unique() -> None:
    t = layout.timeline(tasks_meta(("a", "cn-0412.cluster.example.org", 0, 0, 1), ("b", "cn-0413.cluster", 0, 0, 1),
                                   ("c", "a-very-long-host-name-indeed", 0, 0, 1)))
    assert t is not None
    assert [r["label"] for r in t["rows"]] == ["cn-0412", "cn-0413", "a-very-long-ho…"]
    same = layout.timeline(tasks_meta(("a", "node1.site-a", 0, 0, 1), ("b", "node1.site-b", 0, 0, 1)))
    assert same is not None and [r["label"] for r in same["rows"]] == ["node1.site-a", "node1.site-b"]


def test_a_graph_with_a_cycle_in_hand_edited_metadata_is_not_drawn() -> None:
    assert layout.dag(graph_meta(["a", "b"], [("a", "b"), ("b", "a")])) is None
    assert layout.dag(graph_meta(["a", "b"], [("a", "b")])) is not None


def test_hostile_metadata_is_escaped_everywhere_on_the_page() -> None:
    """A merged notebook is a file anyone can edit: nothing in metadata.nbpipe becomes markup."""
    evil = '<script>alert(1)</script>"\'&'
    meta = graph_meta(["load", "fit"], [("load", "fit")])
    meta.update(version=evil, status=evil, finished=evil, site=evil, metrics={evil: evil},
                parameters={evil: evil}, parameter_sources={evil: evil},
                provenance={"python": evil, "platform": evil, "packages": {evil: evil}})
    meta["apps"]["load"].update(host=evil, job_id=evil, attempts=evil, reason=evil, status=evil)
    cell = code("x = 1")
    cell.metadata["nbpipe"] = {"app": evil, "status": evil, "items": evil, "attempts": 2, "ran_in": evil}
    html = render_figures(notebook(cell, nbpipe=meta))
    assert "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10
