"""Which cells ``--split auto`` makes ``setup`` (nbpipe/split.py): a setup cell runs in every
app, so only cells that import and define, and whose functions, once called, read nothing
an app defines and change no global."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbbuild import code, write

import nbpipe
from nbpipe.split import split_notebook


def test_setup_takes_only_self_contained_definitions(tmp_path: Path) -> None:
    nb = write(tmp_path / "defs.ipynb",
               code("%matplotlib inline\nimport math"),
               code("def area(r):\n    return math.pi * r * r"),  # reads a setup name: setup
               code("def scaled(x):\n    return data * x"),  # reads data, which an app defines
               code("data = 3"),
               code("print(scaled(2), area(1.0))"),
               code("count = 0\ndef bump():\n    global count\n    count += 1"),  # changes a global
               code("bump()\nprint(count)"))
    split = split_notebook(nbformat.read(nb, as_version=4), "auto", nb)
    setup = sorted(index for index, _ in split.setup)
    assert setup == [0, 1], split.explain()
    run = nbpipe.execute(nb, split="auto", on_event=lambda e: None, cache=False)
    assert run.ok
    merged = nbformat.read(run.output, as_version=4)
    printed = [o.get("text") for c in merged.cells for o in c.get("outputs", []) if o.get("text")]
    assert printed == [f"6 {3.141592653589793}\n", "1\n"]
