"""sweepcat's HTTP routes inside the Tiled server (mounted under /api/v1/sweepcat).

Registration takes thousands of nodes per request and writes them with the
same code as `sweepcat ingest`, so every catalog invariant holds. Requests
authenticate with Tiled's own API keys and need Tiled's scopes.
"""

from __future__ import annotations

import dataclasses
import io
import os
import threading
from functools import partial
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import Response
from tiled.server.authentication import check_scopes
from tiled.server.dependencies import get_root_tree

from .. import __version__
from ..catalog.index import DatasetIndex, IndexCache
from ..catalog.ingest import ingest
from ..catalog.schema import CatalogURI, parse_catalog
from ..contract import decode_batch
from ..errors import ContractError, SweepcatError
from ..query import QueryError
from .adapter import FILES

router = APIRouter(prefix="/sweepcat")

MAX_BATCH_BYTES = int(os.environ.get("SWEEPCAT_MAX_BATCH_BYTES", str(256 * 1024 * 1024)))
MAX_BATCH_ROWS = int(os.environ.get("SWEEPCAT_MAX_BATCH_ROWS", "200000"))
MAX_READ_BYTES = int(os.environ.get("SWEEPCAT_MAX_READ_BYTES", str(512 * 1024 * 1024)))
REGISTER_SCOPES = ["write:metadata", "create:node", "register"]


def catalog_of(root_tree: Any) -> CatalogURI:
    url = root_tree.context.engine.url.render_as_string(hide_password=False)
    return parse_catalog(url)


def readable_roots(root_tree: Any) -> list[str]:
    return [os.path.realpath(str(s.path)) for s in root_tree.context.readable_storage.values()
            if hasattr(s, "path")]


def _error(exc: SweepcatError, status: int) -> HTTPException:
    detail: dict[str, Any] = {"message": exc.message, "hint": exc.hint}
    if isinstance(exc, ContractError):
        detail["problems"] = [dataclasses.asdict(p) for p in exc.problems]
    return HTTPException(status_code=status, detail=detail)


@router.get("/info")
async def info(request: Request, root_tree: Any = Depends(get_root_tree),
               _: Any = Security(check_scopes, scopes=["read:metadata"])) -> dict[str, Any]:
    cat = catalog_of(root_tree)
    return {"sweepcat": __version__, "catalog": cat.dialect, "max_batch_bytes": MAX_BATCH_BYTES,
            "max_batch_rows": MAX_BATCH_ROWS, "max_read_bytes": MAX_READ_BYTES}


@router.post("/register")
async def register(request: Request, update: bool = Query(False), verify_all: bool = Query(False),
                   root_tree: Any = Depends(get_root_tree),
                   _: Any = Security(check_scopes, scopes=REGISTER_SCOPES)) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > MAX_BATCH_BYTES:
        raise HTTPException(status_code=413, detail=f"batch of {declared} bytes exceeds the limit of "
                            f"{MAX_BATCH_BYTES} bytes; send smaller batches (sweepcat register --batch-size)")
    body = await request.body()
    if len(body) > MAX_BATCH_BYTES:
        raise HTTPException(status_code=413, detail=f"batch of {len(body)} bytes exceeds the limit of "
                            f"{MAX_BATCH_BYTES} bytes; send smaller batches (sweepcat register --batch-size)")
    try:
        manifests = decode_batch(body)
    except SweepcatError as exc:
        raise _error(exc, 400) from None
    rows = manifests.ham.num_rows + manifests.art.num_rows
    if rows > MAX_BATCH_ROWS:
        raise HTTPException(status_code=413, detail=f"batch of {rows} rows exceeds the limit of {MAX_BATCH_ROWS} "
                            "rows; send smaller batches (sweepcat register --batch-size)")
    root = os.path.realpath(manifests.description.root)
    roots = readable_roots(root_tree)
    if not any(root == r or root.startswith(r.rstrip("/") + "/") for r in roots):
        raise HTTPException(status_code=403, detail={
            "message": f"dataset root {manifests.description.root} is outside this server's readable storage",
            "hint": f"readable storage: {', '.join(roots) or '(none)'}; ask the server admin to add the root "
                    "(sweepcat serve adds the roots of ingested datasets; or edit readable_storage)"})
    cat = catalog_of(root_tree)
    try:
        result = await anyio.to_thread.run_sync(partial(
            ingest, manifests, cat, update=update, verify_sample=None if verify_all else 2000))
    except ContractError as exc:
        raise _error(exc, 422) from None
    except SweepcatError as exc:
        raise _error(exc, 409) from None
    return dataclasses.asdict(result)


@router.post("/prune/{dataset}")
async def prune(dataset: str, request: Request, root_tree: Any = Depends(get_root_tree),
                _: Any = Security(check_scopes, scopes=["write:metadata", "delete:node"])) -> dict[str, Any]:
    """Remove the Hamiltonians of ``dataset`` whose keys are not in the body's ``keys``."""
    payload = await request.json()
    keep = payload.get("keys") if isinstance(payload, dict) else None
    if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
        raise HTTPException(status_code=400, detail="body must be {\"keys\": [\"H_...\", ...]}")
    from ..catalog.delete import prune_dataset

    try:
        removed = await anyio.to_thread.run_sync(partial(prune_dataset, catalog_of(root_tree), dataset, set(keep)))
    except SweepcatError as exc:
        raise _error(exc, 404) from None
    return {"dataset": dataset, "pruned": removed}


# --------------------------------------------------------------------------- search and batch access

MAX_PAGE = 10_000
_caches: dict[str, IndexCache] = {}
_caches_lock = threading.Lock()


def index_cache(root_tree: Any) -> IndexCache:
    cat = catalog_of(root_tree)
    with _caches_lock:
        cache = _caches.get(cat.uri)
        if cache is None:
            cache = _caches[cat.uri] = IndexCache(cat)
        return cache


def _dataset(cache: IndexCache, dataset: str) -> DatasetIndex:
    try:
        return cache.get(dataset)
    except LookupError:
        raise HTTPException(status_code=404, detail={"message": f"no dataset {dataset!r}",
                                                     "hint": "list them at /api/v1/sweepcat/datasets"}) from None
    except SweepcatError as exc:
        raise _error(exc, 404) from None


def _rows(index: DatasetIndex, query: str | None) -> np.ndarray:
    try:
        return index.select(query)
    except QueryError as exc:
        raise _error(exc, 400) from None


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(partial(fn, *args))


def _arrow(table: pa.Table) -> Response:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Response(sink.getvalue(), media_type="application/vnd.apache.arrow.stream")


@router.get("/datasets")
async def datasets(root_tree: Any = Depends(get_root_tree),
                   _: Any = Security(check_scopes, scopes=["read:metadata"])) -> list[dict[str, Any]]:
    return await _in_thread(index_cache(root_tree).datasets)


def search_page(cache: IndexCache, dataset: str, q: str | None, offset: int, limit: int) -> dict[str, Any]:
    index = _dataset(cache, dataset)
    rows = _rows(index, q)
    page = rows[offset:offset + limit]
    return {"dataset": dataset, "query": q, "count": int(len(rows)), "offset": offset, "limit": limit,
            "keys": index.table.key[page].tolist()}


@router.get("/search/{dataset}")
async def search(dataset: str, q: str | None = Query(None, max_length=10_000), offset: int = Query(0, ge=0),
                 limit: int = Query(100, ge=0, le=MAX_PAGE), root_tree: Any = Depends(get_root_tree),
                 _: Any = Security(check_scopes, scopes=["read:metadata"])) -> dict[str, Any]:
    """Count and one page of keys of the Hamiltonians matching ``q`` (e.g. ``tenDq > 1 and F2_dd < 3``)."""
    return await _in_thread(search_page, index_cache(root_tree), dataset, q, offset, limit)


@router.get("/facets/{dataset}")
async def facets(dataset: str, param: str, q: str | None = Query(None, max_length=10_000),
                 bins: int = Query(20, ge=1, le=1000), root_tree: Any = Depends(get_root_tree),
                 _: Any = Security(check_scopes, scopes=["read:metadata"])) -> dict[str, Any]:
    """min, max and a histogram of ``param`` over the Hamiltonians matching ``q``."""
    def run() -> dict[str, Any]:
        index = _dataset(index_cache(root_tree), dataset)
        try:
            return index.facets(_rows(index, q), param, bins)
        except QueryError as exc:
            raise _error(exc, 400) from None
    return await _in_thread(run)


@router.get("/params/{dataset}")
async def params_route(dataset: str, q: str | None = Query(None, max_length=10_000),
                       offset: int = Query(0, ge=0), limit: int | None = Query(None, ge=0),
                       root_tree: Any = Depends(get_root_tree),
                       _: Any = Security(check_scopes, scopes=["read:metadata"])) -> Response:
    """Every matching Hamiltonian's parameters (or a page of them), as one Arrow table."""
    def run() -> Response:
        index = _dataset(index_cache(root_tree), dataset)
        rows = _rows(index, q)
        return _arrow(index.params_table(rows[offset:] if limit is None else rows[offset:offset + limit]))
    return await _in_thread(run)


@router.get("/locators/{dataset}")
async def locators(dataset: str, q: str | None = Query(None, max_length=10_000), type: str | None = None,
                   root_tree: Any = Depends(get_root_tree),
                   _: Any = Security(check_scopes, scopes=["read:metadata"])) -> Response:
    """Every matching artifact's locator (absolute file, dataset, index, URL form), as one Arrow table."""
    def run() -> Response:
        cache = index_cache(root_tree)
        index = _dataset(cache, dataset)
        try:
            return _arrow(index.locator_table(cache.db(), _rows(index, q), type))
        except QueryError as exc:
            raise _error(exc, 400) from None
    return await _in_thread(run)


def read_page(cache: IndexCache, dataset: str, type_: str, q: str | None, offset: int,
              limit: int | None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a stacked read; raises HTTPException for everything a client must fix."""
    index = _dataset(cache, dataset)
    rows = _rows(index, q)
    page = rows[offset:] if limit is None else rows[offset:offset + limit]
    try:
        t = index.types(cache.db()).get(type_)
        if t is None:
            raise QueryError(f"unknown artifact type {type_!r}",
                             f"types of {dataset}: {', '.join(index.types(cache.db()))}")
        row_bytes = int(np.prod(t.shape)) * t.dtype.itemsize
        if len(page) * row_bytes > MAX_READ_BYTES:
            fit = max(1, MAX_READ_BYTES // max(1, row_bytes))
            raise HTTPException(status_code=413, detail={
                "message": f"{len(page)} arrays of {row_bytes} bytes exceed the {MAX_READ_BYTES}-byte response "
                           "limit", "hint": f"page with offset and limit={fit} (the sweepcat client does this)",
                "page_limit": fit})
        array = index.read(cache.db(), page, type_, opener=FILES.get, close=False)
    except QueryError as exc:
        raise _error(exc, 400) from None
    except SweepcatError as exc:
        raise _error(exc, 404) from None
    headers = {"x-sweepcat-shape": ",".join(map(str, array.shape)), "x-sweepcat-dtype": array.dtype.str,
               "x-sweepcat-total": str(len(rows)), "x-sweepcat-offset": str(offset)}
    return np.ascontiguousarray(array).tobytes(), headers


@router.get("/read/{dataset}")
async def read(dataset: str, type: str, q: str | None = Query(None, max_length=10_000),
               offset: int = Query(0, ge=0), limit: int | None = Query(None, ge=0),
               root_tree: Any = Depends(get_root_tree),
               _: Any = Security(check_scopes, scopes=["read:data"])) -> Response:
    """Stacked arrays ``(n, *shape)`` of one artifact type for the matching Hamiltonians (a page of them).

    Rows are grouped by file and read in index order, each file opened once.
    Responses above the size limit are refused with the page size to use.
    """
    body, headers = await _in_thread(read_page, index_cache(root_tree), dataset, type, q, offset, limit)
    return Response(body, media_type="application/octet-stream", headers=headers)
