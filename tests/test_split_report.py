"""What a --split run leaves for a reader: the report says the apps came from a split,
and the merged notebook keeps the cells' own tags (nbpipe/split.py, nbpipe/render.py)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbbuild import code, md, write

import nbpipe
from nbpipe.render import render_html


def test_the_report_and_the_merged_notebook_of_a_split_run(tmp_path: Path) -> None:
    nb = write(tmp_path / "plain.ipynb", md("# Plain"),
               code("import math"),
               code("x = 2\nprint(x)", "remove-input"),
               code("y = math.sqrt(x)\ny", "app:mine"))
    run = nbpipe.execute(nb, split="auto", html=True, on_event=lambda e: None, cache=False)
    assert run.ok
    merged = nbformat.read(run.output, as_version=4)
    tags = [c.metadata.get("tags") for c in merged.cells if c.cell_type == "code"]
    assert tags == [None, ["remove-input"], ["app:mine"]]  # as written, not the split's app: tags
    assert merged.metadata.nbpipe["split"]["mode"] == "auto"
    assert merged.metadata.nbpipe["split"]["ignored_tags"] == ["app:mine"]
    page = run.html.read_text()
    assert '<span class="nbpipe-split"><code>--split auto</code></span>' in page
    # a hostile value in the metadata is escaped, never markup
    merged.metadata.nbpipe["split"]["mode"] = "<script>alert(1)</script>"
    render_html(merged, tmp_path / "hostile.html", name="hostile")
    hostile = (tmp_path / "hostile.html").read_text()
    assert "<script>alert(1)" not in hostile and "&lt;script&gt;alert(1)" in hostile
