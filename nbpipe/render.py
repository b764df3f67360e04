"""Merged notebook -> HTML report (nbconvert with the template in ``templates/``).

The report is JupyterLab's page under a run header (title, status, site,
duration, parameters, failing cells, metrics, contents), each code cell with
a badge (app, status, duration), and a provenance section at the end. The
markup lives in ``templates/nbpipe/``; this module only computes plain data
for it (``resources["nbpipe"]``, :func:`report_data`) and registers a few
formatting filters. The page loads nothing from the network: no require.js,
no MathJax (maths shows as its TeX source), no widget or mermaid scripts.

The template comes from the source tree (editable installs) or from
``share/jupyter/nbconvert/templates`` where ``pip install`` puts it; without
it, nbconvert's ``lab`` template is used.
"""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from . import layout
from .atomic import write_text
from .shape import ERROR_TAG

__all__ = ["TEMPLATES", "figures", "render_html", "report_data"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

#: Cell tags the report honours, as Jupyter Book and nbconvert spell them (the template
#: honours remove-output, hide-input and hide-output, and keeps the execution count).
REMOVE_INPUT = {"remove-input", "remove_input"}
REMOVE_CELL = {"remove-cell", "remove_cell"}
_FAILED = ("failed", "timed_out")
SIGNIFICANT = 4


def render_html(nb: Any, output: str | Path, *, no_input: bool = False, name: str | None = None,
                beside: str | Path | None = None) -> Path:
    """Write ``nb`` as one self-contained HTML file and return its path.

    ``no_input``: results only (no code, no prompts). ``name`` is the page's
    title when the notebook has no heading (default: ``output``'s name
    without ``.merged``). ``beside``: the notebook's folder, where its items
    file (large maps, :mod:`.itemsfile`) gives the timeline every item.
    """
    from jinja2 import TemplateNotFound

    name = name or Path(output).stem.removesuffix(".merged")
    data = report_data(nb, name)
    resources = {"metadata": {"name": data["title"]}, "nbpipe": {**data, "figures": figures(nb, beside)}}
    try:
        body, _ = _exporter("nbpipe", no_input).from_notebook_node(nb, resources=resources)
    except TemplateNotFound:  # installed without its data files: the plain JupyterLab page
        body, _ = _exporter("lab", no_input).from_notebook_node(nb, resources=resources)
    return write_text(output, body)  # whole or not at all: a reader never sees half a report


def figures(nb: Any, beside: str | Path | None = None) -> dict[str, Any]:
    """The report's figures as plain data (``templates/nbpipe/figures.j2`` draws them)."""
    meta = _with_items(nb.get("metadata", {}).get("nbpipe") or {}, beside)
    ids = {cell.get("id") for cell in nb.get("cells", []) if cell.get("id")}
    return {"dag": layout.dag(meta, ids), "timeline": layout.timeline(meta)}


def _with_items(meta: dict[str, Any], beside: str | Path | None) -> dict[str, Any]:
    """The run's records with every item of the maps the items file in ``beside`` holds (the
    merged notebook keeps a few of them), read one line at a time; without it, as they are."""
    listed = (meta.get("items_file") or {}).get("apps") or {}
    name = (meta.get("items_file") or {}).get("file")
    items = Path(beside) / str(name) if beside is not None and name else None
    if not listed or items is None or not items.is_file():
        return meta
    from .itemsfile import read_items

    records: dict[str, list[dict[str, Any]]] = {app: [] for app in listed}
    for line in read_items(items):
        if line.get("app") in records:
            records[line["app"]].append({k: v for k, v in line.items() if k not in ("app", "outputs")})
    apps = {name: {**app, "items": records[name]} if records.get(name) else app
            for name, app in (meta.get("apps") or {}).items()}
    return {**meta, "apps": apps}


def _exporter(template: str, no_input: bool) -> Any:
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.update(remove_input_tags=REMOVE_INPUT, remove_cell_tags=REMOVE_CELL)
    if no_input:  # nbconvert's --no-input
        config.TemplateExporter.update(exclude_input=True, exclude_input_prompt=True,
                                       exclude_output_prompt=True)
    extra = [str(TEMPLATES)] if (TEMPLATES / "nbpipe" / "index.html.j2").exists() else []
    exporter = HTMLExporter(config=config, template_name=template, extra_template_basedirs=extra)
    exporter.register_filter("significant", significant)
    exporter.register_filter("seconds", seconds)
    return exporter


# ------------------------------------------------------------------ the data


def report_data(nb: Any, name: str) -> dict[str, Any]:
    """What the run header shows, as plain values (no markup)."""
    run = nb.metadata.get("nbpipe", {})
    headings = _headings(nb)
    title = headings[0]["text"] if headings else name
    return {
        "title": title,
        "status": run.get("status"),
        "site": run.get("site"),
        "split": (run.get("split") or {}).get("mode") if isinstance(run.get("split"), dict) else None,
        "duration": run.get("duration"),
        "finished": run.get("finished"),
        "version": run.get("version"),
        "parameters": _parameters(run),
        "failures": _failures(nb),
        "skipped": [{"app": app, "reason": result.get("reason") or ""}
                    for app, result in run.get("apps", {}).items() if result.get("status") == "skipped"],
        "counts": _counts(run.get("apps", {})),
        "metrics": [{"name": k, "value": v} for k, v in run.get("metrics", {}).items()],
        "title_id": _title_id(headings),
        "items_file": (run.get("items_file") or {}).get("file"),
        "toc": headings[1:200],
    }


def _title_id(headings: list[dict[str, Any]]) -> str | None:
    """The id of the notebook's title heading, which the header replaces: only a
    heading that opens the notebook, with an id plain enough for a CSS selector."""
    if headings and headings[0]["opens"] and re.fullmatch(r"[\w.:-]+", headings[0]["id"]):
        return str(headings[0]["id"])
    return None


def _parameters(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Each parameter's value and where it came from. A merged notebook that records no
    ``parameter_sources`` recorded only the values given for the run: overrides."""
    sources = run.get("parameter_sources")
    return [{"name": k, "value": _short(repr(v)),
             "source": (sources or {}).get(k, "override" if sources is None else "default")}
            for k, v in (run.get("parameters") or {}).items()]


def _failures(nb: Any) -> list[dict[str, Any]]:
    """The first failing cell of each app, named as the reader sees it."""
    from .merge import reader_label

    out: list[dict[str, Any]] = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbpipe", {})
        if cell.cell_type != "code" or meta.get("status") not in _FAILED:
            continue
        if any(f["app"] == meta.get("app") for f in out):
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        error = f"{errors[-1].get('ename')}: {errors[-1].get('evalue')}" if errors else ""
        out.append({"app": meta.get("app"), "status": meta["status"], "anchor": f"cell-id={cell.get('id')}",
                    "label": reader_label(nb, cell.get("id")), "error": _short(error)})
    return out


def _counts(apps: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in apps.values():
        status = result.get("status", "")
        counts[status] = counts.get(status, 0) + 1
    return counts


def _headings(nb: Any) -> list[dict[str, Any]]:
    """The markdown cells' headings with the ids nbconvert gives them (its own renderer)."""
    from nbconvert.filters import markdown2html

    found: list[dict[str, Any]] = []
    cells = [c for c in nb.cells if ERROR_TAG not in c.get("metadata", {}).get("tags", [])]
    for at, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            reader = _Headings()
            reader.feed(markdown2html(cell.source))
            for heading in reader.found:
                heading["opens"] = False
            if at == 0 and reader.found and cell.source.lstrip().startswith("#"):
                reader.found[0]["opens"] = True  # the first thing the notebook says
            found.extend(reader.found)
    return found


class _Headings(HTMLParser):
    """Collects ``<h1>``–``<h6>``: level, id and text (without nbconvert's ¶ link)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self._open = {"level": int(tag[1]), "id": dict(attrs).get("id") or "", "text": ""}
        elif tag == "a" and ("class", "anchor-link") in attrs:
            self._in_link = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_link = False
        elif self._open is not None and tag == f"h{self._open['level']}":
            self._open["text"] = " ".join(self._open["text"].split())
            if self._open["text"]:
                self.found.append(self._open)
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None and not self._in_link:
            self._open["text"] += data


# ------------------------------------------------------------------ filters


def significant(value: Any, digits: int = SIGNIFICANT) -> str:
    """A metric as a reader wants it: floats to ``digits`` significant digits."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)) and len(value) <= 10:
        return "[" + ", ".join(significant(v, digits) for v in value) + "]"
    return _short(str(value))


def seconds(value: Any) -> str:
    """A duration: ``12 ms``, ``3.4 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.{2 if value < 10 else 1}f} s"
    minutes, secs = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
