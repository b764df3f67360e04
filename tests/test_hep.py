"""The Z -> mumu example on CMS open data: the merged histogram is exact, the fit is right."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from nbbuild import read

import nbpipe

EXAMPLES = Path(__file__).resolve().parent.parent / "example_notebooks"
uproot = pytest.importorskip("uproot", reason="the HEP example needs the hep extra: pip install -e '.[hep]'")
pytest.importorskip("scipy", reason="the HEP example needs the hep extra: pip install -e '.[hep]'")


@pytest.fixture
def example(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "zmumu.ipynb", tmp_path)
    shutil.copytree(EXAMPLES / "data", tmp_path / "data")
    return tmp_path / "zmumu.ipynb"


def _single_pass_histogram(bins: int, low: float, high: float) -> np.ndarray:
    with uproot.open(EXAMPLES / "data" / "uproot-Zmumu.root") as f:
        a = f["events"].arrays(["E1", "px1", "py1", "pz1", "E2", "px2", "py2", "pz2"], library="np")
    E, px = a["E1"] + a["E2"], a["px1"] + a["px2"]
    py, pz = a["py1"] + a["py2"], a["pz1"] + a["pz2"]
    mass = np.sqrt(np.maximum(E**2 - px**2 - py**2 - pz**2, 0.0))
    return np.histogram(mass, bins=np.linspace(low, high, bins + 1))[0]


@pytest.mark.parametrize("chunks", [1, 5])
def test_merged_histogram_equals_the_single_pass_histogram(example: Path, chunks: int) -> None:
    run = nbpipe.execute(example, parameters={"n_chunks": chunks}, workers=2)
    assert run.ok, {n: r.error for n, r in run.apps.items() if not r.status.ok}
    assert len(run.apps["dimuon"].items) == chunks
    table = np.loadtxt(example.parent / "zmumu_histogram.csv", delimiter=",")
    assert np.array_equal(table[:, 2].astype(int), _single_pass_histogram(60, 60.0, 120.0))
    assert table[:, 2].sum() == 2008


def test_fitted_z_mass_and_the_published_notebook(example: Path) -> None:
    run = nbpipe.execute(example, workers=2, html=True)
    assert run.ok
    assert run.metrics["z_mass"] == pytest.approx(90.8, abs=0.1)
    merged = read(run.output)
    text = "".join(o.get("text", "") for c in merged.cells if c.cell_type == "code" for o in c.outputs)
    assert "2304 events" in text and "Z mass  = 90.8" in text
    figures = [o for c in merged.cells if c.cell_type == "code" for o in c.outputs
               if "image/png" in o.get("data", {})]
    assert len(figures) == 1
    html = run.html.read_text()
    assert "data:image/png;base64" in html and "Z mass" in html


def test_the_container_variant_differs_only_by_its_tag(example: Path) -> None:
    """zmumu_container.ipynb is zmumu.ipynb with the plot app in the test image."""
    from sitekit import TEST_IMAGE

    boxed = read(EXAMPLES / "zmumu_container.ipynb")
    plain = read(example)
    assert [c.source for c in boxed.cells if c.cell_type == "code"] == \
        [c.source for c in plain.cells if c.cell_type == "code"]
    extra = [set(b.metadata.get("tags", [])) - set(p.metadata.get("tags", []))
             for b, p in zip(boxed.cells, plain.cells)]
    assert [t for t in extra if t] == [{f"container:{TEST_IMAGE}"}]


@pytest.mark.slow
def test_the_container_variant_gives_the_hosts_notebook_plot_bytes_included(example: Path) -> None:
    from sitekit import TEST_IMAGE, container_skip_reason, outputs_by_cell

    reason = container_skip_reason()
    if reason:
        pytest.skip(reason)
    shutil.copy(EXAMPLES / "zmumu_container.ipynb", example.parent)
    host = nbpipe.execute(example, workers=2)
    inside = nbpipe.execute(example.parent / "zmumu_container.ipynb", workers=2)
    assert inside.ok, {n: r.error for n, r in inside.apps.items() if not r.status.ok}
    assert inside.apps["plot"].status.value == "completed"
    assert outputs_by_cell(inside.notebook) == outputs_by_cell(host.notebook)
    plot = next(c for c in inside.notebook.cells if c.metadata.get("nbpipe", {}).get("app") == "plot")
    assert plot.metadata["nbpipe"]["container"]["image"] == TEST_IMAGE
