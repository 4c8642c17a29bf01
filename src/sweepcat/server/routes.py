"""sweepcat's HTTP routes inside the Tiled server (mounted under /api/v1/sweepcat).

Registration takes thousands of nodes per request and writes them with the
same code as `sweepcat ingest`, so every catalog invariant holds. Every route
authenticates through Tiled and reads through the server's boundary
(``policy``): Tiled's scopes, the access policy on the dataset node, the file
rule under readable storage, the in-flight byte budget.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import anyio
import numpy as np
import pyarrow as pa
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse

from .. import __version__
from ..catalog.index import DatasetIndex, IndexCache
from ..catalog.ingest import ingest
from ..catalog.schema import CatalogURI
from ..contract import decode_batch
from ..errors import CatalogBusy, ContractError, SweepcatError
from ..h5open import FileRefused
from ..h5read import SourceChanged, SourceInvalid, SourceMissing, check_stack, stream_stacked
from ..query import QueryError
from .policy import BUDGET, Access, Reservation, ServerPolicy, check_chunk, dataset_access, server_access

log = logging.getLogger("sweepcat.server")
router = APIRouter(prefix="/sweepcat")

MAX_BATCH_BYTES = int(os.environ.get("SWEEPCAT_MAX_BATCH_BYTES", str(256 * 1024 * 1024)))
PARSED_BYTES_PER_BODY_BYTE = 6  # a JSON key list parsed into a list and a set, per body byte (4.4 measured)
MAX_BATCH_ROWS = int(os.environ.get("SWEEPCAT_MAX_BATCH_ROWS", "200000"))
MAX_READ_BYTES = int(os.environ.get("SWEEPCAT_MAX_READ_BYTES", str(512 * 1024 * 1024)))
STREAM_CHUNK_BYTES = int(os.environ.get("SWEEPCAT_STREAM_CHUNK_BYTES", str(8 * 1024 * 1024)))
REGISTER_SCOPES = ["write:metadata", "create:node", "register"]
READ_METADATA = ["read:metadata"]
READ_DATA = ["read:data"]
MAX_PAGE = 10_000


def _error(exc: SweepcatError, status: int) -> HTTPException:
    detail: dict[str, Any] = {"message": exc.message, "hint": exc.hint}
    if isinstance(exc, ContractError):  # the problems travel once, as a list (the client prints them)
        detail["message"] = exc.head
        detail["problems"] = [dataclasses.asdict(p) for p in exc.problems]
    return HTTPException(status_code=status, detail=detail)


def read_error(exc: SweepcatError) -> HTTPException:
    """HTTP status of a refused or failed read: 403 outside the file rule, 404 gone, 422 changed."""
    if isinstance(exc, FileRefused):
        return _error(SweepcatError(f"{exc.path}: refused: {exc.reason}", exc.hint), 403)
    if isinstance(exc, (SourceChanged, SourceInvalid)):
        return _error(exc, 422)
    return _error(exc, 404)


# --------------------------------------------------------------------------- registration


@router.get("/info")
async def info(access: Access = Depends(server_access(READ_METADATA))) -> dict[str, Any]:
    return {"sweepcat": __version__, "catalog": access.policy.catalog.dialect, "max_batch_bytes": MAX_BATCH_BYTES,
            "max_batch_rows": MAX_BATCH_ROWS, "max_read_bytes": MAX_READ_BYTES}


@router.post("/register")
async def register(request: Request, update: bool = Query(False), verify_all: bool = Query(False),
                   move_root: bool = Query(False),
                   access: Access = Depends(server_access(REGISTER_SCOPES))) -> dict[str, Any]:
    body = await _bounded_body(request, MAX_BATCH_BYTES)
    try:
        manifests = decode_batch(body)
    except SweepcatError as exc:
        raise _error(exc, 400) from None
    rows = manifests.ham.num_rows + manifests.art.num_rows
    if rows > MAX_BATCH_ROWS:
        raise HTTPException(status_code=413, detail=f"batch of {rows} rows exceeds the limit of {MAX_BATCH_ROWS} "
                            "rows; send smaller batches (sweepcat register --batch-size)")
    policy = access.policy
    rule = policy.rule()  # the root is resolved once, inside ingest, and that path is checked and recorded
    if getattr(request.app.state, "access_policy", None) is not None:
        await _check_register_target(access, manifests.description.key)
    # The body, its decoded tables and the ingest's batches: counted like array bytes in flight.
    reservation = BUDGET.reserve(3 * len(body), f"register {manifests.description.key!r}")
    try:
        result = await anyio.to_thread.run_sync(partial(
            ingest, manifests, policy.catalog, update=update, move_root=move_root,
            verify_sample=None if verify_all else 2000, root_rule=rule))
    except ContractError as exc:
        raise _error(exc, 422) from None
    except FileRefused as exc:
        raise read_error(exc) from None
    except CatalogBusy as exc:  # another writer: the client retries
        raise HTTPException(status_code=503, headers={"Retry-After": "5"},
                            detail={"message": exc.message, "hint": "the client retries; or retry later"}) from None
    except SweepcatError as exc:
        raise _error(exc, 409) from None
    finally:
        reservation.release()
    return dataclasses.asdict(result)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The request body, read as it arrives and refused (413) once past ``limit``, declared or not."""
    too_big = HTTPException(status_code=413, detail=f"batch larger than the limit of {limit} bytes; send smaller "
                                                    "batches (sweepcat register --batch-size)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        parts.append(chunk)
    return b"".join(parts)


async def _check_register_target(access: Access, dataset: str) -> None:
    """With an access policy, writing into a dataset needs the policy's write scopes on it (or on the
    root, to create it), for the whole dataset."""
    cache = index_cache(access.policy.catalog)
    exists = await anyio.to_thread.run_sync(cache.exists, dataset)
    if exists:
        await access.check_dataset(dataset, REGISTER_SCOPES)
    else:
        await access.check_dataset("", ["create:node"])


@router.post("/prune/{dataset}")
async def prune(dataset: str, request: Request,
                access: Access = Depends(dataset_access(["write:metadata", "delete:node"]))) -> dict[str, Any]:
    """Remove the Hamiltonians of ``dataset`` whose keys are not in the body's ``keys``."""
    import orjson

    body = await _bounded_body(request, MAX_BATCH_BYTES)
    # Parsed keys cost several times their bytes (a Python string each): counted like array bytes.
    reservation = BUDGET.reserve(len(body) * PARSED_BYTES_PER_BODY_BYTE, f"prune {dataset!r}")
    try:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        keep = payload.get("keys") if isinstance(payload, dict) else None
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise HTTPException(status_code=400, detail="body must be {\"keys\": [\"H_...\", ...]}")
        from ..catalog.delete import prune_dataset

        try:
            removed = await anyio.to_thread.run_sync(partial(prune_dataset, access.policy.catalog, dataset,
                                                             set(keep)))
        except SweepcatError as exc:
            raise _error(exc, 404) from None
    finally:
        reservation.release()
    return {"dataset": dataset, "pruned": removed}


# --------------------------------------------------------------------------- search and batch access

_caches: dict[str, IndexCache] = {}
_caches_lock = threading.Lock()


def index_cache(cat: CatalogURI) -> IndexCache:
    with _caches_lock:
        cache = _caches.get(cat.uri)
        if cache is None:
            cache = _caches[cat.uri] = IndexCache(cat)
        return cache


def close_index_caches() -> None:
    """Close every cached database connection (at server shutdown)."""
    with _caches_lock:
        caches = list(_caches.values())
        _caches.clear()
    for cache in caches:
        cache.close()


def _dataset(cache: IndexCache, dataset: str) -> DatasetIndex:
    try:
        return cache.get(dataset)
    except LookupError:
        raise HTTPException(status_code=404, detail={"message": f"no dataset {dataset!r}",
                                                     "hint": "list them at /api/v1/sweepcat/datasets"}) from None
    except SweepcatError as exc:
        raise _error(exc, 404) from None


def _same_version(index: DatasetIndex, version: int | None) -> None:
    """A result computed on one version of a dataset is read on that version, or not at all."""
    if version is not None and version != index.version:
        raise HTTPException(status_code=409, detail={
            "message": f"dataset {index.key!r} changed since this result was computed (version {version}, now "
                       f"{index.version}): its rows may no longer be the ones the query found",
            "hint": "run the query again (res = res.refresh()), or read with on_change='refresh'",
            "version": index.version})


def _rows(index: DatasetIndex, query: str | None, visible: frozenset[str] | None = None,
          cuts: str | None = None) -> np.ndarray:
    """Rows matching ``query``, among the Hamiltonians the caller may see (all when ``visible`` is None),
    after the result's ``cuts`` (sort, shuffle, slice)."""
    try:
        rows = index.select(query)
        if visible is not None:
            rows = rows[np.isin(index.table.key[rows], np.asarray(sorted(visible), dtype=object))]
        return index.cut(rows, cuts)
    except QueryError as exc:
        raise _error(exc, 400) from None


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await anyio.to_thread.run_sync(partial(fn, *args))


ARROW = "application/vnd.apache.arrow.stream"


def _arrow(table: pa.Table) -> Response:
    return Response(arrow_bytes(table), media_type=ARROW)


@router.get("/datasets")
async def datasets(access: Access = Depends(server_access(READ_METADATA))) -> list[dict[str, Any]]:
    listed = await _in_thread(index_cache(access.policy.catalog).datasets)
    if getattr(access.request.app.state, "access_policy", None) is None:
        return listed
    return [d for d in listed if await access.sees(d["key"])]


def search_page(policy: ServerPolicy, dataset: str, q: str | None, offset: int, limit: int,
                visible: frozenset[str] | None = None, version: int | None = None,
                cuts: str | None = None) -> dict[str, Any]:
    index = _dataset(index_cache(policy.catalog), dataset)
    _same_version(index, version)
    rows = _rows(index, q, visible, cuts)
    page = rows[offset:offset + limit]
    return {"dataset": dataset, "query": q, "count": int(len(rows)), "offset": offset, "limit": limit,
            "version": index.version, "keys": index.table.key[page].tolist()}


@router.get("/search/{dataset}")
async def search(dataset: str, q: str | None = Query(None), offset: int = Query(0, ge=0),
                 limit: int = Query(100, ge=0, le=MAX_PAGE), version: int | None = Query(None),
                 cuts: str | None = Query(None),
                 access: Access = Depends(dataset_access(READ_METADATA))) -> dict[str, Any]:
    """Count and one page of keys of the Hamiltonians matching ``q`` (e.g. ``tenDq > 1 and F2_dd < 3``), with
    the dataset's version; given ``version``, 409 if the dataset changed since. ``cuts`` sorts, shuffles
    and slices the matches (``sort:tenDq;slice:0:100``)."""
    return await _in_thread(search_page, access.policy, dataset, q, offset, limit, await access.visible_keys(),
                            version, cuts)


@router.get("/facets/{dataset}")
async def facets(dataset: str, param: str, q: str | None = Query(None), bins: int = Query(20, ge=1, le=1000),
                 cuts: str | None = Query(None),
                 access: Access = Depends(dataset_access(READ_METADATA))) -> dict[str, Any]:
    """min, max and a histogram of ``param`` over the Hamiltonians matching ``q`` (counts for text)."""
    visible = await access.visible_keys()

    def run() -> dict[str, Any]:
        index = _dataset(index_cache(access.policy.catalog), dataset)
        try:
            return index.facets(_rows(index, q, visible, cuts), param, bins)
        except QueryError as exc:
            raise _error(exc, 400) from None
    return await _in_thread(run)


@router.get("/params/{dataset}")
async def params_route(dataset: str, q: str | None = Query(None), offset: int = Query(0, ge=0),
                       limit: int | None = Query(None, ge=0), version: int | None = Query(None),
                       cuts: str | None = Query(None),
                       access: Access = Depends(dataset_access(READ_METADATA))) -> Response:
    """Every matching Hamiltonian's parameters (or a page of them), as one Arrow table."""
    visible = await access.visible_keys()

    def run() -> Response:
        index = _dataset(index_cache(access.policy.catalog), dataset)
        _same_version(index, version)
        rows = _rows(index, q, visible, cuts)
        return _arrow(index.params_table(rows[offset:] if limit is None else rows[offset:offset + limit]))
    return await _in_thread(run)


@router.get("/locators/{dataset}")
async def locators(dataset: str, q: str | None = Query(None), type: str | None = None,
                   version: int | None = Query(None), cuts: str | None = Query(None),
                   fields: str | None = Query(None),
                   access: Access = Depends(dataset_access(READ_METADATA))) -> Response:
    """Every matching artifact's locator (absolute file, dataset, index, URL form), as one Arrow table.

    A locator whose file lies outside readable storage is never served: the request is refused, naming it.
    With an access policy, artifacts the caller may not see are left out, as Tiled's listings leave them."""
    visible = await access.visible_keys()
    table = await _in_thread(locator_page, access.policy, dataset, q, type, visible, version, cuts, fields)
    if visible is not None and table.num_rows:
        pairs = list(zip(table.column("key").to_pylist(), table.column("type").to_pylist(), strict=True))
        hidden = await access.hidden_artifacts(pairs)
        if hidden:
            table = table.filter(pa.array([p not in hidden for p in pairs]))
    return _arrow(table)


def locator_page(policy: ServerPolicy, dataset: str, q: str | None, type_: str | None,
                 visible: frozenset[str] | None = None, version: int | None = None,
                 cuts: str | None = None, fields: str | None = None) -> pa.Table:
    """The matches' locators; refused, naming it, when one lies outside readable storage."""
    index = _dataset(index_cache(policy.catalog), dataset)
    _same_version(index, version)
    rows = _rows(index, q, visible, cuts)
    try:
        outside = index.outside(rows, type_, policy.rule())
        if outside is not None:
            raise read_error(FileRefused(outside, "lies outside readable storage (its real path leaves it)"))
        return index.locator_table(rows, type_, fields)
    except QueryError as exc:
        raise _error(exc, 400) from None
    except SweepcatError as exc:
        raise read_error(exc) from None


def arrow_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


@dataclass
class ReadPage:
    """A stacked read ready to stream: checked, sized and reserved before its first byte."""

    headers: dict[str, str]
    chunks: Iterator[memoryview]


def _streamed(chunks: Iterator[memoryview], reservation: Reservation, what: str) -> Iterator[memoryview]:
    try:
        yield from chunks
    except Exception:  # noqa: BLE001 - headers are out: the client sees a short body; the log says why
        log.exception("%s: stream aborted", what)
        raise
    finally:
        reservation.release()


@dataclass
class ReadPlan:
    """What a stacked read will return: checked for the query and its size, not yet for its files."""

    dataset: str
    type: str
    offset: int
    total: int  # rows matching the query
    version: int  # of the dataset the rows come from
    keys: list[str]  # of the page, in order
    stack: Any


def plan_read(policy: ServerPolicy, dataset: str, type_: str, q: str | None, offset: int, limit: int | None,
              visible: frozenset[str] | None = None, version: int | None = None,
              cuts: str | None = None) -> ReadPlan:
    cache = index_cache(policy.catalog)
    index = _dataset(cache, dataset)
    _same_version(index, version)
    rows = _rows(index, q, visible, cuts)
    page = rows[offset:] if limit is None else rows[offset:offset + limit]
    try:
        stack = index.stack(page, type_)
    except QueryError as exc:
        raise _error(exc, 400) from None
    except SweepcatError as exc:
        raise read_error(exc) from None
    total = len(stack) * stack.row_bytes
    if total > MAX_READ_BYTES:
        fit = MAX_READ_BYTES // max(1, stack.row_bytes)
        if fit == 0:
            raise HTTPException(status_code=413, detail={
                "message": f"one {type_!r} array is {stack.row_bytes:,} bytes, more than the {MAX_READ_BYTES:,}-byte "
                           "response limit", "page_limit": 0,
                "hint": f"read parts of it with Tiled's slicing: /api/v1/array/full/{dataset}/KEY/{type_}?slice=..."})
        raise HTTPException(status_code=413, detail={
            "message": f"{len(page)} arrays of {stack.row_bytes:,} bytes exceed the {MAX_READ_BYTES:,}-byte response "
                       "limit", "hint": f"page with offset and limit={fit} (the sweepcat client does this)",
            "page_limit": fit})
    return ReadPlan(dataset, type_, offset, len(rows), index.version, index.table.key[page].tolist(), stack)


def start_read(policy: ServerPolicy, plan: ReadPlan) -> ReadPage:
    """Every source checked under the file rule (dtype, shape; compressed chunks within the budget) and the
    bytes reserved, before the first byte; then the body streams in chunks through one buffer."""
    stack = plan.stack
    opener = policy.opener()
    try:
        chunk_bytes = check_stack(stack, opener)
    except (FileRefused, SourceChanged, SourceMissing) as exc:
        raise read_error(exc) from None
    check_chunk(chunk_bytes, f"{plan.dataset}/{plan.type}")
    total = len(stack) * stack.row_bytes
    buffer = max(min(total, STREAM_CHUNK_BYTES), stack.row_bytes)
    what = f"read of {plan.dataset}/{plan.type} rows {plan.offset}..{plan.offset + len(stack)}"
    # two chunks: the one being read and the one the ASGI server still holds (h5read.stream_stacked)
    reservation = BUDGET.reserve(min(2 * buffer, total) + chunk_bytes, what)
    headers = {"x-sweepcat-shape": ",".join(map(str, (len(stack), *stack.shape))),
               "x-sweepcat-dtype": np.dtype(stack.dtype).str, "x-sweepcat-total": str(plan.total),
               "x-sweepcat-offset": str(plan.offset), "x-sweepcat-version": str(plan.version),
               "content-length": str(total)}
    return ReadPage(headers, _streamed(stream_stacked(stack, opener, buffer), reservation, what))


def read_page(policy: ServerPolicy, dataset: str, type_: str, q: str | None, offset: int,
              limit: int | None, version: int | None = None, cuts: str | None = None) -> ReadPage:
    """A stacked read without an access policy (the fast path's case): plan, then start."""
    return start_read(policy, plan_read(policy, dataset, type_, q, offset, limit, None, version, cuts))


@router.get("/read/{dataset}")
async def read(dataset: str, type: str, q: str | None = Query(None), offset: int = Query(0, ge=0),
               limit: int | None = Query(None, ge=0), version: int | None = Query(None),
               cuts: str | None = Query(None),
               access: Access = Depends(dataset_access(READ_DATA))) -> Response:
    """Stacked arrays ``(n, *shape)`` of one artifact type for the matching Hamiltonians (a page of them).

    Rows are grouped by file and read in index order, streamed as they are read. Responses above the
    size limit are refused with the page size to use; every file is checked before the first byte.
    """
    plan = await _in_thread(plan_read, access.policy, dataset, type, q, offset, limit, await access.visible_keys(),
                            version, cuts)
    await access.check_artifacts(plan.keys, type, "read:data")
    page = await _in_thread(start_read, access.policy, plan)
    return StreamingResponse(page.chunks, media_type="application/octet-stream", headers=page.headers)


from .explorer import api as explorer_api  # noqa: E402 - the explorer's routes (issue 11), under /sweepcat/explorer

router.include_router(explorer_api)
