"""The report's two figures as plain data: the app graph and the timeline.

``dag(meta)`` lays out ``metadata.nbpipe.graph`` in layers, left to right
(layer = longest path from a source, long edges routed through virtual
points, a few barycentre sweeps to reduce crossings); ``timeline(meta)`` puts
every app and map item on a lane of its host, on a time axis from the run's
first submit. Both return pixel geometry and text only, or ``None`` when
there is nothing to draw; ``templates/nbpipe/figures.j2`` turns them into
inline SVG (no markup is made here).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import Any

__all__ = ["MAX_APPS", "MAX_BARS", "dag", "timeline"]

MAX_APPS = 200  # beyond this the graph is not drawn: a picture of it would not be read
MAX_BARS = 2000  # beyond this, adjacent items of one app on one lane merge into one bar

CHAR_W = 7.0  # average width of a character of the figures' 12px sans-serif, in px
SMALL_CHAR_W = 6.0  # the same at 11px (edge labels, axis)
NODE_H, NODE_GAP, PORT_GAP, VIRTUAL_H = 40.0, 22.0, 16.0, 8.0
MARGIN, LABEL_CHARS = 12.0, 26


# -- the graph ---------------------------------------------------------------------


def dag(meta: dict[str, Any], cell_ids: Collection[str] | None = None) -> dict[str, Any] | None:
    """Nodes, edges and size of the app graph in ``meta`` (``metadata.nbpipe``).

    A node links to its app's first cell, ``#cell-id=<id>`` (the id nbconvert's
    lab template gives each cell), when that cell is in ``cell_ids`` (all
    cells when ``cell_ids`` is None).
    """
    graph = meta.get("graph") or {}
    apps = [a for a in graph.get("apps", []) if a.get("name")]
    if not apps or len(apps) > MAX_APPS:
        return None
    names = [a["name"] for a in apps]
    edges = [e for e in graph.get("edges", []) if e.get("from") in names and e.get("to") in names]
    try:
        layers, chains = _layers(names, [(e["from"], e["to"]) for e in edges])
    except ValueError:  # a cycle: not a graph nbpipe wrote
        return None
    _reduce_crossings(layers, chains)
    boxes = {a["name"]: _box(a, meta.get("apps", {}).get(a["name"], {}), cell_ids) for a in apps}
    ports = _ports(chains, layers, boxes)
    xs = _columns(layers, boxes, edges)
    ys = _rows(layers, chains, boxes)
    nodes = []
    for layer, x in zip(layers, xs):
        for key in layer:
            if key in boxes:
                node = boxes[key]
                node.update(x=x, y=ys[key])
                nodes.append(node)
    out_edges = [_edge(e, chains[(e["from"], e["to"])], boxes, xs, ys, ports, layers) for e in edges]
    width = xs[-1] + max(_width(boxes, layers[-1]), 0) + MARGIN
    height = max(y + (boxes[k]["h"] if k in boxes else VIRTUAL_H) for k, y in ys.items()) + MARGIN
    return {"width": round(width), "height": round(height), "nodes": nodes, "edges": out_edges,
            "label": f"Graph of {len(nodes)} apps and {len(out_edges)} edges"}


def _layers(names: list[str], pairs: list[tuple[str, str]]
            ) -> tuple[list[list[str]], dict[tuple[str, str], list[str]]]:
    """Longest-path layers; each edge becomes a chain of keys, one per layer it spans."""
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(pairs)
    if not nx.is_directed_acyclic_graph(g):
        raise ValueError("the app graph has a cycle")
    rank = {n: i for i, gen in enumerate(nx.topological_generations(g)) for n in gen}
    order = {n: i for i, n in enumerate(names)}
    layers: list[list[str]] = [[] for _ in range(max(rank.values()) + 1)]
    for name in names:  # the notebook's order is the first guess
        layers[rank[name]].append(name)
    chains = {}
    for u, v in sorted(pairs, key=lambda p: (order[p[0]], order[p[1]])):
        chain = [u]
        for r in range(rank[u] + 1, rank[v]):
            virtual = f"\0{u}\0{v}\0{r}"  # cannot clash with an app name
            layers[r].append(virtual)
            chain.append(virtual)
        chains[(u, v)] = [*chain, v]
    return layers, chains


def _reduce_crossings(layers: list[list[str]], chains: dict[tuple[str, str], list[str]], sweeps: int = 4) -> None:
    """Barycentre heuristic: order each layer by the mean position of its neighbours."""
    up: dict[str, list[str]] = defaultdict(list)
    down: dict[str, list[str]] = defaultdict(list)
    for chain in chains.values():
        for a, b in zip(chain, chain[1:]):
            down[a].append(b)
            up[b].append(a)
    best = [list(layer) for layer in layers]
    fewest = _crossings(layers, down)
    for sweep in range(sweeps):
        forward = sweep % 2 == 0
        span = range(1, len(layers)) if forward else range(len(layers) - 2, -1, -1)
        for i in span:
            fixed = layers[i - 1] if forward else layers[i + 1]
            pos = {k: j for j, k in enumerate(fixed)}
            near = up if forward else down
            old = {k: j for j, k in enumerate(layers[i])}

            def centre(key: str) -> float:
                seen = [pos[n] for n in near[key] if n in pos]
                return sum(seen) / len(seen) if seen else old[key]

            layers[i].sort(key=lambda k: (centre(k), old[k]))
        count = _crossings(layers, down)
        if count < fewest:
            fewest, best = count, [list(layer) for layer in layers]
    layers[:] = best


def _crossings(layers: list[list[str]], down: dict[str, list[str]]) -> int:
    count = 0
    for upper, lower in zip(layers, layers[1:]):
        pos = {k: j for j, k in enumerate(lower)}
        segs = [(i, pos[b]) for i, a in enumerate(upper) for b in down[a] if b in pos]
        count += sum(1 for j, (a1, b1) in enumerate(segs) for a2, b2 in segs[j + 1:]
                     if (a1 - a2) * (b1 - b2) < 0)
    return count


def _box(app: dict[str, Any], run: dict[str, Any], cell_ids: Collection[str] | None) -> dict[str, Any]:
    name = app["name"]
    status = str(run.get("status") or "pending")
    items = run.get("items")
    # a map whose items went to the items file keeps a few of their records, and their count
    count = run.get("item_count", len(items)) if isinstance(items, list) else None
    first = (app.get("cells") or [None])[0]
    href = f"#cell-id={first}" if first and (cell_ids is None or first in cell_ids) else None
    detail = _detail(status, run.get("duration"), count, items)
    title = f"app {name}: {status.replace('_', ' ')}" + (f", {detail}" if detail != status.replace("_", " ") else "")
    if run.get("host"):
        title += f" on {run['host']}" + (f" (job {run['job_id']})" if run.get("job_id") else "")
    if run.get("reason"):
        title += f"; {run['reason']}"
    width = max(len(name) * CHAR_W, len(detail) * SMALL_CHAR_W) + 24
    return {"name": name, "label": name, "detail": detail, "status": status, "href": href,  # items: a map's count
            "title": title, "items": count, "w": round(max(width, 72.0)), "h": NODE_H}


def _detail(status: str, duration: Any, count: int | None, items: Any) -> str:
    """The node's second line: ``0.07 s``, ``4 items · 0.33 s``, ``1 of 4 items failed · 0.40 s``, ``skipped``."""
    words = status.replace("_", " ")
    if count is not None:
        failed = sum(1 for i in items if isinstance(i, dict) and i.get("status") in ("failed", "timed_out"))
        words = f"{failed} of {count} items {words}" if failed and status in ("failed", "timed_out") else \
            f"{count} items" if status == "completed" else f"{words}, {count} items"
    if isinstance(duration, (int, float)) and status in ("completed", "failed", "timed_out"):
        return _seconds(duration) if words == "completed" else f"{words} · {_seconds(duration)}"
    return words


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def _ports(chains: dict[tuple[str, str], list[str]], layers: list[list[str]],
           boxes: dict[str, dict[str, Any]]) -> dict[tuple[str, str], tuple[float, float]]:
    """Per edge, its slot among the node's outgoing and incoming edges (ordered by the far end)."""
    where = {k: (i, j) for i, layer in enumerate(layers) for j, k in enumerate(layer)}
    outs: dict[str, list[tuple[tuple[int, int], tuple[str, str]]]] = defaultdict(list)
    ins: dict[str, list[tuple[tuple[int, int], tuple[str, str]]]] = defaultdict(list)
    for key, chain in chains.items():
        outs[key[0]].append((where[chain[1]], key))
        ins[key[1]].append((where[chain[-2]], key))
    slot: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for side, table in ((0, outs), (1, ins)):
        for name, ends in table.items():
            for i, (_, key) in enumerate(sorted(ends)):
                slot[key][side] = i
            boxes[name]["h"] = max(boxes[name]["h"], PORT_GAP * (len(ends) + 1))
    counts = {name: (len(outs[name]), len(ins[name])) for name in boxes}
    return {key: (s[0] - (counts[key[0]][0] - 1) / 2, s[1] - (counts[key[1]][1] - 1) / 2)
            for key, s in slot.items()}


def _width(boxes: dict[str, dict[str, Any]], layer: list[str]) -> float:
    return max((boxes[k]["w"] for k in layer if k in boxes), default=0.0)


def _columns(layers: list[list[str]], boxes: dict[str, dict[str, Any]],
             edges: list[dict[str, Any]]) -> list[float]:
    """x of each layer: its widest node, then a gap wide enough for the labels leaving it."""
    rank = {k: i for i, layer in enumerate(layers) for k in layer}
    longest: dict[int, int] = defaultdict(int)
    for e in edges:
        longest[rank[e["from"]]] = max(longest[rank[e["from"]]], len(_label(e)))
    xs, x = [], MARGIN
    for i, layer in enumerate(layers):
        xs.append(x)
        x += _width(boxes, layer) + min(max(longest[i] * SMALL_CHAR_W + 60, 56.0), 240.0)
    return xs


def _rows(layers: list[list[str]], chains: dict[tuple[str, str], list[str]],
          boxes: dict[str, dict[str, Any]]) -> dict[str, float]:
    """y of each node's top: near its neighbours' centres, never overlapping within a layer."""
    size = {k: boxes[k]["h"] if k in boxes else VIRTUAL_H for layer in layers for k in layer}
    near: dict[str, list[str]] = defaultdict(list)
    for chain in chains.values():
        for a, b in zip(chain, chain[1:]):
            near[a].append(b)
            near[b].append(a)
    ys: dict[str, float] = {}
    for layer in layers:  # first: stacked, centred on zero
        total = sum(size[k] for k in layer) + NODE_GAP * (len(layer) - 1)
        y = -total / 2
        for k in layer:
            ys[k] = y
            y += size[k] + NODE_GAP
    for sweep in range(8):
        for layer in (layers if sweep % 2 == 0 else layers[::-1]):
            want = [sum(ys[n] + size[n] / 2 for n in near[k]) / len(near[k]) - size[k] / 2 if near[k] else ys[k]
                    for k in layer]
            _place(layer, want, size, ys)
    top = min(ys.values())
    return {k: round(y - top + MARGIN, 1) for k, y in ys.items()}


def _place(layer: list[str], want: list[float], size: dict[str, float], ys: dict[str, float]) -> None:
    """Tops as close to ``want`` as the order and the gaps allow (push down, then up, average)."""
    down, y = [], -math.inf
    for k, w in zip(layer, want):
        y = max(w, y)
        down.append(y)
        y += size[k] + NODE_GAP
    up, y = [], math.inf
    for k, w in zip(reversed(layer), reversed(want)):
        y = min(w, y - size[k])
        up.append(y)
        y -= NODE_GAP
    up.reverse()
    for i, k in enumerate(layer):
        ys[k] = (down[i] + up[i]) / 2
    for a, b in zip(layer, layer[1:]):  # the average of two valid placements keeps the gaps
        ys[b] = max(ys[b], ys[a] + size[a] + NODE_GAP)


def _edge(e: dict[str, Any], chain: list[str], boxes: dict[str, dict[str, Any]], xs: list[float],
          ys: dict[str, float], ports: dict[tuple[str, str], tuple[float, float]],
          layers: list[list[str]]) -> dict[str, Any]:
    rank = {k: i for i, layer in enumerate(layers) for k in layer}
    out_slot, in_slot = ports[(e["from"], e["to"])]
    src, dst = boxes[e["from"]], boxes[e["to"]]
    points = [(xs[rank[e["from"]]] + src["w"], ys[e["from"]] + src["h"] / 2 + out_slot * PORT_GAP)]
    for key in chain[1:-1]:
        x = xs[rank[key]]
        points += [(x, ys[key] + VIRTUAL_H / 2), (x + _width(boxes, layers[rank[key]]), ys[key] + VIRTUAL_H / 2)]
    points.append((xs[rank[e["to"]]], ys[e["to"]] + dst["h"] / 2 + in_slot * PORT_GAP))
    kinds = e.get("kinds") or []
    kind = "data" if e.get("names") else "file" if e.get("files") else "after" if "after" in kinds else "data"
    label = _label(e)
    (x0, y0), (x1, _) = points[0], points[1]
    if label:  # a straight run out of the node, the label above it
        points.insert(1, (x0 + min(len(label) * SMALL_CHAR_W + 12, max(x1 - x0 - 40, 0)), y0))
    title = f"{e['from']} → {e['to']}"
    flows = [*e.get("names", []), *e.get("files", [])]
    if flows:
        title += ": " + ", ".join(flows)
    elif kind == "after":
        title += " (runs after)"
    segments = [{"x1": round(a[0], 1), "y1": round(a[1], 1), "x2": round(b[0], 1), "y2": round(b[1], 1),
                 "mx": round((a[0] + b[0]) / 2, 1)} for a, b in zip(points, points[1:])]
    return {"from": e["from"], "to": e["to"], "kind": kind, "label": label, "title": title,
            "points": [(round(x, 1), round(y, 1)) for x, y in points], "segments": segments,
            "lx": round(x0 + 6, 1), "ly": round(y0 - 4, 1)}


def _label(e: dict[str, Any]) -> str:
    """What flows along an edge, shortened: ``chunks, mass +2``."""
    flows = [*e.get("names", []), *(f.rstrip("/").rsplit("/", 1)[-1] or f for f in e.get("files", []))]
    if not flows:
        return ""
    shown: list[str] = []
    for flow in flows:
        if shown and len(", ".join([*shown, flow])) > LABEL_CHARS - 3:
            break
        shown.append(flow if len(flow) <= LABEL_CHARS else flow[:LABEL_CHARS - 1] + "…")
    rest = len(flows) - len(shown)
    return ", ".join(shown) + (f" +{rest}" if rest else "")


# -- the timeline ------------------------------------------------------------------

PLOT_W, LEFT, TOP, AXIS_H = 880.0, 110.0, 8.0, 26.0
HOST_CHARS = 15  # what fits left of the plot


def timeline(meta: dict[str, Any], width: float = PLOT_W) -> dict[str, Any] | None:
    """Bars (apps and map items) on lanes of their hosts, from the run's first submit."""
    tasks = list(_tasks(meta))
    timed = [t for t in tasks if t["start"] is not None]
    if not timed:
        return None
    t0 = min(t["submit"] if t["submit"] is not None else t["start"] for t in timed)
    t1 = max([t["end"] for t in timed if t["end"] is not None] + [t["start"] for t in timed])
    span = max(t1 - t0, 1e-3)
    for t in timed:
        t["end"] = t["end"] if t["end"] is not None else t1  # still running when the notebook was written
    rows, lane_of = _lanes(timed)
    groups = _merge([(lane_of[i], t) for i, t in enumerate(timed)]) if len(timed) > MAX_BARS else \
        [(lane_of[i], [t]) for i, t in enumerate(timed)]
    row_h = max(4.0, min(22.0, 480.0 / len(rows)))
    scale = (width - LEFT - MARGIN) / span
    bars, queue = [], []
    for row, members in groups:
        bars.append(_bar(row, members, t0, scale, row_h))
        first = members[0]
        wait = first["start"] - first["submit"] if first["submit"] is not None else 0.0
        if wait > 0.2 and wait > 0.02 * span:
            queue.append({"row": row, "x": round(LEFT + (first["submit"] - t0) * scale, 1),
                          "w": round(max(wait * scale, 1.0), 1), "y": round(TOP + row * row_h + row_h * 0.35, 1),
                          "h": round(row_h * 0.3, 1), "title": f"{bars[-1]['name']} queued {_seconds(wait)}"})
    _name_bars(bars, width - MARGIN, row_h)
    height = TOP + len(rows) * row_h + AXIS_H
    return {"width": round(width), "height": round(height), "row_h": row_h, "left": LEFT, "top": TOP,
            "rows": [{**r, "y": round(TOP + i * row_h, 1)} for i, r in enumerate(rows)],
            "bars": bars, "queue": queue, "ticks": _ticks(span, scale),
            "axis_y": round(TOP + len(rows) * row_h, 1), "span": span,
            "label": f"Timeline of {len(timed)} tasks over {_seconds(span)} on {len({r['host'] for r in rows})} hosts"}


def _tasks(meta: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """One record per app run, or per item of a map app; apps that never ran are left out."""
    order = [a.get("name") for a in (meta.get("graph") or {}).get("apps", [])]
    apps = meta.get("apps") or {}
    for name in [*[n for n in order if n in apps], *[n for n in apps if n not in order]]:
        app = apps[name]
        items = app.get("items")
        timed_items = [i for i in items if isinstance(i, dict) and _num(i.get("start_time")) is not None] \
            if isinstance(items, list) else []
        records = [(i, i.get("index", n), i.get("item")) for n, i in enumerate(timed_items)] or [(app, None, None)]
        for rec, index, item in records:
            yield {"app": name, "index": index, "item": item, "status": str(rec.get("status") or app.get("status")),
                   "host": str(rec.get("host") or app.get("host") or "?"), "submit": _num(rec.get("submit_time")),
                   "start": _num(rec.get("start_time")), "end": _num(rec.get("end_time"))}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _lanes(tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Per host, the fewest lanes on which no two tasks overlap in time (greedy, by start)."""
    by_host: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(tasks):
        by_host[t["host"]].append(i)
    rows: list[dict[str, Any]] = []
    lane_of: dict[int, int] = {}
    for shade, host in enumerate(sorted(by_host, key=lambda h: min(tasks[i]["start"] for i in by_host[h]))):
        free: list[tuple[float, int]] = []  # (end of its last task, lane), a heap
        lanes = 0
        for i in sorted(by_host[host], key=lambda i: (tasks[i]["start"], tasks[i]["end"])):
            if free and free[0][0] <= tasks[i]["start"]:
                _, lane = heapq.heappop(free)
            else:
                lane, lanes = lanes, lanes + 1
            lane_of[i] = len(rows) + lane
            heapq.heappush(free, (max(tasks[i]["end"], tasks[i]["start"]), lane))
        rows += [{"host": host, "lane": n, "label": "", "first": n == 0, "band": shade % 2 == 0} for n in range(lanes)]
    short = {h: h.split(".")[0] or h for h in by_host}
    if len(set(short.values())) < len(short):  # two domains with one host name: keep them whole
        short = {h: h for h in by_host}
    for row in rows:
        if row["first"]:
            name = short[row["host"]]
            row["label"] = name if len(name) <= HOST_CHARS else name[:HOST_CHARS - 1] + "…"
    return rows, lane_of


def _merge(placed: list[tuple[int, dict[str, Any]]], by_status: bool = True) -> list[tuple[int, list[dict[str, Any]]]]:
    """Consecutive tasks of one app on one lane become one group (a bar with a count).

    Tasks of different statuses stay apart unless that still leaves more than
    ``MAX_BARS`` groups; then only cache hits stay apart from tasks that ran.
    """
    by_row: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row, t in placed:
        by_row[row].append(t)
    groups: list[tuple[int, list[dict[str, Any]]]] = []
    for row, tasks in sorted(by_row.items()):
        tasks.sort(key=lambda t: t["start"])
        current: list[dict[str, Any]] = []
        for t in tasks:
            if current and _kind(t, by_status) != _kind(current[0], by_status):
                groups.append((row, current))
                current = []
            current.append(t)
        groups.append((row, current))
    return _merge(placed, by_status=False) if by_status and len(groups) > MAX_BARS else groups


def _kind(task: dict[str, Any], by_status: bool) -> tuple[str, str | bool]:
    return task["app"], task["status"] if by_status else task["status"] == "cached"


_WORST = ["failed", "timed_out", "running", "pending", "skipped", "completed", "cached"]


def _bar(row: int, members: list[dict[str, Any]], t0: float, scale: float, row_h: float) -> dict[str, Any]:
    first, start, end = members[0], members[0]["start"], max(t["end"] for t in members)
    statuses = {t["status"] for t in members}
    status = min(statuses, key=lambda s: _WORST.index(s) if s in _WORST else 0)
    cached = status == "cached"
    x, w = LEFT + (start - t0) * scale, max((end - start) * scale, 1.0)
    if len(members) > 1:
        name = f"{first['app']} ×{len(members)}"
        what = f"{first['app']}: {len(members)} items ({first['index']}…{members[-1]['index']})"
    elif first["index"] is not None:
        name = f"{first['app']}[{first['index']}]"
        what = f"{name} {first['item']}" if first["item"] is not None else name
    else:
        name = what = first["app"]
    wait = first["start"] - first["submit"] if first["submit"] is not None else None
    title = f"{what} on {first['host']}: {status.replace('_', ' ')}, started at {_seconds(start - t0)}, " \
            f"ran {_seconds(end - start)}" + (f", queued {_seconds(wait)}" if wait and wait > 0 else "")
    return {"row": row, "x": round(x, 1), "w": round(3.0 if cached else w, 1), "y": round(TOP + row * row_h + 1, 1),
            "h": round(max(row_h - 2, 2.0), 1), "app": first["app"], "item": first["item"], "name": name,
            "status": status, "count": len(members), "title": title, "cached": cached,
            "start": round(start - t0, 6), "end": round(end - t0, 6)}


def _name_bars(bars: list[dict[str, Any]], right: float, row_h: float) -> None:
    """Each bar's name inside it if it fits, else just after it if the lane is free there, else none."""
    by_row: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for bar in bars:
        bar.update(text="", tx=0.0, inside=False)
        by_row[bar["row"]].append(bar)
    if row_h < 12:
        return
    for row in by_row.values():
        row.sort(key=lambda b: b["x"])
        for bar, after in zip(row, [*row[1:], None]):
            need = len(bar["name"]) * SMALL_CHAR_W + 8
            free = (after["x"] if after else right) - bar["x"] - bar["w"]
            if bar["w"] >= need and not bar["cached"]:
                bar.update(text=bar["name"], tx=round(bar["x"] + bar["w"] / 2, 1), inside=True)
            elif free >= need:
                bar.update(text=bar["name"], tx=round(bar["x"] + bar["w"] + 4, 1))


CLOCK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _ticks(span: float, scale: float) -> list[dict[str, Any]]:
    """Round times every 80 px or more: 1, 2 or 5 × 10^k seconds, or whole minutes and hours."""
    raw = span / max(1.0, (span * scale) / 80.0)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if raw > 30:
        step = next((s for s in CLOCK_STEPS if s >= raw), math.ceil(raw / 86400) * 86400)
    digits = max(0, -math.floor(math.log10(step)))
    ticks, n = [], 0
    while n * step <= span * 1.0001:
        t = n * step
        label = _clock(t) if step >= 60 else f"{t:.{digits}f} s"
        ticks.append({"x": round(LEFT + t * scale, 1), "label": label})
        n += 1
    return ticks


def _clock(seconds: float) -> str:
    hours, minutes = divmod(round(seconds) // 60, 60)
    return f"{minutes} min" if not hours else f"{hours} h {minutes:02d}" if minutes else f"{hours} h"
