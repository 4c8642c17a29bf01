"""Plots of a sweep in the notebook: maps on their physical axes, parameter distributions, the explorer link.

    res.plot("rixs", n=4)                   # plot_maps: a grid of labelled heatmaps, parameters in the titles
    res.plot("xps", n=4)                    # 1-D artifacts: one line per Hamiltonian on its axis
    ds.plot_params(["tenDq", "F2_dd"])      # plot_params: histograms and a 2-D density (a corner plot)
    res                                     # in Jupyter: the table and small parameter histograms (inline SVG)
    cat.explore()                           # the explorer page's address (a local catalog: how to serve it)

Matplotlib is needed only for ``plot_maps`` and ``plot_params`` (``pip install 'sweepcat[plot]'``); they
return a ``matplotlib.figure.Figure`` made without pyplot (shown once in Jupyter, nothing global changed).
The HTML histograms are plain SVG and need nothing.
"""

from __future__ import annotations

import html
import urllib.parse
from typing import Any, Sequence

import numpy as np

from .. import query as ql
from ..errors import SweepcatError

MAX_MAPS = 64  # arrays one plot_maps call reads and draws


def _require_matplotlib() -> None:
    """Said before anything is read: plots need matplotlib (the ``plot`` extra)."""
    try:
        import matplotlib.colors  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise SweepcatError("plotting needs matplotlib, which is not installed",
                            "pip install 'sweepcat[plot]' (or pip install matplotlib)") from None


def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _title_params(res: Any, params: Sequence[str] | None, limit: int = 3) -> list[str]:
    """The parameters shown in titles: those asked for, else those the query names, then the first others."""
    known = [n for n, p in res.dataset.parameters.items() if isinstance(p.get("min"), (int, float))] or \
        list(res.dataset.parameters)
    if params is not None:
        unknown = [p for p in params if p not in res.dataset.parameters]
        if unknown:
            raise SweepcatError(f"{res.dataset.key} has no parameter(s) {', '.join(unknown)}",
                                f"parameters: {', '.join(res.dataset.parameters)}")
        return list(params)
    named: list[str] = []
    if res.query:
        try:
            named = sorted(ql.names(ql.parse(res.query)) & set(known))
        except ql.QueryError:
            named = []
    return (named + [n for n in known if n not in named])[:max(limit, len(named))]


def _label(key: str, row: Any, names: Sequence[str]) -> str:
    values = ", ".join(f"{n}={row[n]:.4g}" if isinstance(row[n], (float, np.floating)) else f"{n}={row[n]}"
                       for n in names if n in row)
    return f"{key}\n{values}" if values else key


def _axis(res: Any, name: str | None, n: int) -> tuple[np.ndarray, str]:
    """An artifact dimension's values and label: its shared axis, or the index when it has none."""
    if name:
        try:
            values = np.asarray(res.backend.axis(res.dataset.key, name, res.dataset.info), dtype=float).ravel()
        except SweepcatError:
            values = np.array([])
        if len(values) == n:
            return values, name
        return np.arange(n, dtype=float), f"{name} (index)"
    return np.arange(n, dtype=float), "index"


def plot_maps(res: Any, type_: str, n: int = 4, *, params: Sequence[str] | None = None, log: bool = False,
              ncols: int | None = None, cmap: str = "viridis", figsize: tuple[float, float] | None = None) -> Any:
    """The first ``n`` arrays of a result: 2-D ones as a grid of heatmaps on their physical axes (the
    array's last dimension across, its first up, each with a colour bar; ``log=True`` for a log colour
    scale), 1-D ones as lines on their axis. Titles name the Hamiltonian and its parameters (``params``,
    by default those the query names, then others, three at least). Returns a matplotlib Figure."""
    _require_matplotlib()
    art = res.dataset.artifacts.get(type_)
    if art is None:
        raise SweepcatError(f"{res.dataset.key} has no artifact type {type_!r}",
                            f"types: {', '.join(res.dataset.artifacts)}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, not {n!r}")
    shown = res.head(min(int(n), MAX_MAPS))
    count = len(shown)
    if count == 0:
        raise SweepcatError(f"nothing to plot: no Hamiltonian of {res.dataset.key} matches {res.query!r}",
                            "widen the query")
    data = shown.read(type_, progress=False)
    table = shown.params
    keys = list(table.index)
    names = _title_params(res, params)
    dims = list(art.get("axes") or [None] * (data.ndim - 1))
    if np.iscomplexobj(data) and data.ndim == 3:
        data = np.abs(data)  # a map of complex values: its magnitude
    if data.ndim == 3:
        return _maps(res, data, keys, table, names, dims, log, ncols, cmap, figsize, type_)
    if data.ndim == 2:
        return _lines(res, data, keys, table, names, dims, figsize, type_)
    raise SweepcatError(f"{type_!r} arrays are {data.ndim - 1}-D: plot_maps draws 1-D (lines) and 2-D (maps) ones",
                        "read them with res.read() or res.to_xarray() and slice")


def _maps(res: Any, data: np.ndarray, keys: list[str], table: Any, names: list[str], dims: list[str | None],
          log: bool, ncols: int | None, cmap: str, figsize: Any, type_: str) -> Any:
    from matplotlib.colors import LogNorm

    count = len(keys)
    cols = ncols or (count if count <= 3 else min(4, int(np.ceil(np.sqrt(count)))))  # 4 maps: 2 x 2
    rows = -(-count // cols)
    fig = _figure(figsize=figsize or (4.2 * cols, 3.8 * rows), layout="constrained")
    y, ylabel = _axis(res, dims[0] if dims else None, data.shape[1])
    x, xlabel = _axis(res, dims[1] if len(dims) > 1 else None, data.shape[2])
    for i in range(count):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = np.asarray(data[i], dtype=float)
        norm = None
        if log:
            positive = values[values > 0]
            if len(positive):
                norm = LogNorm(vmin=positive.min(), vmax=positive.max())
                values = np.where(values > 0, values, np.nan)
        mesh = ax.pcolormesh(x, y, values, shading="nearest", cmap=cmap, norm=norm)
        fig.colorbar(mesh, ax=ax, label=type_ + (" (log)" if norm is not None else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(_label(keys[i], table.loc[keys[i]], names), fontsize=8)
    return fig


def _lines(res: Any, data: np.ndarray, keys: list[str], table: Any, names: list[str], dims: list[str | None],
           figsize: Any, type_: str) -> Any:
    fig = _figure(figsize=figsize or (8, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x, xlabel = _axis(res, dims[0] if dims else None, data.shape[1])
    for i, key in enumerate(keys):
        label = _label(key, table.loc[key], names).replace("\n", ": ")
        if np.iscomplexobj(data):
            line, = ax.plot(x, data[i].real, lw=1.2, label=f"{label} (real)")
            ax.plot(x, data[i].imag, lw=1.2, ls="--", color=line.get_color(), label=f"{label} (imag)")
        else:
            ax.plot(x, data[i], lw=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(type_)
    ax.set_title(f"{res.dataset.key}: {type_} of {len(keys)} Hamiltonian(s)", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_params(target: Any, names: Sequence[str], *, query: str | None = None, bins: int = 40,
                figsize: tuple[float, float] | None = None) -> Any:
    """Histograms of ``names`` and the 2-D density of every pair (a corner plot) over a Dataset (all its
    Hamiltonians, or those matching ``query``) or a Result. Returns a matplotlib Figure."""
    _require_matplotlib()
    from matplotlib.colors import LogNorm

    res = target.find(query) if hasattr(target, "find") else target
    names = list(names)
    if not names:
        raise ValueError("name at least one parameter, e.g. plot_params(['tenDq', 'F2_dd'])")
    unknown = [n for n in names if n not in res.dataset.parameters]
    if unknown:
        raise SweepcatError(f"{res.dataset.key} has no parameter(s) {', '.join(unknown)}",
                            f"parameters: {', '.join(res.dataset.parameters)}")
    table = res.params
    values = {n: np.asarray(table[n], dtype=float) for n in names}
    k = len(names)
    fig = _figure(figsize=figsize or (3.2 * k + 0.8, 3.0 * k), layout="constrained")
    fig.suptitle(f"{res.dataset.key}: {len(table):,} Hamiltonians" + (f" where {res.query}" if res.query else ""),
                 fontsize=9)
    grid = fig.add_gridspec(k, k)
    for i, yname in enumerate(names):
        for j, xname in enumerate(names[:i + 1]):
            ax = fig.add_subplot(grid[i, j])
            if i == j:
                v = values[xname]
                ax.hist(v[np.isfinite(v)], bins=bins, color="#2563eb")
                ax.set_ylabel("Hamiltonians")
            else:
                xv, yv = values[xname], values[yname]
                ok = np.isfinite(xv) & np.isfinite(yv)
                counts, xe, ye = np.histogram2d(xv[ok], yv[ok], bins=bins)
                mesh = ax.pcolormesh(xe, ye, np.where(counts > 0, counts, np.nan).T, cmap="viridis",
                                     norm=LogNorm(vmin=1, vmax=max(1.0, counts.max())))
                if j == i - 1 or k == 2:
                    fig.colorbar(mesh, ax=ax, label="Hamiltonians per bin")
                ax.set_ylabel(yname)
            ax.set_xlabel(xname)
    return fig


# --------------------------------------------------------------------------- HTML (no matplotlib)


def histograms_html(res: Any, names: Sequence[str] | None = None, bins: int = 20, width: int = 120,
                    height: int = 36) -> str:
    """Small inline-SVG histograms of a result's parameters (one facets request each), for its HTML repr."""
    names = list(names) if names is not None else [n for n, p in res.dataset.parameters.items()
                                                   if isinstance(p.get("min"), (int, float))]
    parts = []
    for name in names:
        facet = res.facets(name, bins=bins)
        counts = facet.get("histogram", {}).get("counts") or []
        lo, hi = facet.get("min"), facet.get("max")
        parts.append(_svg_histogram(name, counts, lo, hi, width, height))
    if not parts:
        return ""
    return ('<div class="sweepcat-histograms" style="display:flex;flex-wrap:wrap;gap:6px 14px;margin-top:6px">'
            + "".join(parts) + "</div>")


def _svg_histogram(name: str, counts: list[int], lo: Any, hi: Any, width: int, height: int) -> str:
    top = max(counts) if counts else 0
    bw = width / max(1, len(counts))
    bars = "".join(
        f'<rect x="{i * bw:.2f}" y="{height - h:.2f}" width="{max(bw - 1, 0.5):.2f}" height="{h:.2f}">'
        f"<title>{c:,}</title></rect>"
        for i, c in enumerate(counts) if c
        for h in [max(1.0, c / top * height) if top else 0.0])

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, (int, float)) else "–"
    return (f'<figure style="margin:0;font:11px sans-serif" title="{html.escape(name)}">'
            f'<figcaption style="font-weight:600">{html.escape(name)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" fill="#2563eb" role="img" aria-label="histogram of {html.escape(name)}">'
            f"{bars}</svg>"
            f'<div style="display:flex;justify-content:space-between;width:{width}px;color:#6b7280">'
            f"<span>{fmt(lo)}</span><span>{fmt(hi)}</span></div></figure>")


# --------------------------------------------------------------------------- the explorer


class ExplorerLink(str):
    """The explorer's address (a str); shown in Jupyter as a link. It never holds an API key."""

    def _repr_html_(self) -> str:
        if not self.startswith(("http://", "https://")):
            return f"<pre>{html.escape(str(self))}</pre>"
        return f'<a href="{html.escape(self)}" target="_blank" rel="noopener">open the sweepcat explorer: ' \
               f"{html.escape(self)}</a>"


def explore(backend: Any, dataset: str | None = None, query: str | None = None, open_browser: bool = False,
            say: Any = print) -> ExplorerLink:
    """The explorer's URL for a server catalog (with the dataset and query as its state), printed and
    returned, opened in a browser if asked; for a catalog read directly, how to serve it."""
    url = getattr(backend, "url", None)
    if not url:
        where = getattr(backend, "catalog", None) or getattr(backend, "where", "CATALOG")
        text = (f"{where} is a catalog read directly (no server): the explorer is served by `sweepcat serve`.\n"
                f"Run:  sweepcat serve --catalog {where}\n"
                "then open http://127.0.0.1:8000/sweepcat/" + (f"?ds={urllib.parse.quote(dataset)}" if dataset else ""))
        say(text)
        return ExplorerLink(text)
    state = {k: v for k, v in (("ds", dataset), ("q", query)) if v}
    link = ExplorerLink(f"{url}/sweepcat/" + (f"?{urllib.parse.urlencode(state)}" if state else ""))
    key = getattr(backend, "api_key", None)
    say(f"sweepcat explorer: {link}" + ("  (the page asks for the API key once per browser tab)" if key else ""))
    if open_browser:
        import webbrowser

        webbrowser.open(link)
    return link
