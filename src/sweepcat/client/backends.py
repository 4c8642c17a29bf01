"""Where a client's answers come from: a sweepcat server over HTTP, or a catalog file read directly."""

from __future__ import annotations

import io
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import DatasetChanged, SweepcatError
from ..h5open import Opener, session
from ..h5read import Stack, read_stacked
from .http import raise_for, unreachable


class HttpBackend:
    """A server running `sweepcat serve` (Tiled with sweepcat's routes)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0):
        import httpx

        self.url = url.rstrip("/")
        self.api_key = api_key
        headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self._info: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers get a fresh connection
        return {"url": self.url, "api_key": self.api_key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["api_key"])  # type: ignore[misc]

    @property
    def where(self) -> str:
        return self.url

    def _get(self, path: str, **params: Any) -> Any:
        import httpx

        url = f"{self.url}/api/v1/sweepcat{path}"
        try:
            r = self.http.get(url, params={k: v for k, v in params.items() if v is not None})
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from None
        if r.status_code == 401 and not self.api_key:
            raise SweepcatError(f"{url}: the server requires an API key and none was given (401)",
                                "pass api_key=... (or --api-key KEY / SWEEPCAT_API_KEY): the key the server printed")
        raise_for(r, url)
        return r

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._get("/info").json()
        return self._info

    def datasets(self) -> list[dict[str, Any]]:
        return self._get("/datasets").json()

    def search(self, ds: str, q: str | None, offset: int, limit: int, version: int | None = None,
               cuts: str | None = None) -> dict[str, Any]:
        return self._get(f"/search/{_seg(ds)}", q=q, offset=offset, limit=limit, version=version,
                         cuts=cuts).json()

    def params(self, ds: str, q: str | None, offset: int = 0, limit: int | None = None,
               version: int | None = None, cuts: str | None = None) -> pa.Table:
        return _table(self._get(f"/params/{_seg(ds)}", q=q, offset=offset, limit=limit, version=version,
                                cuts=cuts).content)

    def locators(self, ds: str, q: str | None, type_: str | None, version: int | None = None,
                 cuts: str | None = None, fields: str | None = None) -> pa.Table:
        return _table(self._get(f"/locators/{_seg(ds)}", q=q, type=type_, version=version, cuts=cuts,
                                fields=fields).content)

    def stack(self, ds: str, q: str | None, type_: str, shape: tuple[int, ...], dtype: np.dtype, total: int,
              version: int | None = None, cuts: str | None = None) -> Stack:
        """Where each match's ``type_`` array lives (the locators), for reading it here (Mode A)."""
        return stack_of(self.locators(ds, q, type_, version, cuts, STACK_FIELDS), ds, type_, shape, dtype, total)

    def facets(self, ds: str, q: str | None, param: str, bins: int, cuts: str | None = None) -> dict[str, Any]:
        return self._get(f"/facets/{_seg(ds)}", q=q, param=param, bins=bins, cuts=cuts).json()

    def read(self, ds: str, q: str | None, type_: str, shape: tuple[int, ...], dtype: np.dtype, total: int,
             version: int | None = None, progress: Callable[[int], None] | None = None,
             cuts: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """All matches, in pages that fit the server's response limit, each streamed straight into one
        preallocated array. Every row is written or the read fails: never a row that was not read."""
        from concurrent.futures import ThreadPoolExecutor

        if out is None:
            out = np.empty((total, *shape), dtype=dtype)
        row_bytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        page = max(1, min(self.info().get("max_read_bytes", 1 << 29), 32 << 20) // row_bytes)

        def fetch(offset: int) -> None:
            want = min(page, total - offset)
            self._read_page(ds, q, type_, offset, want, version, out[offset:offset + want], cuts)
            if progress is not None:
                progress(want)

        offsets = list(range(0, total, page))
        if len(offsets) <= 1:
            for offset in offsets:
                fetch(offset)
        else:  # pages in flight at once: the server reads one while the client receives another
            with ThreadPoolExecutor(max_workers=3) as pool:
                list(pool.map(fetch, offsets))
        return out

    def _read_page(self, ds: str, q: str | None, type_: str, offset: int, want: int, version: int | None,
                   into: np.ndarray, cuts: str | None = None) -> None:
        """One page of a stacked read, received straight into ``into`` (``recv_into``: no copies, no
        re-chunking; httpx would pass every 64 KB through its parser and join them again)."""
        import http.client

        what = f"{self.url}/read/{ds} rows {offset}..{offset + want}"
        params = {k: v for k, v in {"q": q, "type": type_, "offset": offset, "limit": want,
                                    "version": version, "cuts": cuts}.items() if v is not None}
        target = f"{self._base_path}/api/v1/sweepcat/read/{_seg(ds)}?{urllib.parse.urlencode(params)}"
        conn = self._raw_connection()
        try:
            conn.request("GET", target, headers=self._raw_headers)
            r = conn.getresponse()
            if r.status >= 400:
                import httpx

                body = r.read()
                raise_for(httpx.Response(r.status, content=body, headers=dict(r.getheaders())), what)
                raise SweepcatError(f"{what}: HTTP {r.status}", "see the server log")
            n = int(r.getheader("x-sweepcat-shape", "-1").split(",")[0])
            if n != want or np.dtype(r.getheader("x-sweepcat-dtype", "V0")) != into.dtype:
                raise DatasetChanged(f"{what}: the server sent {n} rows of {r.getheader('x-sweepcat-dtype')}, "
                                     f"{want} of {into.dtype.str} were expected",
                                     "the dataset changed: run the query again (res = res.refresh())")
            view = memoryview(into.reshape(-1).view(np.uint8))
            pos = 0
            while pos < view.nbytes:
                got = r.readinto(view[pos:])
                if not got:
                    break
                pos += got
            if pos != view.nbytes or r.read(1):
                raise SweepcatError(f"{what}: {pos} of {view.nbytes} bytes arrived",
                                    "see the server log; run the read again")
        except (OSError, http.client.HTTPException) as exc:
            self._drop_raw_connection()
            if isinstance(exc, ConnectionRefusedError):
                raise unreachable(self.url, exc) from None
            raise SweepcatError(f"{what}: the transfer broke off ({exc})",
                                "see the server log (a file may have changed during the read); run it again") \
                from None
        except BaseException:
            self._drop_raw_connection()  # a response not read to its end cannot carry the next request
            raise

    @property
    def _base_path(self) -> str:
        return urllib.parse.urlsplit(self.url).path.rstrip("/")

    @property
    def _raw_headers(self) -> dict[str, str]:
        return {"Authorization": f"Apikey {self.api_key}"} if self.api_key else {}

    def _raw_connection(self) -> Any:
        """This thread's keep-alive connection to the server (http.client), made on first use."""
        import http.client
        import threading

        local = self.__dict__.setdefault("_raw", threading.local())
        conn = getattr(local, "conn", None)
        if conn is None:
            parts = urllib.parse.urlsplit(self.url)
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = local.conn = kind(parts.hostname, parts.port, timeout=self.http.timeout.read)
        return conn

    def _drop_raw_connection(self) -> None:
        local = self.__dict__.get("_raw")
        conn = getattr(local, "conn", None)
        if conn is not None:
            conn.close()
            local.conn = None

    def read_one(self, ds: str, key: str, type_: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        path = "/".join(_seg(s) for s in (ds, key, type_))
        r = self.http.get(f"{self.url}/api/v1/array/full/{path}", headers={"Accept": "application/octet-stream"})
        if r.status_code >= 400:
            raise SweepcatError(f"{ds}/{key}/{type_}: HTTP {r.status_code}: {r.text[:200]}", "see the server log")
        return np.frombuffer(r.content, dtype=dtype).reshape(shape)

    def axis(self, ds: str, name: str, info: dict[str, Any]) -> np.ndarray:
        node = ((info.get("shared_axes") or {}).get(name) or {}).get("node") or f"_axes/{ds}/{name}"
        r = self.http.get(f"{self.url}/api/v1/array/full/" + "/".join(_seg(s) for s in node.split("/")),
                          headers={"Accept": "application/json"}, params={"format": "application/json"})
        if r.status_code >= 400:
            raise SweepcatError(f"{node}: HTTP {r.status_code}", "re-ingest the dataset")
        return np.asarray(r.json())


class LocalBackend:
    """A catalog database read directly (SQLite file or PostgreSQL URI); no server needed."""

    def __init__(self, catalog: str):
        from ..catalog.index import IndexCache
        from ..catalog.schema import ensure_catalog, parse_catalog

        self.catalog = catalog
        cat = parse_catalog(catalog)
        ensure_catalog(cat, create=False)
        self.cache = IndexCache(cat)

    def __getstate__(self) -> dict[str, Any]:
        return {"catalog": self.catalog}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["catalog"])  # type: ignore[misc]

    @property
    def where(self) -> str:
        return self.cache.cat.display

    def _index(self, ds: str) -> Any:
        try:
            return self.cache.get(ds)
        except LookupError:
            raise SweepcatError(f"no dataset {ds!r} in {self.where}", "list them with cat.keys()") from None

    def datasets(self) -> list[dict[str, Any]]:
        return self.cache.datasets()

    def _at(self, ds: str, version: int | None) -> Any:
        """The dataset's index, refused if it is no longer at ``version`` (as the server's 409)."""
        index = self._index(ds)
        if version is not None and version != index.version:
            raise DatasetChanged(f"{self.where}: dataset {ds!r} changed since this result was computed (version "
                                 f"{version}, now {index.version}): its rows may no longer be the ones the query "
                                 "found", "run the query again (res = res.refresh()), or read with on_change='refresh'")
        return index

    def _rows(self, index: Any, q: str | None, cuts: str | None) -> np.ndarray:
        return index.cut(index.select(q), cuts)

    def search(self, ds: str, q: str | None, offset: int, limit: int, version: int | None = None,
               cuts: str | None = None) -> dict[str, Any]:
        index = self._at(ds, version)
        rows = self._rows(index, q, cuts)
        return {"count": int(len(rows)), "version": index.version,
                "keys": index.table.key[rows[offset:offset + limit]].tolist()}

    def params(self, ds: str, q: str | None, offset: int = 0, limit: int | None = None,
               version: int | None = None, cuts: str | None = None) -> pa.Table:
        index = self._at(ds, version)
        rows = self._rows(index, q, cuts)
        return index.params_table(rows[offset:] if limit is None else rows[offset:offset + limit])

    def locators(self, ds: str, q: str | None, type_: str | None, version: int | None = None,
                 cuts: str | None = None, fields: str | None = None) -> pa.Table:
        index = self._at(ds, version)
        return index.locator_table(self._rows(index, q, cuts), type_, fields)

    def stack(self, ds: str, q: str | None, type_: str, shape: tuple[int, ...], dtype: np.dtype, total: int,
              version: int | None = None, cuts: str | None = None) -> Stack:
        index = self._at(ds, version)
        rows = self._rows(index, q, cuts)
        if len(rows) != total:
            raise DatasetChanged(f"{self.where}: {ds!r} now has {len(rows)} matches, {total} were expected",
                                 "run the query again (res = res.refresh())")
        return index.stack(rows, type_)

    def facets(self, ds: str, q: str | None, param: str, bins: int, cuts: str | None = None) -> dict[str, Any]:
        index = self._index(ds)
        return index.facets(self._rows(index, q, cuts), param, bins)

    def read(self, ds: str, q: str | None, type_: str, shape: tuple[int, ...], dtype: np.dtype, total: int,
             version: int | None = None, progress: Callable[[int], None] | None = None,
             cuts: str | None = None, out: np.ndarray | None = None) -> np.ndarray:
        index = self._at(ds, version)
        stack = self.stack(ds, q, type_, shape, dtype, total, version, cuts)
        return read_in_parts(stack, local_opener(index.root), progress, out)

    def read_one(self, ds: str, key: str, type_: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        index = self._index(ds)
        rows = np.flatnonzero(index.table.key == key)
        if not len(rows):
            raise SweepcatError(f"{self.where}: {ds}/{key}: no such Hamiltonian (deleted since?)",
                                "run the query again (res = res.refresh())")
        return index.read(rows, type_, local_opener(index.root))[0]

    def axis(self, ds: str, name: str, info: dict[str, Any]) -> np.ndarray:
        ax = (info.get("shared_axes") or {}).get(name)
        if not ax or not info.get("root"):
            raise SweepcatError(f"{ds}: no shared axis {name!r}", "re-ingest with the axis in the spec")
        with local_opener(info["root"]).dataset(str(Path(info["root"]) / ax["file"]), ax["dataset"]) as axis:
            return axis[()]


def local_opener(root: str | None) -> Opener:
    """Files read on this machine (Mode A, a local catalog), under the file rule; each read opens what it
    needs and closes it, so nothing stays open (or locked) in the user's process.

    The rule's root is the dataset's data root; without one (datasets registered by other tools) the
    client still refuses FIFOs, devices and directories, reading with its own permissions."""
    return session([root or "/"])


STACK_FIELDS = "file,dataset,index"  # what reading the files here needs of the locators
PART_BYTES = 64 << 20  # a read reports progress after each part of this size


def read_in_parts(stack: Stack, opener: Opener, progress: Callable[[int], None] | None = None,
                  out: np.ndarray | None = None) -> np.ndarray:
    """A stacked read here (Mode A, a local catalog) into one array, in parts so progress can be shown."""
    if out is None:
        out = np.empty((len(stack), *stack.shape), dtype=stack.dtype)
    if progress is None:
        return read_stacked(stack, opener, out)
    per = max(1, PART_BYTES // max(1, stack.row_bytes))
    for start in range(0, len(stack), per):
        stop = min(len(stack), start + per)
        read_stacked(stack.rows(start, stop), opener, out[start:stop])
        progress(stop - start)
    return out


def stack_of(loc: pa.Table, ds: str, type_: str, shape: tuple[int, ...], dtype: np.dtype, total: int) -> Stack:
    """A Stack from a locator table (one artifact type), refused unless it holds every match."""
    if loc.num_rows != total:  # the version is pinned: these rows lack the artifact
        raise SweepcatError(f"{ds}: only {loc.num_rows} of the {total} matches have a {type_!r} artifact",
                            f"narrow the query to Hamiltonians that have {type_!r}")
    files = loc.column("file").to_numpy(zero_copy_only=False)
    paths, file_idx = np.unique(files, return_inverse=True)
    index = loc.column("index")
    indices = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return Stack(paths.tolist(), file_idx, loc.column("dataset").to_numpy(zero_copy_only=False), indices,
                 tuple(shape), np.dtype(dtype))


def _seg(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _table(content: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(content)).read_all()


def server_url(url: str, api_key: str | None) -> tuple[str, str | None]:
    """The server's base URL and key from what a user pastes: the banner's ``...?api_key=KEY`` link,
    Tiled's ``/api/v1`` or ``/ui`` addresses, a trailing slash."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    if api_key is None and query.get("api_key"):
        api_key = query["api_key"][0]
    path = parts.path.rstrip("/")
    for tail in ("/api/v1", "/ui"):
        if tail in path:
            path = path[: path.index(tail)]
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")), api_key


def backend_for(target: str, api_key: str | None) -> HttpBackend | LocalBackend:
    if target.startswith(("http://", "https://")):
        url, key = server_url(target, api_key)
        backend = HttpBackend(url, key)
        backend.info()  # the server is asked now: a wrong URL or key is said here, not at the first len()
        return backend
    return LocalBackend(target)
