"""The explorer: a web page at ``/sweepcat/`` for looking at a sweep, and the routes it reads.

The page (``static/explorer.{html,js,css}``: plain JavaScript drawing on canvas and SVG, no third-party
code, nothing fetched from elsewhere) shows a dataset's parameters as histograms, parallel coordinates
and a 2-D view, all brushable; a query box; a sorted, paged table; and a Hamiltonian's arrays on their
physical axes. Its data comes from sweepcat's routes (``/datasets``), Tiled's (``/array/full``,
``/metadata``: one node at a time, through the fast path) and the routes below, under
``/api/v1/sweepcat/explorer/``, each one request per view however many Hamiltonians match:

- ``summary/{dataset}``: count of ``q`` and every parameter's histogram, of all Hamiltonians and of the
  matches, on fixed edges (the dataset's range), so a selection's bars stand on the full histogram;
- ``density/{dataset}``: two parameters of the matches, as points up to ``points`` matches and as a 2-D
  histogram past that (binned here, so 10^6 matches cost a few kB);
- ``parallel/{dataset}``: every numeric parameter of up to ``lines`` matches, or past that the 2-D
  histogram of each pair of neighbouring axes (a density-binned parallel-coordinates view);
- ``table/{dataset}``: a page of the matches' parameters, sorted as ``Result.sort_by`` sorts;
- ``locators/{dataset}.{csv,parquet}``: the matches' locators (the ``/locators`` route's table) as a file.

Every route authenticates through Tiled and sees a dataset as the access policy shows it (``policy``);
a bad query is a 400 with the server's sentence, which the page shows under the query box.

Bins are computed once per dataset version (a small integer per parameter and row), so a histogram of a
selection is a gather and a ``bincount``: ~100 ms server time at 10^6 Hamiltonians (BENCHMARKS.md).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from .. import query as ql
from ..catalog.index import DatasetIndex
from ..errors import SweepcatError
from .policy import Access, dataset_access

STATIC = Path(__file__).resolve().parent / "static"
READ_METADATA = ["read:metadata"]
HIST_BINS = 40  # the page's histograms
MAX_BINS = 200  # bins per axis any route computes (bin numbers fit a uint8)
MAX_POINTS = 20_000  # points (2-D view) or lines (parallel coordinates) sent before binning
MAX_TABLE_PAGE = 1000
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}

api = APIRouter(prefix="/explorer")  # included in routes.router: /api/v1/sweepcat/explorer/...
page = APIRouter()  # the page itself, mounted at /sweepcat/ by build_app


# --------------------------------------------------------------------------- the page and its files


def _page_html(api_base: str) -> str:
    text = (STATIC / "explorer.html").read_text()
    return text.replace("{{API_BASE}}", api_base)


def _static(name: str) -> Response:
    """One of the page's own files (a flat directory: no path reaches past it)."""
    path = STATIC / name
    if "/" in name or "\\" in name or name.startswith(".") or path.suffix not in MEDIA or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no file {name!r} in the explorer")
    return Response(path.read_bytes(), media_type=MEDIA[path.suffix], headers={"cache-control": "no-cache"})


@page.get("/sweepcat", include_in_schema=False)
async def explorer_redirect(request: Request) -> Response:
    query = request.url.query
    return RedirectResponse(f"{request.scope.get('root_path', '')}/sweepcat/" + (f"?{query}" if query else ""))


async def explorer_page(request: Request) -> HTMLResponse:
    """The explorer. It needs no key itself: its data requests authenticate (a key kept in sessionStorage)."""
    return HTMLResponse(_page_html(f"{request.scope.get('root_path', '')}/api/v1"),
                        headers={"cache-control": "no-cache"})


async def explorer_static(name: str) -> Response:
    return _static(name)


page.add_api_route("/sweepcat/", explorer_page, include_in_schema=False)
page.add_api_route("/sweepcat/static/{name}", explorer_static, include_in_schema=False)
# The same page under the API prefix, for servers built without sweepcat's app (`tiled serve config`).
api.add_api_route("/", explorer_page, include_in_schema=False)
api.add_api_route("/static/{name}", explorer_static, include_in_schema=False)


def mount(app: Any) -> None:
    """Serve the page at /sweepcat/ (its API routes come with sweepcat's router, under /api/v1)."""
    app.include_router(page)


# --------------------------------------------------------------------------- selections and bins


def _index(access: Access, dataset: str) -> DatasetIndex:
    from .routes import index_cache

    try:
        return index_cache(access.policy.catalog).get(dataset)
    except LookupError:
        raise HTTPException(status_code=404, detail={"message": f"no dataset {dataset!r}",
                                                     "hint": "list them at /api/v1/sweepcat/datasets"}) from None
    except SweepcatError as exc:
        raise _bad(exc, 404) from None


def _bad(exc: SweepcatError, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail={"message": exc.message, "hint": exc.hint})


def _select(index: DatasetIndex, q: str | None, visible: frozenset[str] | None) -> np.ndarray:
    """Row positions matching ``q`` among the Hamiltonians the caller may see, in listing order."""
    try:
        rows = index.select(q)
    except ql.QueryError as exc:
        raise _bad(exc) from None
    if visible is not None:
        rows = rows[np.isin(index.table.key[rows], np.asarray(sorted(visible), dtype=object))]
    return rows


def _numeric(index: DatasetIndex) -> list[str]:
    return [n for n, c in index.table.columns.items() if c.dtype.kind in "iuf"]


@dataclass
class Binned:
    """One parameter on fixed bins over the dataset's range: each row's bin number (``bins``: missing)."""

    lo: float | None
    hi: float | None
    edges: list[float]
    idx: np.ndarray  # uint8 per row
    all: np.ndarray  # counts over every row


_bins_lock = threading.Lock()
BINS_ATTR = "_sweepcat_explorer_bins"  # kept on the index object: gone with its version


def _binned(index: DatasetIndex, name: str, bins: int) -> Binned:
    cache = index.__dict__.setdefault(BINS_ATTR, {})
    got = cache.get((name, bins))
    if got is not None:
        return got
    with _bins_lock:
        got = cache.get((name, bins))
        if got is None:
            got = cache[(name, bins)] = _bin(index.table.columns[name], bins)
    return got


def _bin(column: np.ndarray, bins: int) -> Binned:
    values = column.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    idx = np.full(len(values), bins, dtype=np.uint8)
    if not finite.any():
        return Binned(None, None, [], idx, np.zeros(bins, np.int64))
    lo, hi = float(values[finite].min()), float(values[finite].max())
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, lo + 0.5, bins + 1)
    v = values[finite]
    # numpy's histogram, step by step (same edges, same corrections at them), so counts equal /facets'
    i = ((v - edges[0]) / (edges[-1] - edges[0]) * bins).astype(np.int64)
    i[i == bins] -= 1  # the last edge is inside the last bin
    i[v < edges[i]] -= 1
    i[(v >= edges[i + 1]) & (i != bins - 1)] += 1
    idx[finite] = i
    return Binned(lo, hi, edges.tolist(), idx, np.bincount(idx, minlength=bins + 1)[:bins])


MAX_TEXT_VALUES = 50  # a text parameter with more distinct values (an identifier such as huid) is not counted


def _text_summary(index: DatasetIndex, name: str, rows: np.ndarray | None) -> dict[str, Any]:
    """A text parameter's values among the matches, most frequent first; for identifiers (more than
    ``MAX_TEXT_VALUES`` distinct values in the dataset) only how many there are."""
    cache = index.__dict__.setdefault(BINS_ATTR, {})
    coded = cache.get(("codes", name))
    if coded is None:
        import pandas as pd

        codes, uniques = pd.factorize(pd.Series(index.table.columns[name], dtype=object), use_na_sentinel=True)
        coded = cache[("codes", name)] = (codes.astype(np.int64) + 1, [str(u) for u in uniques])  # 0: missing
    codes, values = coded
    if len(values) > MAX_TEXT_VALUES:
        return {"name": name, "kind": "text", "distinct": len(values), "sel": {}, "identifier": True}
    counts = np.bincount(codes if rows is None else codes[rows], minlength=len(values) + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    return {"name": name, "kind": "text", "distinct": len(values),
            "sel": {values[i]: int(counts[i]) for i in order if counts[i]}}


def _counts(b: Binned, rows: np.ndarray | None, bins: int) -> list[int]:
    picked = b.idx if rows is None else b.idx[rows]
    return np.bincount(picked, minlength=bins + 1)[:bins].tolist()


def _all_rows(index: DatasetIndex, rows: np.ndarray) -> np.ndarray | None:
    """None when ``rows`` are every row (no gather needed)."""
    return None if len(rows) == len(index.table) else rows


def _finite(values: np.ndarray) -> list[Any]:
    return [None if v != v else v for v in values.tolist()]  # NaN -> null (JSON has no NaN)


# --------------------------------------------------------------------------- the routes


async def _run(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(partial(fn, *args))


@api.get("/summary/{dataset}")
async def summary(dataset: str, q: str | None = Query(None), bins: int = Query(HIST_BINS, ge=1, le=MAX_BINS),
                  access: Access = Depends(dataset_access(READ_METADATA))) -> dict[str, Any]:
    """How many Hamiltonians match ``q``, and each parameter's histogram over all of them and over the
    matches, on the same edges (numbers), or its most frequent values (text)."""
    visible = await access.visible_keys()

    def run() -> dict[str, Any]:
        index = _index(access, dataset)
        rows = _select(index, q, visible)
        everyone = _select(index, None, visible) if visible is not None else None
        picked = _all_rows(index, rows)
        params = []
        for name, col in index.table.columns.items():
            if col.dtype.kind in "iuf":
                b = _binned(index, name, bins)
                base = b.all.tolist() if everyone is None else _counts(b, everyone, bins)
                params.append({"name": name, "kind": "number", "integer": col.dtype.kind in "iu", "min": b.lo,
                               "max": b.hi, "edges": b.edges, "all": base, "sel": _counts(b, picked, bins)})
            else:
                params.append(_text_summary(index, name, picked))
        return {"dataset": dataset, "version": index.version, "query": q, "count": int(len(rows)),
                "total": int(len(index.table) if everyone is None else len(everyone)), "params": params}
    return await _run(run)


@api.get("/density/{dataset}")
async def density(dataset: str, x: str, y: str, q: str | None = Query(None),
                  bins: int = Query(64, ge=2, le=MAX_BINS), points: int = Query(3000, ge=0, le=MAX_POINTS),
                  access: Access = Depends(dataset_access(READ_METADATA))) -> dict[str, Any]:
    """Two parameters of the matches: their values (up to ``points`` matches) or a ``bins`` x ``bins``
    histogram over the dataset's ranges (``counts[i * bins + j]``: x bin i, y bin j)."""
    visible = await access.visible_keys()

    def run() -> dict[str, Any]:
        index = _index(access, dataset)
        numeric = _numeric(index)
        for name in (x, y):
            if name not in numeric:
                raise _bad(ql.QueryError(f"cannot plot {name!r}: not a numeric parameter of {dataset}",
                                         f"numeric parameters: {', '.join(numeric)}"))
        rows = _select(index, q, visible)
        bx, by = _binned(index, x, bins), _binned(index, y, bins)
        out: dict[str, Any] = {"dataset": dataset, "x": x, "y": y, "count": int(len(rows)), "bins": bins,
                               "xrange": [bx.lo, bx.hi], "yrange": [by.lo, by.hi]}
        if len(rows) <= points:
            cols = index.table.columns
            return {**out, "mode": "points", "xs": _finite(cols[x][rows].astype(np.float64)),
                    "ys": _finite(cols[y][rows].astype(np.float64)), "keys": index.table.key[rows].tolist()}
        picked = _all_rows(index, rows)
        ix = bx.idx if picked is None else bx.idx[picked]
        iy = by.idx if picked is None else by.idx[picked]
        keep = (ix < bins) & (iy < bins)
        flat = ix[keep].astype(np.int32) * bins + iy[keep]
        counts = np.bincount(flat, minlength=bins * bins)
        return {**out, "mode": "density", "xedges": bx.edges, "yedges": by.edges, "counts": counts.tolist(),
                "max": int(counts.max()) if len(counts) else 0}
    return await _run(run)


@api.get("/parallel/{dataset}")
async def parallel(dataset: str, q: str | None = Query(None), lines: int = Query(2000, ge=0, le=MAX_POINTS),
                   bins: int = Query(32, ge=2, le=MAX_BINS),
                   access: Access = Depends(dataset_access(READ_METADATA))) -> dict[str, Any]:
    """Every numeric parameter of the matches, for parallel coordinates: each match's values (up to
    ``lines`` matches), or past that one ``bins`` x ``bins`` histogram per pair of neighbouring axes."""
    visible = await access.visible_keys()

    def run() -> dict[str, Any]:
        index = _index(access, dataset)
        names = _numeric(index)
        rows = _select(index, q, visible)
        binned = [_binned(index, n, bins) for n in names]
        out: dict[str, Any] = {"dataset": dataset, "params": names, "count": int(len(rows)), "bins": bins,
                               "ranges": [[b.lo, b.hi] for b in binned]}
        if len(rows) <= lines:
            cols = index.table.columns
            return {**out, "mode": "lines", "keys": index.table.key[rows].tolist(),
                    "values": [_finite(cols[n][rows].astype(np.float64)) for n in names]}
        picked = _all_rows(index, rows)
        idx = [b.idx if picked is None else b.idx[picked] for b in binned]
        pairs = []
        for a, b in zip(idx[:-1], idx[1:], strict=True):
            keep = (a < bins) & (b < bins)
            pairs.append(np.bincount(a[keep].astype(np.int32) * bins + b[keep], minlength=bins * bins).tolist())
        return {**out, "mode": "density", "pairs": pairs}
    return await _run(run)


def sorted_rows(index: DatasetIndex, rows: np.ndarray, sort: str | None, descending: bool) -> np.ndarray:
    """``rows`` (ascending, as ``select`` gives them) in ``Result.sort_by``'s order: the whole dataset's
    stable order is computed once per version and filtered, which is the same order for any subset."""
    if not sort:
        return rows
    known = ["key", *index.parameters]
    if sort not in known:
        raise _bad(ql.QueryError(f"cannot sort by {sort!r}: no such parameter", f"parameters: {', '.join(known)}"))
    cut = f"sort:{'-' if descending else ''}{sort}"
    cache = index.__dict__.setdefault(BINS_ATTR, {})
    order = cache.get(("order", cut))
    if order is None:
        order = cache[("order", cut)] = index.cut(np.arange(len(index.table)), cut)
    if len(rows) == len(index.table):
        return order
    inside = np.zeros(len(index.table), dtype=bool)
    inside[rows] = True
    return order[inside[order]]


@api.get("/table/{dataset}")
async def table(dataset: str, q: str | None = Query(None), sort: str | None = Query(None),
                descending: bool = Query(False), offset: int = Query(0, ge=0),
                limit: int = Query(50, ge=0, le=MAX_TABLE_PAGE),
                access: Access = Depends(dataset_access(READ_METADATA))) -> dict[str, Any]:
    """A page of the matches (key and parameters), in listing order or sorted by a parameter (stable,
    missing values last, as ``res.sort_by(name, ascending=...)``)."""
    visible = await access.visible_keys()

    def run() -> dict[str, Any]:
        index = _index(access, dataset)
        rows = sorted_rows(index, _select(index, q, visible), sort, descending)
        page_rows = rows[offset:offset + limit]
        columns = ["key", *index.parameters]
        data = [index.table.key[page_rows].tolist()]
        for name in index.parameters:
            col = index.table.columns[name][page_rows]
            data.append(_finite(col) if col.dtype.kind == "f" else col.tolist())
        return {"dataset": dataset, "count": int(len(rows)), "offset": offset, "limit": limit, "sort": sort,
                "descending": descending, "columns": columns, "rows": [list(r) for r in zip(*data, strict=True)]}
    return await _run(run)


@api.get("/locators/{dataset}")
async def locators_file(dataset: str, q: str | None = Query(None), type: str | None = None,
                        format: str = Query("csv", pattern="^(csv|parquet)$"),
                        access: Access = Depends(dataset_access(READ_METADATA))) -> Response:
    """The matches' locators as a file to download: the table ``/api/v1/sweepcat/locators`` serves (the same
    function, the same refusals and access-policy filtering), written as CSV or Parquet."""
    from .routes import locator_page

    visible = await access.visible_keys()
    table = await _run(locator_page, access.policy, dataset, q, type, visible)
    if visible is not None and table.num_rows:
        pairs = list(zip(table.column("key").to_pylist(), table.column("type").to_pylist(), strict=True))
        hidden = await access.hidden_artifacts(pairs)
        if hidden:
            table = table.filter(pa.array([p not in hidden for p in pairs]))
    body = await _run(_encode, table, format)
    name = f"{dataset}-locators{'-' + type if type else ''}.{format}"
    media = "text/csv; charset=utf-8" if format == "csv" else "application/vnd.apache.parquet"
    return Response(body, media_type=media, headers={"content-disposition": f'attachment; filename="{_safe(name)}"',
                                                     "x-sweepcat-count": str(table.num_rows)})


def _encode(table: pa.Table, format: str) -> bytes:
    sink = io.BytesIO()
    if format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, sink)
    return sink.getvalue()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
