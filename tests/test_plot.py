"""Issue 11, the notebook side: maps on their physical axes, parameter distributions, HTML histograms and the
explorer link (sweepcat.client.plot), rendered with matplotlib's Agg backend and checked by their pixels.

The helpers are called directly with Result/Dataset objects; where client/catalog.py has the methods that
call them (res.plot, ds.plot_params, cat.explore, Result._repr_html_), those are checked too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import matplotlib
import numpy as np
import pytest

import sweepcat.client
from sweepcat.client import plot
from sweepcat.errors import SweepcatError
from tests.conftest import sqlite_demo
from tests.support.servers import API_KEY, sweepcat_server

matplotlib.use("Agg")
DS = "NiPS3_batched"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory, demo_manifests: Path) -> str:
    return sqlite_demo(tmp_path_factory, demo_manifests, "plot")


@pytest.fixture(scope="module")
def server(catalog: str) -> Iterator[str]:
    with sweepcat_server(catalog) as url:
        yield url


def pixels(fig: Any, tmp_path: Path | None = None, name: str = "figure") -> np.ndarray:
    """The figure rendered by Agg at its own size and dpi, as an (h, w, 4) uint8 array (saved as PNG too)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba()).copy()
    if tmp_path is not None:
        fig.savefig(tmp_path / f"{name}.png")
    w, h = fig.get_size_inches() * fig.dpi
    assert image.shape[:2] == (round(h), round(w)), (image.shape, w, h)
    return image


def colourful(image: np.ndarray, ink: float = 0.02) -> int:
    """How many distinct colours; at least ``ink`` of the image is not the white background."""
    rgb = image[..., :3].reshape(-1, 3)
    drawn = (rgb != 255).any(axis=1).mean()
    assert drawn > ink, f"blank: {drawn:.1%} drawn"
    return len(np.unique(rgb[:, 0].astype(np.int64) << 16 | rgb[:, 1].astype(np.int64) << 8 | rgb[:, 2]))


@pytest.mark.parametrize("where", ["catalog", "server"])
def test_maps_on_their_physical_axes_with_parameters_in_titles(where: str, catalog: str, server: str,
                                                                tmp_path: Path) -> None:
    cat = sweepcat.client.open(server, api_key=API_KEY) if where == "server" else sweepcat.client.open(catalog)
    res = cat[DS].find("tenDq > 1 and F2_dd < 8")
    fig = plot.plot_maps(res, "rixs", n=4)
    image = pixels(fig, tmp_path, f"maps-{where}")
    assert image.shape[:2] == (760, 840) and colourful(image, ink=0.4) > 200  # 2 x 2 maps of 4.2 x 3.8 in at 100 dpi
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    keys = res.keys()[:4]
    assert len(maps) == 4 and len(fig.axes) == 8  # each with its colour bar
    for ax, key in zip(maps, keys, strict=True):
        title = ax.get_title()
        assert title.startswith(key) and "tenDq=" in title and "F2_dd=" in title  # the query's parameters first
        assert ax.get_xlabel() == "ein_RIXS" and ax.get_ylabel() == "eloss_RIXS"
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        assert 851.8 < x0 < 852 and 858 < x1 < 858.2 and -1.1 < y0 < -1 and 14 < y1 < 14.1  # cell edges round the axes
    row = res.params.loc[keys[0]]
    assert f"tenDq={row['tenDq']:.4g}" in maps[0].get_title()

    lines = plot.plot_maps(res, "xps", n=3, params=["soc_c"])
    ax = lines.axes[0]
    assert ax.get_xlabel() == "w_xps" and len(ax.get_lines()) == 3
    assert all("soc_c=" in t.get_text() for t in ax.get_legend().get_texts())
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata()[[0, -1]], [840, 880])
    colourful(pixels(lines, tmp_path, f"xps-{where}"))


def test_log_scale_complex_and_other_shapes(catalog: str, tmp_path: Path) -> None:
    from matplotlib.colors import LogNorm

    ds = sweepcat.client.open(catalog)["NiPS3_per_entity"]
    res = ds.all()
    fig = plot.plot_maps(res, "rixs", n=2, log=True, ncols=1)
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(maps) == 2 and all(isinstance(ax.collections[0].norm, LogNorm) for ax in maps)
    colourful(pixels(fig, tmp_path, "log"), ink=0.4)
    gf = plot.plot_maps(res, "gf", n=2)  # complex128 on `freq`: real and imaginary parts
    ax = gf.axes[0]
    assert ax.get_xlabel() == "freq" and len(ax.get_lines()) == 4
    mh = plot.plot_maps(res, "mh", n=1)  # int32 on `field`
    assert mh.axes[0].get_xlabel() == "field"
    colourful(pixels(gf, tmp_path, "gf"))
    with pytest.raises(SweepcatError, match="no artifact type 'nope'"):
        plot.plot_maps(res, "nope")
    with pytest.raises(SweepcatError, match="nothing to plot"):
        plot.plot_maps(ds.find("tenDq > 1000"), "rixs")
    with pytest.raises(SweepcatError, match="no parameter"):
        plot.plot_maps(res, "rixs", params=["nope"])


def test_parameter_histograms_and_density(catalog: str, tmp_path: Path) -> None:
    ds = sweepcat.client.open(catalog)[DS]
    fig = plot.plot_params(ds, ["tenDq", "F2_dd"])
    image = pixels(fig, tmp_path, "params")
    assert image.shape[:2] == (600, 720) and colourful(image, ink=0.1) > 50
    hists = [ax for ax in fig.axes if ax.patches]
    assert len(hists) == 2 and sum(p.get_height() for p in hists[0].patches) == 256  # every Hamiltonian counted
    density = [ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]
    assert len(density) == 1 and (density[0].get_xlabel(), density[0].get_ylabel()) == ("tenDq", "F2_dd")
    assert np.nansum(density[0].collections[0].get_array()) == 256
    three = plot.plot_params(ds, ["tenDq", "F2_dd", "soc_c"], query="tenDq > 1")  # a corner plot
    assert len([ax for ax in three.axes if ax.patches]) == 3 and "tenDq > 1" in three.get_suptitle()
    colourful(pixels(three, tmp_path, "corner"))
    res = ds.find("tenDq > 2")
    assert sum(p.get_height() for p in plot.plot_params(res, ["tenDq"]).axes[0].patches) == len(res)
    with pytest.raises(SweepcatError, match="no parameter"):
        plot.plot_params(ds, ["tendq"])


def test_result_histograms_are_svg_without_matplotlib(catalog: str, server: str) -> None:
    res = sweepcat.client.open(server, api_key=API_KEY)[DS].find("tenDq > 1")
    text = plot.histograms_html(res, bins=10)
    assert text.count("<svg") == 12 and "<img" not in text and "base64" not in text
    facet = res.facets("tenDq", bins=10)
    assert "<figcaption" in text and f"{facet['min']:.4g}" in text
    titles = [int(t.replace(",", "")) for t in __import__("re").findall(r"<title>([\d,]+)</title>", text)]
    assert sum(titles) == 12 * len(res)  # every parameter's bars count every match
    code = ("import sys; sys.modules['matplotlib'] = None\n"  # matplotlib cannot be imported here
            "import sweepcat.client; from sweepcat.client import plot\n"
            f"res = sweepcat.client.open({catalog!r})['{DS}'].all()\n"
            "print(plot.histograms_html(res).count('<svg'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "12", out.stderr
    if hasattr(sweepcat.client.catalog.Result, "_repr_html_"):
        html = res._repr_html_()
        if "<svg" in html:  # wired into client/catalog.py
            assert html.count("<svg") == 12


def test_without_matplotlib_a_sentence_says_what_to_install(catalog: str) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.figure'] = None\n"
            "import sweepcat.client; from sweepcat.client import plot; from sweepcat.errors import SweepcatError\n"
            f"res = sweepcat.client.open({catalog!r})['{DS}'].all()\n"
            "try:\n    plot.plot_maps(res, 'rixs')\nexcept SweepcatError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'sweepcat[plot]'" in out.stdout, (out.stdout, out.stderr)


def test_explore_prints_the_page_never_the_key(catalog: str, server: str) -> None:
    said: list[str] = []
    cat = sweepcat.client.open(server, api_key=API_KEY)
    link = plot.explore(cat.backend, DS, "tenDq > 1", say=said.append)
    assert link == f"{server}/sweepcat/?ds={DS}&q=tenDq+%3E+1" and API_KEY not in link + said[0]
    assert f'href="{server}/sweepcat/?ds={DS}&amp;q=tenDq+%3E+1"' in link._repr_html_()
    import httpx

    assert httpx.get(link).status_code == 200
    local = plot.explore(sweepcat.client.open(catalog).backend, say=said.append)
    assert f"sweepcat serve --catalog {catalog}" in local and "/sweepcat/" in local
    assert str(cat.explore()).startswith(f"{server}/sweepcat/")


def test_wired_methods_call_the_helpers(catalog: str) -> None:
    """res.plot and ds.plot_params draw what the helpers draw."""
    ds = sweepcat.client.open(catalog)[DS]
    res = ds.find("tenDq > 1")
    fig = res.plot("rixs", n=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"] == \
        [ax.get_title() for ax in plot.plot_maps(res, "rixs", n=2).axes if ax.get_label() != "<colorbar>"]
    assert len(ds.plot_params(["tenDq", "F2_dd"]).axes) == len(plot.plot_params(ds, ["tenDq", "F2_dd"]).axes)
