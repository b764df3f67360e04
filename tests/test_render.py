"""The HTML report, opened in a real headless Chromium.

One notebook written the way a scientist writes one (a title, maths,
``%matplotlib inline``, a plot, a failing app and the app it starves, a map
over many items, cells tagged to hide or remove parts) runs once; the tests
read the page Chromium builds from the report (``--dump-dom``), the requests
Chromium made for it (``--log-net-log``), and a screenshot.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nbbuild import code, md, nbpipe_cli, read, write
from sitekit import copy_example

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (apt-get install chromium)")

TITLE = "Decay times of a toy detector"
RUNS = 30  # map items: past 20, some are folded


def _science_notebook(path: Path) -> Path:
    return write(
        path,
        md(f"# {TITLE}\n\nEach particle decays after an exponential time; its rest energy is $E=mc^2$ and\n\n"
           "$$\\tau = \\frac{1}{\\Gamma}$$"),
        code("n_samples = 200   # decays per run\nseed = 7", "parameters"),
        code("%matplotlib inline\nimport numpy as np\nimport matplotlib.pyplot as plt", "setup"),
        md("## Simulate"),
        code("rng = np.random.default_rng(seed)\nt = rng.exponential(2.0, n_samples)\n"
             "print(f'simulated {len(t)} decays')", "app:simulate"),
        md("## Plot"),
        code("fig, ax = plt.subplots(figsize=(5, 3))\nax.hist(t, bins=20)\nax.set_xlabel('t [ns]')\nplt.show()",
             "app:plot", "hide-input"),
        md("## Calibration\n\nThe calibration file is missing on purpose."),
        code("calib = open('calibration.csv').read()", "app:load"),
        code("scale = len(calib) * 2.0\nprint(scale)", "app:fit"),
        md("### Per-run summaries"),
        code(f"runs = list(range({RUNS}))", "app:runs"),
        code("print(f'run {r}: mean decay time {t.mean() + r:.3f} ns')", "app:summaries", "map:r=runs"),
        code("print('the published number')", "app:quiet", "remove-input"),
        code("print('debugging noise nobody should read')", "app:noisy", "remove-output"),
        code("print('a long log, one click away')", "app:log", "hide-output"),
        code("print('a scratch cell')", "app:scratch", "remove-cell"),
        code("mean_lifetime = float(t.mean())\nn_over_3 = int((t > 3).sum())", "app:stats"),
        code("mean_lifetime\nn_over_3", "metrics"),
    )


@dataclass
class Report:
    dir: Path
    merged: Path
    html: Path
    dom: str
    requests: list[str]


def _browse(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM or "chromium", *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def _page_requests(net_log: Path) -> list[str]:
    """Every URL the page asked for (Chromium's own background requests have another site)."""
    events = json.loads(net_log.read_text())["events"]
    assert len(events) > 100, "Chromium logged no network events: the log proves nothing"
    return sorted({e["params"]["url"] for e in events
                   if e.get("params", {}).get("network_isolation_key", "").startswith("file://")
                   and "url" in e["params"]})


def _open(tmp: Path, html: Path) -> tuple[str, list[str]]:
    net_log = tmp / f"{html.stem}.netlog.json"
    dom = _browse(tmp, f"--log-net-log={net_log}", "--dump-dom", html.as_uri()).stdout
    return dom, _page_requests(net_log)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    if CHROMIUM is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("report")
    nb = _science_notebook(tmp / "decays.ipynb")
    done = nbpipe_cli("execute", nb, "--no-cache", "-p", "n_samples", "300", "--html", cwd=tmp)
    assert done.returncode == 1, done.stderr  # the load app fails
    html = tmp / "decays.merged.html"
    dom, requests = _open(tmp, html)
    return Report(tmp, tmp / "decays.merged.ipynb", html, dom, requests)


def _cell(dom: str, nb: Any, source_start: str) -> str:
    """The HTML of the code cell of ``nb`` whose source starts with ``source_start``."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start))
    found = re.split(r'(?=<div [^>]*\bid="cell-id=)', dom)
    found = [c for c in found if f'id="cell-id={cell.id}"' in c.split(">", 1)[0]]
    assert len(found) == 1, f"{len(found)} cells with id {cell.id}"
    return found[0]


def _count_of(nb: Any, source_start: str) -> int:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start))
    return int(cell.execution_count)


# ---------------------------------------------------------------- the run header


def test_the_page_is_titled_by_the_notebooks_first_heading(report: Report) -> None:
    assert f"<title>{TITLE}</title>" in report.dom
    assert re.search(rf'<h1 class="nbpipe-title">{TITLE}</h1>', report.dom)


def test_the_run_header_shows_status_site_duration_and_marks_the_overridden_parameter(report: Report) -> None:
    header = report.dom.split('<header class="nbpipe-run"', 1)[1].split("</header>", 1)[0]
    assert re.search(r'class="nbpipe-status nbpipe-status-failed">\s*failed', header)
    assert re.search(r'class="nbpipe-site">\s*<code>local</code>', header)
    seconds = float(re.search(r'class="nbpipe-duration">\s*([0-9.]+) s', header).group(1))  # type: ignore[union-attr]
    assert 0 < seconds < 300
    row = re.search(r'<tr class="nbpipe-parameter nbpipe-parameter-(\w+)">\s*<td><code>n_samples</code></td>'
                    r'\s*<td><code>(\d+)</code></td>', header)
    assert row and row.groups() == ("override", "300")


def test_the_header_marks_defaults_and_overrides_when_the_merged_notebook_records_them(tmp_path: Path,
                                                                                     report: Report) -> None:
    nb = read(report.merged)
    nb.metadata.nbpipe["parameters"] = {"n_samples": 300, "seed": 7}
    nb.metadata.nbpipe["parameter_sources"] = {"n_samples": "override", "seed": "default"}
    merged = tmp_path / "decays.merged.ipynb"
    merged.write_text(json.dumps(nb))
    assert nbpipe_cli("render", merged, cwd=tmp_path).returncode == 0
    dom, _ = _open(tmp_path, merged.with_suffix(".html"))
    rows = dict((name, kind) for kind, name in re.findall(
        r'<tr class="nbpipe-parameter nbpipe-parameter-(\w+)">\s*<td><code>(\w+)</code></td>', dom))
    assert rows == {"n_samples": "override", "seed": "default"}


def test_the_header_links_to_the_failing_cell_numbered_as_the_reader_sees_it(report: Report) -> None:
    count = _count_of(read(report.merged), "calib = open")
    links = re.findall(r'<a class="nbpipe-failure-link" href="#([^"]+)">([^<]+)</a>', report.dom)
    assert [text for _, text in links] == [f"In [{count}]"]
    assert f'id="{links[0][0]}"' in _cell(report.dom, read(report.merged), "calib = ")


def test_the_failure_banner_numbers_the_cell_as_the_reader_sees_it(report: Report) -> None:
    nb = read(report.merged)
    count = _count_of(nb, "calib = open")
    banner = nb.cells[0].source
    assert f"at [In [{count}]](#nbpipe-error-load)" in banner and "cell 8" not in banner
    assert "did not complete" not in report.dom  # in the report, the run header says it


def test_a_cell_without_an_execution_count_is_named_by_its_place_among_code_cells() -> None:
    from nbpipe.merge import reader_label
    from nbbuild import notebook

    cells = [md("# T"), code("a = 1"), code("b = 2"), code("c = 3"), *[code(f"x{i} = {i}") for i in range(9)]]
    cells[1].execution_count = 4
    nb = notebook(*cells)
    assert reader_label(nb, nb.cells[1].id) == "In [4]"
    assert reader_label(nb, nb.cells[2].id) == "the 2nd code cell"
    assert reader_label(nb, nb.cells[3].id) == "the 3rd code cell"
    assert reader_label(nb, nb.cells[11].id) == "the 11th code cell"
    assert reader_label(nb, nb.cells[12].id) == "the 12th code cell"


# ---------------------------------------------------------------- the cells


def test_each_code_cell_carries_a_badge_with_app_status_and_duration(report: Report) -> None:
    badge = re.search(r'<div class="nbpipe-badge nbpipe-status-completed">\s*<span class="nbpipe-badge-app">'
                      r'simulate</span>\s*<span class="nbpipe-badge-status">completed</span>\s*'
                      r'<span class="nbpipe-badge-duration">([0-9.]+) (m?s)</span>',
                      _cell(report.dom, read(report.merged), "rng = "))
    assert badge, "no badge on the simulate cell"


def test_a_skipped_cell_says_why(report: Report) -> None:
    fit = _cell(report.dom, read(report.merged), "scale = ")
    assert "nbpipe-cell-skipped" in fit
    reason = re.search(r'class="nbpipe-skipped-reason">([^<]*)<', fit.replace("&#39;", "'"))
    assert reason and reason.group(1).startswith("skipped because app 'load' failed")


def test_a_failed_cell_is_styled_as_a_failure(report: Report) -> None:
    load = _cell(report.dom, read(report.merged), "calib = ")
    assert "nbpipe-cell-failed" in load and "FileNotFoundError" in load
    assert "nbpipe-cell-failed" not in _cell(report.dom, read(report.merged), "rng = ")


@pytest.mark.cache
@needs_chromium
def test_a_cache_hit_is_badged_cached(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", md("# Twice"), code("x = 21 * 2\nprint(x)", "app:answer"))
    assert nbpipe_cli("execute", nb, cwd=tmp_path).returncode == 0
    assert nbpipe_cli("execute", nb, "--html", cwd=tmp_path).returncode == 0
    dom, _ = _open(tmp_path, tmp_path / "nb.merged.html")
    cell = _cell(dom, read(tmp_path / "nb.merged.ipynb"), "x = 21")
    assert re.search(r'<div class="nbpipe-badge nbpipe-status-cached">.*?'
                     r'<span class="nbpipe-badge-status">cached</span>', cell, re.S)


def test_metrics_are_formatted_to_four_significant_digits(report: Report) -> None:
    metrics = read(report.merged).metadata.nbpipe["metrics"]
    shown = dict(re.findall(r'<tr class="nbpipe-metric">\s*<td><code>(\w+)</code></td>\s*<td>([^<]+)</td>',
                            report.dom))
    assert shown == {"mean_lifetime": f"{metrics['mean_lifetime']:.4g}", "n_over_3": str(metrics["n_over_3"])}


def test_a_table_of_contents_links_to_every_heading(report: Report) -> None:
    toc = re.split(r'<nav [^>]*class="nbpipe-toc"', report.dom, maxsplit=1)[1].split("</nav>", 1)[0]
    entries = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', toc)
    assert [text for _, text in entries] == ["Simulate", "Plot", "Calibration", "Per-run summaries"]
    for anchor, _ in entries:
        assert f'id="{anchor}"' in report.dom


def test_maths_stays_readable_as_tex_without_mathjax(report: Report) -> None:
    assert '<span class="nbpipe-math">$E=mc^2$</span>' in report.dom
    assert '<span class="nbpipe-math nbpipe-math-display">$$\\tau = \\frac{1}{\\Gamma}$$</span>' in report.dom
    assert not re.search(r"<script[^>]*mathjax|MathJax\.Hub", report.dom, re.I)  # no MathJax to load


# ---------------------------------------------------------------- offline and tags


def test_the_report_asks_the_network_for_nothing(report: Report) -> None:
    assert report.requests == []
    external = re.findall(r'<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)="(?:https?:)?//[^"]*"', report.dom)
    assert external == []
    assert report.dom.count('src="data:image/png;base64,') == 1  # the histogram, inlined


def test_cell_tags_hide_and_remove_inputs_and_outputs(report: Report) -> None:
    quiet = _cell(report.dom, read(report.merged), "print('the published")
    assert "print(" not in quiet  # remove-input: the result without its code
    noisy = _cell(report.dom, read(report.merged), "print('debugging")  # remove-output: the code without its result
    assert "nbpipe-badge-app\">noisy" in noisy and "nobody should read</pre>" not in noisy
    assert f"In&nbsp;[{_count_of(read(report.merged), 'print(' + chr(39) + 'debugging')}]" in noisy
    plot = _cell(report.dom, read(report.merged), "fig, ax")
    assert re.search(r'<details class="nbpipe-hidden-input">\s*<summary>', plot)  # hide-input: folded away
    assert "data:image/png" in plot.split("</details>", 1)[1]  # ... the figure still shown
    log = _cell(report.dom, read(report.merged), "print('a long log")
    assert re.search(r'<details class="nbpipe-hidden-output">\s*<summary>.*a long log, one click away', log, re.S)
    assert "a scratch cell" not in report.dom  # remove-cell


def test_no_input_publishes_results_only(tmp_path: Path, report: Report) -> None:
    out = tmp_path / "results.html"
    done = nbpipe_cli("render", report.merged, "--no-input", "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    dom, requests = _open(tmp_path, out)
    assert "simulated 300 decays" in dom and "data:image/png" in dom and TITLE in dom
    assert "default_rng" not in dom and not re.search(r'class="[^"]*jp-InputArea-editor', dom)
    assert requests == []


def test_no_input_needs_a_report(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:a"))
    done = nbpipe_cli("execute", nb, "--no-input", cwd=tmp_path)
    assert done.returncode == 2 and "--no-input" in done.stderr and "--html" in done.stderr
    assert not (tmp_path / "nb.merged.ipynb").exists()


def test_execute_no_input_writes_a_results_only_report(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", md("# Answer"), code("x = 21 * 2\nprint('the answer is', x)", "app:a"))
    assert nbpipe_cli("execute", nb, "--html", "--no-input", cwd=tmp_path).returncode == 0
    html = (tmp_path / "nb.merged.html").read_text()
    assert "the answer is 42" in html and "21 * 2" not in html


# ---------------------------------------------------------------- map apps


def test_folded_items_stay_reachable_in_the_notebook_and_the_report(report: Report) -> None:
    nb = read(report.merged)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "mean decay time" in c.source)
    folded = cell.metadata.nbpipe["folded"]
    shown = {int(m) for m in re.findall(r"run (\d+): mean", "".join(
        o.get("text", "") for o in cell.outputs if o.output_type == "stream"))}
    assert {f["item"] for f in folded} == set(range(RUNS)) - shown and len(folded) == RUNS - len(shown)
    assert all(f"run {f['item']}: mean decay time" in f["text"] for f in folded)
    assert "task notebook" not in json.dumps(nb)  # nothing points at the deleted run directory
    details = _cell(report.dom, read(report.merged), "print(f'run").split('<details class="nbpipe-folded">', 1)[1]
    details = details.split("</details>", 1)[0]
    assert all(f"run {f['item']}: mean decay time" in details for f in folded)


# ---------------------------------------------------------------- the page as a whole


def test_a_screenshot_of_the_report_shows_a_page(report: Report) -> None:
    from matplotlib.image import imread

    shot = report.dir / "report.png"
    _browse(report.dir, "--window-size=1200,1600", f"--screenshot={shot}", report.html.as_uri())
    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    rows = pixels.reshape(-1, pixels.shape[2])[:, :3]
    colours = {tuple(p) for p in (rows[::97] * 255).astype(int)}
    assert len(colours) > 50  # text, the red status, the header: not a blank or one-colour page
    reds = ((rows[:, 0] > 0.7) & (rows[:, 1] < 0.35) & (rows[:, 2] < 0.35)).sum()
    assert reds > 200  # the failed status and the failing cell are drawn in red


@needs_chromium
def test_the_quickstart_report_renders_text_figures_and_the_provenance(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    done = nbpipe_cli("execute", nb, "--html", "report.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    dom, requests = _open(tmp_path, tmp_path / "report.html")
    assert "nbpipe quickstart" in dom and "simulated 20000 points" in dom
    assert dom.count('src="data:image/png;base64,') == 1  # the figure, inlined
    assert "How this notebook was run" in dom and "on site <code>local</code>" in dom
    for app in ("simulate", "noise", "trend", "plot", "summary"):
        assert f"<td><code>{app}</code></td>" in dom


def test_render_command_writes_one_self_contained_file(tmp_path: Path) -> None:
    nb = copy_example("quickstart.ipynb", tmp_path)
    assert nbpipe_cli("execute", nb, "-o", "merged.ipynb", cwd=tmp_path).returncode == 0
    done = nbpipe_cli("render", "merged.ipynb", "-o", "out.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    html = (tmp_path / "out.html").read_text()
    assert "data:image/png;base64," in html and "estimated noise" in html
    assert not re.search(r'<script[^>]*src="https?:', html)


def test_a_failed_app_shows_in_the_report(tmp_path: Path) -> None:
    nb = write(tmp_path / "nb.ipynb", code("x = 1", "app:fine"), code("1 / 0", "app:broken"))
    done = nbpipe_cli("execute", nb, "--html", cwd=tmp_path)
    assert done.returncode == 1
    html = (tmp_path / "nb.merged.html").read_text()
    assert 'class="nbpipe-status-failed">failed</td>' in html
    assert 'class="nbpipe-status-completed">completed</td>' in html
    assert "ZeroDivisionError" in html and "nbpipe-error-broken" in html  # banner and anchor
    assert "<title>nb</title>" in html  # no heading: the notebook's name


def test_any_executed_notebook_renders_and_the_api_takes_no_input(tmp_path: Path) -> None:
    import nbpipe
    from nbbuild import notebook
    from nbpipe.render import render_html

    plain = notebook(md("Some words.\n\n## A plain notebook"), code("1 + 1"))  # not nbpipe's: no metadata
    html = render_html(plain, tmp_path / "plain.html").read_text()
    assert "<title>A plain notebook</title>" in html and "nbpipe-badge nbpipe-status" not in html
    nb = write(tmp_path / "nb.ipynb", code("print('only this' + ' shows')", "app:a"))
    run = nbpipe.execute(nb, html=True, no_input=True)
    page = run.html.read_text()
    assert run.ok and "only this shows" in page and not re.search(r'class="[^"]*jp-InputArea-editor', page)


def test_the_header_replaces_only_a_title_heading_that_opens_the_notebook() -> None:
    from nbbuild import notebook
    from nbpipe.render import report_data

    opening = report_data(notebook(md("# The title\n\nText."), md("## Later"), code("1")), "nb")
    assert (opening["title"], opening["title_id"]) == ("The title", "The-title")
    assert [h["text"] for h in opening["toc"]] == ["Later"]
    late = report_data(notebook(code("1"), md("Intro.\n\n# Results")), "nb")
    assert (late["title"], late["title_id"]) == ("Results", None)  # shown where it is
    assert report_data(notebook(code("1")), "analysis")["title"] == "analysis"
