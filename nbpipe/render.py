"""Merged notebook -> HTML report (nbconvert with the template in ``templates/``).

The report is JupyterLab's page with a provenance section at the end: site,
parameters, per-app status and timing, metrics and package versions, read
from the merged notebook's ``metadata.nbpipe``. The template comes from the
source tree (editable installs) or from ``share/jupyter/nbconvert/templates``
where ``pip install`` puts it; without it, nbconvert's ``lab`` template is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import layout
from .atomic import write_text

__all__ = ["TEMPLATES", "figures", "render_html"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def render_html(nb: Any, output: str | Path) -> Path:
    """Write ``nb`` as one HTML file, images inlined, and return its path."""
    from nbconvert import HTMLExporter

    from jinja2 import TemplateNotFound

    extra = [str(TEMPLATES)] if (TEMPLATES / "nbpipe" / "index.html.j2").exists() else []
    try:
        body, _ = HTMLExporter(template_name="nbpipe", extra_template_basedirs=extra).from_notebook_node(
            nb, resources={"nbpipe": figures(nb)})
    except TemplateNotFound:  # installed without its data files: the plain JupyterLab page
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    return write_text(output, body)  # whole or not at all: a reader never sees half a report


def figures(nb: Any) -> dict[str, Any]:
    """The report's figures as plain data (``templates/nbpipe/figures.j2`` draws them)."""
    meta = nb.get("metadata", {}).get("nbpipe") or {}
    ids = {cell.get("id") for cell in nb.get("cells", []) if cell.get("id")}
    return {"dag": layout.dag(meta, ids), "timeline": layout.timeline(meta)}
