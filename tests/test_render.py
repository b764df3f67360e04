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
    # the provenance section from metadata.nbpipe, one row per app
    assert "How this notebook was run" in dom and "on site <code>local</code>" in dom
    for app in ("simulate", "noise", "trend", "plot", "summary"):
        assert f"<td><code>{app}</code></td>" in dom
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


def test_a_failed_app_shows_in_the_report(tmp_path: Path) -> None:
    from nbbuild import code, write

    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:fine"), code("1 / 0", "app:broken"))
    done = nbpipe_cli("execute", nb, "--html", cwd=tmp_path)
    assert done.returncode == 1
    html = (tmp_path / "nb.merged.html").read_text()
    assert 'class="nbpipe-status-failed">failed</td>' in html
    assert 'class="nbpipe-status-completed">completed</td>' in html
    assert "ZeroDivisionError" in html and "nbpipe-error-broken" in html  # banner and anchor
