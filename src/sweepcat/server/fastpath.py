"""A fast path in front of Tiled for the requests sweepcat answers most: one array node's bytes and
metadata, a search page, a locator table, a stacked read.

Tiled spends ~20 ms of framework work per array request (dependency solving,
ORM loading of the node, its data sources and assets); for the nodes sweepcat
writes, one SQL query finds everything a read needs. This ASGI middleware
answers ``GET /api/v1/array/full/<path>`` and ``GET /api/v1/metadata/<path>`` for
sweepcat's nodes and ``GET /api/v1/sweepcat/{search,locators,read}/<dataset>`` when,
and only when:

- the boundary (``policy``) says Tiled would grant the request the scopes it
  needs (single-user key or anonymous access, no access policy);
- the request parses exactly as Tiled's route parses it (the URL path decoded
  once, by the ASGI server; the same slice and shape patterns);
- for arrays, the file passes the boundary's file rule.

It answers with the functions Tiled's route and sweepcat's routes use
(``SlicedHDF5Adapter.read``, Tiled's ``construct_resource`` and serializers,
``routes.search_page``, ``routes.locator_page``, ``routes.read_page``), so
bodies, sizes, the byte budget and every error are the same. Anything else goes to
Tiled untouched, which then produces the response.
"""

from __future__ import annotations

import collections
import json
import logging
import re
from typing import Any, Awaitable, Callable, Iterator
from urllib.parse import parse_qsl

import anyio
import numpy as np
from fastapi import HTTPException

from ..catalog.lookup import ArrayRow, NodeLookup, NodeRow
from ..h5open import FileRefused
from .adapter import Refused, SlicedHDF5Adapter
from .policy import ServerPolicy

log = logging.getLogger("sweepcat.server")
ARRAY_PREFIX = "/api/v1/array/full/"
METADATA_PREFIX = "/api/v1/metadata/"
SWEEPCAT_PREFIX = "/api/v1/sweepcat/"
_ARRAY_PARAMS = {"slice", "expected_shape", "api_key"}
_ACCEPTED = {"", "*/*", "application/octet-stream"}
_EXPECTED_SHAPE = re.compile(r"^[0-9]+(,[0-9]+)*$|^scalar$")  # Tiled's pattern for expected_shape
_INT = re.compile(r"^[0-9]+$")

Send = Callable[[dict], Awaitable[None]]
Answer = tuple[int, dict[str, str], Any]  # status, headers, bytes | _Once | an iterator of chunks


def _params(scope: dict) -> dict[str, str] | None:
    """Query parameters, or None when one repeats (Tiled's parsing of repeats is its own business)."""
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    params = dict(pairs)
    return params if len(params) == len(pairs) else None


def _json(content: Any) -> bytes:
    """JSON exactly as FastAPI's JSONResponse writes it (compact), so both paths give the same bytes."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _error(exc: HTTPException) -> Answer:
    headers = {"content-type": "application/json", **(exc.headers or {})}
    return exc.status_code, headers, _json({"detail": exc.detail})


class LocatorFastPath:
    """ASGI middleware; see the module docstring for when it answers and when Tiled does."""

    def __init__(self, app: Any, *, policy: ServerPolicy):
        self.app = app
        self.policy = policy
        self.lookup = NodeLookup(policy.catalog)
        self._counts: dict[tuple[int, int, int], int] = {}

    async def _scopes(self, scope: dict) -> frozenset[str]:
        return await self.policy.fast_path_scopes(scope, getattr(scope["app"].state, "access_policy", None)) \
            or frozenset()

    async def _array(self, scope: dict) -> Answer | None:
        from tiled.server.dependencies import SLICE_REGEX

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if headers.get("accept", "").strip() not in _ACCEPTED:
            return None
        params = _params(scope)
        if params is None or set(params) - _ARRAY_PARAMS:
            return None
        slice_text = params.get("slice", "")
        expected = params.get("expected_shape")
        if not re.match(SLICE_REGEX, slice_text) or (expected is not None and not _EXPECTED_SHAPE.match(expected)):
            return None  # Tiled answers with its own validation error
        if "read:data" not in await self._scopes(scope):
            return None
        segments = [s for s in scope["path"][len(ARRAY_PREFIX):].split("/") if s]
        if not segments:
            return None
        if self.lookup.cat.dialect == "sqlite":  # lookup and read in one trip to a worker thread
            answer = await anyio.to_thread.run_sync(self._serve, self.lookup.lookup_sync(segments), slice_text,
                                                    expected)
        else:
            row = await self.lookup.lookup(segments)
            answer = await anyio.to_thread.run_sync(self._serve, row, slice_text, expected)
        if answer is not None:
            cookie = _key_cookie(scope, params)
            if cookie:
                answer[1]["set-cookie"] = cookie
        return answer

    def _serve(self, row: ArrayRow | None, slice_text: str, expected: str | None) -> Answer | None:
        """One array node's bytes (in a worker thread), or None when Tiled should answer."""
        from tiled.ndslice import NDSlice
        from tiled.structures.array import ArrayStructure

        if row is None:
            return None
        try:
            ndslice = NDSlice.from_numpy_str(slice_text)
        except ValueError:
            return None  # Tiled answers with its own message
        path = row.path
        rule = self.policy.rule()
        try:
            rule.check(path)
        except FileRefused:
            return None  # Tiled answers: with its own refusal, or through the adapter with the same rule
        except FileNotFoundError:
            pass  # the adapter answers "not found", as it does behind Tiled's route
        adapter = SlicedHDF5Adapter(path, row.dataset, row.index, ArrayStructure.from_json(row.structure),
                                    opener=self.policy.opener(rule))
        try:
            array, reservation = adapter.read_reserved(ndslice)
        except Refused:
            return None
        except HTTPException as exc:
            return _error(exc)
        if expected is not None:
            want = () if expected == "scalar" else tuple(int(x) for x in expected.split(","))
            if want != array.shape:
                reservation.release()
                return None  # Tiled produces its own error
        body = memoryview(np.ascontiguousarray(array)).cast("B")
        return 200, {"content-type": "application/octet-stream", "content-length": str(body.nbytes)}, \
            _Once(body, reservation)

    async def _sweepcat(self, scope: dict) -> Answer | None:
        from .routes import ARROW, MAX_PAGE, arrow_bytes, locator_page, read_page, search_page

        kind, _, dataset = scope["path"][len(SWEEPCAT_PREFIX):].partition("/")
        if kind not in ("search", "read", "locators") or not dataset or "/" in dataset:
            return None
        params = _params(scope)
        if params is None:
            return None
        params.pop("api_key", None)
        numbers = {k: params[k] for k in ("offset", "limit", "version") if k in params}
        if any(not _INT.match(v) or len(v) > 12 for v in numbers.values()):
            return None  # the FastAPI route gives its validation error
        offset = int(numbers.get("offset", 0))
        needed = "read:data" if kind == "read" else "read:metadata"
        if needed not in await self._scopes(scope):
            return None
        try:
            version = int(numbers["version"]) if "version" in numbers else None
            if kind == "search" and set(params) <= {"q", "offset", "limit", "version", "cuts"}:
                limit = int(numbers.get("limit", 100))
                if limit > MAX_PAGE:
                    return None
                result = await anyio.to_thread.run_sync(search_page, self.policy, dataset, params.get("q"), offset,
                                                        limit, None, version, params.get("cuts"))
                return 200, {"content-type": "application/json"}, _json(result)
            if kind == "locators" and set(params) <= {"q", "type", "version", "cuts", "fields"}:
                table = await anyio.to_thread.run_sync(locator_page, self.policy, dataset, params.get("q"),
                                                       params.get("type"), None, version, params.get("cuts"),
                                                       params.get("fields"))
                return 200, {"content-type": ARROW}, await anyio.to_thread.run_sync(arrow_bytes, table)
            if kind == "read" and "type" in params and set(params) <= {"q", "offset", "limit", "type", "version",
                                                                        "cuts"}:
                limit = int(numbers["limit"]) if "limit" in numbers else None
                page = await anyio.to_thread.run_sync(read_page, self.policy, dataset, params["type"],
                                                      params.get("q"), offset, limit, version, params.get("cuts"))
                return 200, {"content-type": "application/octet-stream", **page.headers}, page.chunks
        except HTTPException as exc:
            return _error(exc)
        return None

    async def _metadata(self, scope: dict) -> Any:
        """A node's metadata for Tiled's ``GET /api/v1/metadata/<path>``, made by Tiled's own functions
        (``construct_resource``, its back-compat dump, ``json_or_msgpack``: the same body and ETag) from
        one SQL query, not from Tiled's walk of the path (a query per segment through the ORM) and its
        per-request dependency solving. Plain requests only (no query parameters but the key), for
        containers and arrays without access tags; anything else is Tiled's."""
        from starlette.requests import Request
        from tiled.server import schemas
        from tiled.server.core import construct_resource, json_or_msgpack, resolve_media_type
        from tiled.server.router import _model_dump_backcompat
        from tiled.server.utils import get_base_url

        params = _params(scope)
        if params is None or set(params) - {"api_key"}:
            return None
        segments = [s for s in scope["path"][len(METADATA_PREFIX):].split("/") if s]
        if not segments or "read:metadata" not in await self._scopes(scope):
            return None
        app = scope["app"]
        root = getattr(app.state, "root_tree", None)
        if getattr(root, "node", None) is None or getattr(root, "conditions", None) \
                or getattr(root, "access_filters", None) or getattr(root.node, "id", None) != 0:
            return None  # only a catalog served at the root, as `sweepcat serve` and its config do
        limit = _settings(app).exact_count_limit
        if self.lookup.cat.dialect == "sqlite":
            found = await anyio.to_thread.run_sync(self._node_sync, segments, limit)
        else:
            found = await self._node(segments, limit)
        view = _NodeView.of(*found) if found is not None else None
        if view is None or (view.count is not None and view.count > limit):
            return None
        metrics: dict = collections.defaultdict(lambda: collections.defaultdict(lambda: 0))
        scope.setdefault("state", {})["metrics"] = metrics
        request = Request(scope)
        resource = await construct_resource(get_base_url(request), segments, view, list(schemas.EntryFields), None,
                                            False, False, resolve_media_type(request), max_depth=None,
                                            exact_count_limit=limit)
        response = json_or_msgpack(request, _model_dump_backcompat(request, schemas.Response(data=resource,
                                                                                              meta={})))
        cookie = _key_cookie(scope, params)
        if cookie:
            response.headers["set-cookie"] = cookie
        return response

    def _node_sync(self, segments: list[str], limit: int) -> tuple[NodeRow, int | None] | None:
        try:
            row = self.lookup.node_sync(segments)
            if row is None or row.structure_family != "container":
                return None if row is None else (row, None)
            return row, self._counted(row, limit) or self._counted(row, limit, self.lookup.children_sync(row.id,
                                                                                                        limit + 1))
        except Exception:  # noqa: BLE001 - a catalog sweepcat cannot read this way: Tiled answers
            log.debug("metadata fast path: lookup of %s failed", segments, exc_info=True)
            return None

    async def _node(self, segments: list[str], limit: int) -> tuple[NodeRow, int | None] | None:
        try:
            row = await self.lookup.node(segments)
            if row is None or row.structure_family != "container":
                return None if row is None else (row, None)
            return row, self._counted(row, limit) or self._counted(row, limit, await self.lookup.children(row.id,
                                                                                                        limit + 1))
        except Exception:  # noqa: BLE001 - a catalog sweepcat cannot read this way: Tiled answers
            log.debug("metadata fast path: lookup of %s failed", segments, exc_info=True)
            return None

    def _counted(self, row: NodeRow, limit: int, count: int | None = None) -> int | None:
        """A dataset's child count, kept per dataset version (children are added or removed only with a
        new version: the registry's triggers); other containers are counted each time."""
        if row.version is None:
            return count
        key = (row.id, row.version, limit)
        if count is None:
            return self._counts.get(key)
        if len(self._counts) > 1024:
            self._counts.clear()
        self._counts[key] = count
        return count

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Send) -> None:
        answer = None
        if scope["type"] == "http" and scope["method"] == "GET":
            if scope["path"].startswith(ARRAY_PREFIX):
                answer = await self._array(scope)
            elif scope["path"].startswith(SWEEPCAT_PREFIX):
                answer = await self._sweepcat(scope)
            elif scope["path"].startswith(METADATA_PREFIX):
                response = await self._metadata(scope)
                if response is not None:
                    response.headers["x-sweepcat-fast-path"] = "1"
                    await response(scope, receive, send)
                    return
        if answer is None:
            await self.app(scope, receive, send)
            return
        await _send(send, *answer)


def _key_cookie(scope: dict, params: dict[str, str]) -> str | None:
    """The cookie Tiled sets when a request carries its key in the query (and not yet in a cookie)."""
    if "api_key" not in params:
        return None
    cookies = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"cookie"), "")
    if cookies.find(f"tiled_api_key={params['api_key']}") >= 0:
        return None
    return f"tiled_api_key={params['api_key']}; HttpOnly; Path=/; SameSite=lax"


def _settings(app: Any) -> Any:
    """The app's settings as Tiled's routes get them (its config overrides Tiled's defaults, e.g. the exact
    count limit), not Tiled's defaults."""
    from tiled.server.settings import get_settings

    return app.dependency_overrides.get(get_settings, get_settings)()


class _NodeView:
    """What Tiled's ``construct_resource`` reads of a catalog node adapter (family, specs, metadata,
    access tags, structure, sorting, length), from one ``NodeRow``, for the two kinds of node sweepcat
    makes: containers without data sources and arrays with one. Anything else: None (Tiled answers)."""

    sorting = [("", 1)]  # a catalog adapter's default

    def __init__(self, row: NodeRow, count: int | None, structure: Any):
        from tiled.access_control.protocols import normalize_access_tags
        from tiled.structures.core import Spec, StructureFamily

        self.structure_family = StructureFamily(row.structure_family)
        self.specs = [Spec(**spec) for spec in row.specs or []]
        self.access_tags = normalize_access_tags(())
        self._metadata = row.metadata
        self._structure = structure
        self.count = count

    @classmethod
    def of(cls, row: NodeRow, count: int | None) -> "_NodeView | None":
        from tiled.structures.array import ArrayStructure

        if row.tags or not isinstance(row.metadata, dict) or not isinstance(row.specs, list):
            return None
        if row.structure_family == "container" and row.sources == 0:
            return cls(row, count, None)
        if row.structure_family == "array" and row.sources == 1 and row.source_family == "array" \
                and isinstance(row.structure, dict):
            return cls(row, None, ArrayStructure.from_json(row.structure))
        return None

    def metadata(self) -> Any:
        return self._metadata

    def structure(self) -> Any:
        return self._structure

    async def lbound_len(self, threshold: int) -> int:
        return self.count if self.count is not None else 0


class _Once:
    """One array's bytes, sent in one message; its reservation ends once they are sent (or the client left)."""

    def __init__(self, body: memoryview, reservation: Any):
        self.body = body
        self.reservation = reservation


async def _send(send: Send, status: int, headers: dict[str, str], body: Iterator[memoryview] | _Once | bytes) -> None:
    if isinstance(body, (bytes, _Once)):
        data = body if isinstance(body, bytes) else body.body
        headers = {**headers, "content-length": str(len(data) if isinstance(data, bytes) else data.nbytes)}
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    try:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*raw, (b"x-sweepcat-fast-path", b"1")]})
        if isinstance(body, (bytes, _Once)):
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        done = object()
        while True:
            # Each chunk is produced (read from HDF5) in a worker thread, then sent before the next is read.
            chunk = await anyio.to_thread.run_sync(next, body, done)
            if chunk is done:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:  # sent, or the client went away: what was reserved for it is released now
        if isinstance(body, _Once):
            body.reservation.release()
        elif hasattr(body, "close"):
            body.close()


__all__ = ["LocatorFastPath"]
