"""The HTML report, opened in a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from nbbuild import nbpipe_cli
from sitekit import copy_example

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")
def test_the_report_renders_text_figures_and_item_labels_in_a_browser(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    done = nbpipe_cli("execute", nb, "--html", "report.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    browse = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*browse, "--dump-dom", (tmp_path / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert "nbpipe quickstart" in dom and "simulated 20000 points" in dom
    assert dom.count('src="data:image/png;base64,') == 1  # the figure, inlined
    shot = tmp_path / "report.png"
    subprocess.run([*browse, "--window-size=1000,1400", f"--screenshot={shot}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a page with content, not a blank one


def test_render_command_writes_one_self_contained_file(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    assert nbpipe_cli("execute", nb, "-o", "merged.ipynb", cwd=tmp_path).returncode == 0
    done = nbpipe_cli("render", "merged.ipynb", "-o", "out.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "out.html").read_text()
    assert "data:image/png;base64," in html and "estimated noise" in html
