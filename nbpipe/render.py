"""Merged notebook -> HTML report (nbconvert)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["render_html"]


def render_html(nb: Any, output: str | Path) -> Path:
    """Write ``nb`` as one HTML file, images inlined, and return its path."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(body, encoding="utf-8")
    return output
