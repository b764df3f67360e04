"""Make docs/jupyter-status.png: the %nbpipe status view, captured mid-run.

Runs a small pipeline (a map app of 12 items beside a slow app) with the magic
in a real kernel, keeps every display message the view sent, and photographs
the first one where the map app is a quarter done, with headless Chromium.

    python scripts/jupyter-status-png.py [OUT.png]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.manager import start_new_kernel
from nbformat import v4

CELLS = [
    ("n_items = 12", ["parameters"]),
    ("import time\ntime.sleep(0.4)\nevents = list(range(n_items))", ["app:load"]),
    ("time.sleep(0.5)\nfit = (seed * 7) % 5", ["map:seed=events", "app:fit"]),
    ("time.sleep(2.5)\nhistogram = sorted(events)", ["app:plot"]),
    ("best = max(fit)\nprint(best)", ["app:summary"]),
]


def views(folder: Path) -> list[str]:
    nb = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                  "language": "python"}})
    for source, tags in CELLS:
        nb.cells.append(v4.new_code_cell(source, metadata={"tags": tags}))
    nbformat.write(nb, folder / "analysis.ipynb")
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(folder))
    messages: list[dict] = []
    try:
        client.execute_interactive("%load_ext nbpipe", timeout=60)
        client.execute_interactive("%nbpipe execute analysis.ipynb --workers 2", timeout=120,
                                   output_hook=messages.append)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    return [m["content"]["data"]["text/html"] for m in messages
            if m["msg_type"] in ("display_data", "update_display_data")]


def main(out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("needs Chromium on PATH")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shown = views(folder)
        view = next((v for v in shown if re.search(r'class="nbpipe-items">[3-5]/12<', v)), shown[-1])
        page = folder / "view.html"
        page.write_text(f'<!doctype html><html><body style="margin:8px;background:#fff">{view}</body></html>')
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=440,142", f"--screenshot={out.resolve()}", page.as_uri()],
                       check=True, capture_output=True)
    print(out)


if __name__ == "__main__":
    default = Path(__file__).resolve().parent.parent / "docs" / "jupyter-status.png"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
