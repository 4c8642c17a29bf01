"""A fast path for reading locator arrays, in front of Tiled's `/array/full` route.

Tiled spends ~20 ms of framework work per array request (dependency solving,
ORM loading of the node, its data sources and assets). For the nodes sweepcat
writes, one SQL query finds everything a read needs. This ASGI middleware
serves `GET /api/v1/array/full/<path>` for such nodes when, and only when,
Tiled would serve them the same way: single-user API key (or anonymous access
where allowed), no access policy, raw `application/octet-stream` bytes, a file
inside readable storage. Anything else goes to Tiled untouched, which also
produces every error response for those cases.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, unquote

import anyio
import numpy as np
from fastapi import HTTPException

from .adapter import MIMETYPE, SlicedHDF5Adapter

PREFIX = "/api/v1/array/full/"
SWEEPCAT_PREFIX = "/api/v1/sweepcat/"
_ALLOWED_PARAMS = {"slice", "expected_shape", "api_key"}
_ACCEPTED = {"", "*/*", "application/octet-stream"}


@dataclass(frozen=True)
class ArrayRow:
    path: str  # absolute file path
    dataset: str
    index: int | None
    structure: dict[str, Any]


def _lookup_sql(depth: int, placeholder: Callable[[int], str]) -> str:
    joins = " ".join(f"JOIN nodes n{i} ON n{i}.parent = n{i - 1}.id AND n{i}.key = {placeholder(i)}"
                     for i in range(2, depth + 1))
    return (f"SELECT ds.mimetype, ds.parameters, st.structure, a.data_uri FROM nodes n1 {joins} "
            f"JOIN data_sources ds ON ds.node_id = n{depth}.id "
            "JOIN structures st ON st.id = ds.structure_id "
            "JOIN data_source_asset_association x ON x.data_source_id = ds.id AND x.parameter = 'data_uri' "
            f"JOIN assets a ON a.id = x.asset_id WHERE n1.parent = 0 AND n1.key = {placeholder(1)} LIMIT 2")


class CatalogReader:
    """Resolves node paths to locators with one query (sqlite3 per thread, or an asyncpg pool)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.sqlite = not uri.startswith("postgresql")
        self._local = threading.local()
        self._pool: Any = None

    def _sqlite_con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            path = self.uri[len("sqlite:///"):]
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self._local.con = con
        return con

    def lookup_sync(self, segments: list[str]) -> list[tuple]:
        sql = _lookup_sql(len(segments), lambda i: f"?{i}")
        return self._sqlite_con().execute(sql, segments).fetchall()

    ROOTS_SQL = ("SELECT n.metadata FROM sweepcat_datasets r JOIN nodes n ON n.id = r.dataset_id "
                 "WHERE n.parent = 0")

    def roots_sync(self) -> list[str]:
        try:
            rows = self._sqlite_con().execute(self.ROOTS_SQL).fetchall()
        except sqlite3.OperationalError:  # no sweepcat dataset yet
            return []
        return _roots(rows)

    async def dataset_roots(self) -> list[str]:
        """Roots of datasets written by sweepcat (ingest, or register, which checks readable storage)."""
        if self.sqlite:
            return await anyio.to_thread.run_sync(self.roots_sync)
        await self._ensure_pool()
        async with self._pool.acquire() as con:
            if not await con.fetchval("SELECT to_regclass('public.sweepcat_datasets') IS NOT NULL"):
                return []
            return _roots([tuple(r) for r in await con.fetch(self.ROOTS_SQL)])

    async def _ensure_pool(self) -> None:
        if self._pool is None:
            import asyncpg

            self._pool = await asyncpg.create_pool(self.uri, min_size=1, max_size=4)

    async def lookup(self, segments: list[str]) -> list[tuple]:
        if self.sqlite:
            return await anyio.to_thread.run_sync(self.lookup_sync, segments)
        await self._ensure_pool()
        sql = _lookup_sql(len(segments), lambda i: f"${i}")
        async with self._pool.acquire() as con:
            return [tuple(r) for r in await con.fetch(sql, *segments)]


def _roots(rows: list[tuple]) -> list[str]:
    out = []
    for (md,) in rows:
        md = json.loads(md) if isinstance(md, str) else (md or {})
        root = (md.get("sweepcat") or {}).get("root") if isinstance(md, dict) else None
        if root:
            out.append(os.path.realpath(root))
    return out


def _row(raw: tuple) -> ArrayRow | None:
    mimetype, parameters, structure, data_uri = raw
    if mimetype != MIMETYPE or not str(data_uri).startswith("file://"):
        return None
    params = json.loads(parameters) if isinstance(parameters, str) else dict(parameters or {})
    structure = json.loads(structure) if isinstance(structure, str) else structure
    from tiled.utils import path_from_uri

    index = params.get("index")
    return ArrayRow(str(path_from_uri(data_uri)), params.get("dataset", "/"), None if index is None else int(index),
                    structure)


def _inside(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def read_row(row: ArrayRow, slice_text: str) -> np.ndarray:
    from tiled.ndslice import NDSlice
    from tiled.structures.array import ArrayStructure

    structure = ArrayStructure.from_json(row.structure)
    adapter = SlicedHDF5Adapter(row.path, row.dataset, row.index, structure)
    array = adapter.read(NDSlice.from_numpy_str(slice_text) if slice_text else NDSlice())
    return np.ascontiguousarray(np.asarray(array, dtype=structure.data_type.to_numpy_dtype()))


class LocatorFastPath:
    """ASGI middleware; see the module docstring for when it answers and when Tiled does."""

    def __init__(self, app: Any, *, catalog_uri: str, api_key: str | None, allow_anonymous: bool,
                 readable_storage: list[str], bytesize_limit: int):
        self.app = app
        self.reader = CatalogReader(catalog_uri)
        self.api_key = api_key
        self.allow_anonymous = allow_anonymous
        self.roots = [os.path.realpath(r) for r in readable_storage]
        self.bytesize_limit = bytesize_limit
        self._roots_checked = 0.0

    def _authorized(self, scope: dict, params: dict[str, str]) -> bool:
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        keys = []
        auth = headers.get("authorization", "")
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "apikey":
                return False  # bearer tokens and the like: Tiled's business
            keys.append(value.strip())
        if "api_key" in params:
            keys.append(params["api_key"])
        if "cookie" in headers:
            cookie = SimpleCookie(headers["cookie"]).get("tiled_api_key")
            if cookie is not None:
                keys.append(cookie.value)
        if not keys:
            return self.allow_anonymous
        return self.api_key is not None and all(secrets.compare_digest(k, self.api_key) for k in keys)

    async def _try(self, scope: dict) -> tuple[int, bytes, str] | None:
        if getattr(scope["app"].state, "access_policy", None) is not None:
            return None
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        if headers.get("accept", "").strip() not in _ACCEPTED:
            return None
        params = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
        if set(params) - _ALLOWED_PARAMS or not self._authorized(scope, params):
            return None
        segments = [unquote(s) for s in scope["path"][len(PREFIX):].split("/") if s]
        if not segments:
            return None
        rows = await self.reader.lookup(segments)
        if len(rows) != 1 or (row := _row(rows[0])) is None or not _inside(row.path, self.roots):
            return None
        try:
            array = await anyio.to_thread.run_sync(read_row, row, params.get("slice", ""))
        except HTTPException as exc:
            return exc.status_code, json.dumps({"detail": exc.detail}).encode(), "application/json"
        except ValueError:
            return None  # a slice Tiled should judge
        expected = params.get("expected_shape")
        if expected is not None:
            want = () if expected == "scalar" else tuple(int(x) for x in expected.split(",") if x)
            if want != array.shape:
                return None  # let Tiled produce its own error
        if array.nbytes > self.bytesize_limit:
            return None
        return 200, array.tobytes(), "application/octet-stream"

    async def _refresh_roots(self, scope: dict) -> None:
        """Datasets ingested after start-up become readable: their roots join Tiled's readable storage.

        Checked at most once a second, on array requests only."""
        now = time.monotonic()
        if now - self._roots_checked < 1.0:
            return
        self._roots_checked = now
        new = [r for r in await self.reader.dataset_roots() if r not in self.roots]
        if not new:
            return
        from tiled.storage import parse_storage, register_storage

        context = scope["app"].state.root_tree.context
        for root in new:
            storage = parse_storage(root)
            register_storage(storage)
            context.readable_storage[storage.uri] = storage
            self.roots.append(root)

    async def _try_sweepcat(self, scope: dict) -> tuple[int, bytes, str, dict[str, str]] | None:
        """search and read routes, same functions as the FastAPI routes, minus Tiled's middleware stack
        (which copies large bodies through several in-memory streams)."""
        from .routes import index_cache, read_page, search_page

        if getattr(scope["app"].state, "access_policy", None) is not None:
            return None
        params = dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True))
        if not self._authorized(scope, params):
            return None
        params.pop("api_key", None)
        kind, _, dataset = scope["path"][len(SWEEPCAT_PREFIX):].partition("/")
        dataset = unquote(dataset)
        if not dataset or "/" in dataset:
            return None
        try:
            cache = index_cache(scope["app"].state.root_tree)
            q = params.get("q")
            offset = int(params.get("offset", 0))
            if kind == "search" and set(params) <= {"q", "offset", "limit"}:
                limit = int(params.get("limit", 100))
                if offset < 0 or not 0 <= limit <= 10_000:
                    return None
                result = await anyio.to_thread.run_sync(search_page, cache, dataset, q, offset, limit)
                return 200, json.dumps(result).encode(), "application/json", {}
            if kind == "read" and "type" in params and set(params) <= {"q", "offset", "limit", "type"}:
                limit = int(params["limit"]) if "limit" in params else None
                if offset < 0 or (limit is not None and limit < 0):
                    return None
                body, headers = await anyio.to_thread.run_sync(read_page, cache, dataset, params["type"], q,
                                                               offset, limit)
                return 200, body, "application/octet-stream", headers
        except (HTTPException, ValueError):
            return None  # the FastAPI route gives the proper error response
        return None

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/v1/array/"):
            await self._refresh_roots(scope)
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(SWEEPCAT_PREFIX):
            answer = await self._try_sweepcat(scope)
            if answer is not None:
                await self._send(send, *answer)
                return
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        answer = await self._try(scope)
        if answer is None:
            await self.app(scope, receive, send)
            return
        await self._send(send, *answer, {})

    @staticmethod
    async def _send(send: Callable[[dict], Awaitable[None]], status: int, body: bytes, content_type: str,
                    extra: dict[str, str]) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                   (b"x-sweepcat-fast-path", b"1")]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


__all__ = ["LocatorFastPath", "CatalogReader", "read_row"]
