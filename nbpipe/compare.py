"""What two runs of the same cells must agree on: outputs, timings and addresses aside.

``nbpipe verify`` compares a fresh run of each app with its cached result
through :func:`normalise_outputs`; the test suite's fidelity checks (nbpipe
against papermill) use the same normalisation.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["normalise_outputs", "normalise_text", "outputs_differ"]

_MASKS = [
    (re.compile(r"^CPU times: .*$", re.M), "CPU times: <masked>"),
    (re.compile(r"^Wall time: .*$", re.M), "Wall time: <masked>"),
    (re.compile(r"^.* per loop \(mean ± std\. dev\. of .*\)$", re.M), "<timeit>"),
    (re.compile(r"0x[0-9a-fA-F]{6,16}\b"), "0x<address>"),
    # The pseudo-file a cell is compiled to, which warnings name: ipykernel's
    # $TMPDIR/ipykernel_<pid>/<hash>.py, or plain IPython's <ipython-input-<n>-<hash>>.
    (re.compile(r"(?:[^\s\"']*/)?ipykernel_\d+/\d+\.py"), "<cell-file>"),
    (re.compile(r"<ipython-input-\d+-[0-9a-f]+>"), "<cell-file>"),
]

def normalise_text(text: Any) -> str:
    if isinstance(text, list):
        text = "".join(text)
    text = str(text)
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def normalise_outputs(outputs: list[Any], *, image_bytes: bool = True) -> list[dict[str, Any]]:
    """The part of a cell's outputs that the fidelity guarantee keeps equal."""
    out: list[dict[str, Any]] = []
    for o in outputs:
        kind = o["output_type"]
        if kind == "stream":
            text = "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
            if out and out[-1]["output_type"] == "stream" and out[-1]["name"] == o["name"]:
                out[-1]["text"] += text
            else:
                out.append({"output_type": "stream", "name": o["name"], "text": text})
        elif kind in ("display_data", "execute_result"):
            data = {}
            for mime, value in o.get("data", {}).items():
                if isinstance(value, list):
                    value = "".join(value)
                if mime.startswith("image/") and not mime.endswith("svg+xml"):
                    data[mime] = value if image_bytes else "<image>"
                elif isinstance(value, str):
                    data[mime] = normalise_text(value)
                else:  # JSON mime bundles
                    data[mime] = json.loads(normalise_text(json.dumps(value, sort_keys=True)))
            out.append({"output_type": kind, "data": data})
        elif kind == "error":
            out.append({"output_type": "error", "ename": o["ename"], "evalue": normalise_text(o["evalue"])})
    for o in out:
        if o["output_type"] == "stream":
            o["text"] = normalise_text(o["text"])
    return out


def outputs_differ(cells_a: list[Any], cells_b: list[Any]) -> list[int]:
    """The positions of the code cells whose normalised outputs differ."""
    differ = [i for i, (a, b) in enumerate(zip(cells_a, cells_b))
              if normalise_outputs(a.get("outputs", [])) != normalise_outputs(b.get("outputs", []))]
    longer = max(len(cells_a), len(cells_b))
    return differ + list(range(min(len(cells_a), len(cells_b)), longer))
