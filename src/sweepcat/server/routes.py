"""sweepcat's HTTP routes inside the Tiled server (mounted under /api/v1/sweepcat).

Registration takes thousands of nodes per request and writes them with the
same code as `sweepcat ingest`, so every catalog invariant holds. Requests
authenticate with Tiled's own API keys and need Tiled's scopes.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from tiled.server.authentication import check_scopes
from tiled.server.dependencies import get_root_tree

from .. import __version__
from ..catalog.ingest import ingest
from ..catalog.schema import CatalogURI, parse_catalog
from ..contract import decode_batch
from ..errors import ContractError, SweepcatError

router = APIRouter(prefix="/sweepcat")

MAX_BATCH_BYTES = int(os.environ.get("SWEEPCAT_MAX_BATCH_BYTES", str(256 * 1024 * 1024)))
MAX_BATCH_ROWS = int(os.environ.get("SWEEPCAT_MAX_BATCH_ROWS", "200000"))
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
            "max_batch_rows": MAX_BATCH_ROWS}


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
