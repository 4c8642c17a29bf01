"""The server's one boundary: who may read, which files may be opened, how many bytes may be in flight.

Every path that serves bytes goes through this module, and nothing else decides:
Tiled's ``/api/v1/array/full`` (through ``SlicedHDF5Adapter``), the fast path in
front of it (``fastpath.py``), and the routes under ``/api/v1/sweepcat/``.

Who. Tiled decides. The FastAPI routes depend on Tiled's own authentication
(``check_scopes`` and the principal, scopes and access tags it resolves). With an
access policy configured, a dataset is looked up through Tiled's node-level
lookup (``get_entry``) with the route's scopes, and a caller whom the policy
lets see only part of a dataset is refused: the bulk routes serve whole
datasets, Tiled's own routes serve single nodes under the policy. The fast
path answers a request only when Tiled would grant it the same scopes in
single-user or anonymous mode without an access policy (decided by Tiled's
``get_scopes_from_api_key``); anything else goes to Tiled.

Which files. The file rule of ``h5open`` under readable storage = the
server's configuration (Tiled's readable storage: ``--readable``, the config
file) plus the roots sweepcat recorded in its registry table (written only by
a local ``ingest`` or by ``register`` after its readable-storage check). Never
node metadata, which any writer can edit through Tiled's API. Tiled's storage
registry is only ever read.

How much. An array's byte size is computed from its structure and the slice,
and checked against Tiled's response limit, before any read. Bytes in flight
are bounded server-wide (``ByteBudget``): over it, 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable

import anyio
import numpy as np
from fastapi import Depends, HTTPException, Request, Security

from ..catalog.db import connect
from ..catalog.params import recorded_roots
from ..catalog.schema import CatalogURI, parse_catalog
from ..errors import SweepcatError
from ..h5open import FileCache, FileRule, Opener

log = logging.getLogger("sweepcat.server")

MAX_OPEN_FILES = int(os.environ.get("SWEEPCAT_MAX_OPEN_FILES", "128"))
INFLIGHT_BUDGET = int(os.environ.get("SWEEPCAT_INFLIGHT_BUDGET", str(512 * 1024 * 1024)))
RETRY_AFTER_SECONDS = 1
ROOTS_TTL = 1.0  # seconds between looks at the registry's recorded roots

# One server per process: open files and the in-flight budget are shared by every path.
FILES = FileCache(MAX_OPEN_FILES)


# --------------------------------------------------------------------------- bytes in flight


class ByteBudget:
    """Bytes of array data held by requests at once, server-wide.

    A reservation that would go over the limit is refused (503, Retry-After),
    except when nothing else is in flight: one request larger than the whole
    budget may run alone rather than never.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, what: str | Callable[[], str]) -> "Reservation":
        """Reserve ``nbytes`` for ``what`` (a description, or a function giving one if refused)."""
        with self._lock:
            if self.in_flight and self.in_flight + nbytes > self.limit:
                what = what() if callable(what) else what
                raise HTTPException(status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}, detail={
                    "message": f"{what}: the server is busy ({self.in_flight:,} bytes of array data in flight, "
                               f"budget {self.limit:,}; this request needs {nbytes:,})",
                    "hint": f"retry after {RETRY_AFTER_SECONDS} s, or read smaller pages"})
            self.in_flight += nbytes
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self.in_flight -= nbytes


class Reservation:
    def __init__(self, budget: ByteBudget, nbytes: int):
        self._budget = budget
        self._nbytes = nbytes
        self._done = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._budget._release(self._nbytes)

    def until_freed(self, array: np.ndarray) -> np.ndarray:
        """Keep the reservation while ``array`` lives (Tiled's route serializes it after we return)."""
        weakref.finalize(array, self.release)
        return array

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


BUDGET = ByteBudget(INFLIGHT_BUDGET)


def check_chunk(nbytes: int, what: str) -> None:
    """A read that decompresses chunks of ``nbytes`` each: refused when one chunk exceeds the whole budget
    (a tiny file can hold a chunk that decompresses to gigabytes)."""
    if nbytes > BUDGET.limit:
        raise HTTPException(status_code=413, detail={
            "message": f"{what}: its data lies in compressed chunks of {nbytes:,} bytes each, more than the server "
                       f"decompresses at once ({BUDGET.limit:,} bytes)",
            "hint": "rechunk the file into smaller chunks (e.g. h5repack -l CHUNK=...), or raise "
                    "SWEEPCAT_INFLIGHT_BUDGET on the server"})


def response_limit() -> int:
    """Tiled's response size limit (the server's config sets it on Tiled's settings at start-up)."""
    from tiled.server.settings import get_settings

    return int(get_settings().response_bytesize_limit)


def check_response_size(nbytes: int) -> None:
    """Refuse, before reading, what Tiled would refuse after reading (same status, same message)."""
    limit = response_limit()
    if nbytes > limit:
        raise HTTPException(status_code=400, detail=(f"Response would exceed {limit}. "
                                                     "Use slicing ('?slice=...') to request smaller chunks."))


# --------------------------------------------------------------------------- readable storage


_resolved: dict[str, str] = {}  # a configured root's path -> its real path, resolved once per process
_resolved_lock = threading.Lock()


def resolved(root: str) -> str:
    """A configured root's real path, resolved the first time it is asked for and never again."""
    with _resolved_lock:
        real = _resolved.get(root)
        if real is None:
            real = _resolved[root] = os.path.realpath(root)
        return real


def configured_rule_for(path: str) -> FileRule:
    """Tiled's configured readable storage covering ``path`` (its lexical parents), as a file rule.

    For Tiled's own route, which resolves our adapter without telling it which
    server asks: Tiled registers every configured storage location in its
    storage registry, which this reads through its public ``get_storage``.
    """
    from tiled.storage import FileStorage, get_storage
    from tiled.utils import ensure_uri

    roots = []
    for parent in PurePosixPath("/" + path.lstrip("/")).parents:  # '//x' and '/x' name one file
        try:
            storage = get_storage(ensure_uri(str(parent)))
        except KeyError:
            continue
        if isinstance(storage, FileStorage):
            roots.append(resolved(str(storage.path)))
    return FileRule.of(roots)


class ServerPolicy:
    """The boundary of one server: its readable storage, its authentication mode."""

    def __init__(self, catalog: CatalogURI, configured_roots: Iterable[str], *, api_key: str | None,
                 allow_anonymous: bool, authenticated: bool = False):
        self.catalog = catalog
        self.configured = tuple(resolved(str(r)) for r in configured_roots)
        self.api_key = api_key
        self.allow_anonymous = allow_anonymous
        self.authenticated = authenticated
        self._rule = FileRule.of(self.configured)
        self._rule_checked = 0.0
        self._lock = threading.Lock()

    # ---- which files

    def rule(self) -> FileRule:
        """Configured roots plus the registry's recorded roots (looked up at most once a second).

        Blocking (a catalog query when stale): call it from worker threads; async code uses ``arule``."""
        if time.monotonic() - self._rule_checked >= ROOTS_TTL:
            with self._lock:
                if time.monotonic() - self._rule_checked >= ROOTS_TTL:
                    self._refresh()
        return self._rule

    async def arule(self) -> FileRule:
        """``rule()`` for the event loop: a stale rule is refreshed in a worker thread."""
        if time.monotonic() - self._rule_checked >= ROOTS_TTL:
            return await anyio.to_thread.run_sync(self.rule)
        return self._rule

    def _refresh(self) -> None:
        try:
            with connect(self.catalog) as db:
                recorded = recorded_roots(db)
        except (OSError, SweepcatError, sqlite3.Error) as exc:  # keep the last known rule, and say so
            log.warning("readable storage: cannot read recorded roots from %s (%s); keeping %s",
                        self.catalog.display, exc, ", ".join(self._rule.roots))
            self._rule_checked = time.monotonic()
            return
        self._rule = FileRule.of([*self.configured, *recorded])  # recorded roots were resolved when recorded
        self._rule_checked = time.monotonic()

    def opener(self, rule: FileRule | None = None) -> Opener:
        return FILES.opener(rule or self.rule())

    # ---- who (the fast path only; FastAPI routes use Tiled's dependencies)

    async def fast_path_scopes(self, scope: dict, access_policy: Any) -> frozenset[str] | None:
        """The scopes Tiled would grant this request, when the fast path may answer it; else None.

        Only single-user or anonymous mode without an access policy. Every API
        key presented (query, header, cookie) must be the server's key, which
        is stricter than Tiled (it reads the first one present)."""
        from tiled.access_control.scopes import PUBLIC_SCOPES
        from tiled.server.authentication import get_scopes_from_api_key
        from tiled.server.settings import get_settings

        if access_policy is not None or self.authenticated:
            return None
        from urllib.parse import parse_qsl

        # Names decoded as Starlette decodes them: `api%5Fkey` is `api_key`.
        query = scope.get("query_string", b"").decode("latin-1")
        keys = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "api_key"]
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                auth = value.decode("latin-1")
                scheme, _, param = auth.partition(" ")
                if scheme.lower() != "apikey":
                    return None  # bearer tokens and malformed headers: Tiled's business
                keys.append(param)
            elif name == b"cookie":
                cookie = SimpleCookie(value.decode("latin-1")).get("tiled_api_key")
                if cookie is not None:
                    keys.append(cookie.value)
        if not keys:
            return frozenset(PUBLIC_SCOPES) if self.allow_anonymous else None
        settings = get_settings()
        if self.api_key is None or settings.single_user_api_key != self.api_key:
            return None
        granted: frozenset[str] | None = None
        for key in keys:
            scopes = frozenset(await get_scopes_from_api_key(key, settings, False, None))
            if not scopes or not secrets.compare_digest(key, self.api_key):
                return None
            granted = scopes
        return granted


def for_app(app: Any) -> ServerPolicy:
    """The app's policy: installed by `sweepcat serve`, or built from Tiled's own configuration
    (the routes mounted in a plain `tiled serve config`)."""
    policy = getattr(app.state, "sweepcat_policy", None)
    if policy is not None:
        return policy
    from tiled.server.settings import get_settings
    from tiled.storage import FileStorage

    settings = get_settings()
    if settings.expose_raw_assets:
        raise HTTPException(status_code=503, detail={
            "message": "this Tiled server lets clients download raw assets (expose_raw_assets), which serves "
                       "files without sweepcat's file rule or byte budget; sweepcat's routes stay off until it is off",
            "hint": "add `expose_raw_assets: false` to the server config (`sweepcat config` writes it)"})
    context = app.state.root_tree.context
    roots = [str(s.path) for s in context.readable_storage.values() if isinstance(s, FileStorage)]  # resolved once
    url = context.engine.url.render_as_string(hide_password=False)
    policy = ServerPolicy(parse_catalog(url), roots, api_key=settings.single_user_api_key,
                          allow_anonymous=bool(settings.allow_anonymous_access),
                          authenticated=bool(getattr(app.state, "authenticated", False)))
    app.state.sweepcat_policy = policy
    return policy


# --------------------------------------------------------------------------- who, for the FastAPI routes


@dataclass
class Access:
    """A request that passed Tiled's authentication, with what Tiled resolved about its caller.

    With an access policy configured, the caller sees a dataset as the policy shows it: the
    Hamiltonians Tiled lists for them (``visible_keys``), and only artifacts Tiled's own node lookup
    lets them see or read (``check_artifacts``), as Tiled's routes apply the policy node by node."""

    policy: ServerPolicy
    request: Request
    principal: Any
    authn_access_tags: Any
    authn_scopes: Any
    session_state: dict
    dataset: str | None = None
    entry: Any = None  # the dataset's Tiled adapter, filtered for the caller (with an access policy only)

    @property
    def access_policy(self) -> Any:
        return getattr(self.request.app.state, "access_policy", None)

    def _metrics(self) -> Any:
        from collections import defaultdict

        return getattr(self.request.state, "metrics", None) or defaultdict(lambda: defaultdict(float))

    async def check_dataset(self, dataset: str, scopes: list[str]) -> None:
        """The dataset node through Tiled's node-level lookup: Tiled's own 404/403 when the policy hides it
        or denies ``scopes`` on it."""
        if self.access_policy is None:
            return  # Tiled's check_scopes on the route decided
        from tiled.server.dependencies import get_entry
        from tiled.structures.core import StructureFamily

        self.dataset = dataset
        self.entry = await get_entry(dataset, scopes, self.principal, self.authn_access_tags, self.authn_scopes,
                                     self.request.app.state.root_tree, self.session_state, self._metrics(),
                                     {StructureFamily.container}, self.access_policy)

    async def visible_keys(self) -> frozenset[str] | None:
        """The dataset's Hamiltonians the caller may see (Tiled's filtered listing); None: no policy, all."""
        if self.entry is None:
            return None
        return frozenset(await self.entry.keys_range(0, None))

    async def check_artifacts(self, keys: list[str], type_: str, scope: str) -> None:
        """Each ``<key>/<type_>`` must exist for the caller (else 404) and allow ``scope`` (else 403), decided
        by the policy on that node, as Tiled decides it for its own routes."""
        if self.entry is None:
            return
        from tiled.server.core import NoEntry
        from tiled.server.utils import filter_for_access
        from tiled.utils import BrokenLink

        for key in keys:
            path = f"{self.dataset}/{key}/{type_}"
            try:
                ham = await self.entry.lookup_adapter([key])
                ham = await filter_for_access(ham, self.access_policy, self.principal, self.authn_access_tags,
                                              self.authn_scopes, ["read:metadata"], self._metrics())
                node = await ham.lookup_adapter([type_])
            except (NoEntry, BrokenLink):
                raise HTTPException(status_code=404, detail={
                    "message": f"{path}: no such node for you (the server's access policy)",
                    "hint": f"narrow the query to Hamiltonians whose {type_!r} you may see"}) from None
            allowed = await self.access_policy.allowed_scopes(node, self.principal, self.authn_access_tags,
                                                             self.authn_scopes)
            if scope not in allowed:
                raise HTTPException(status_code=403, detail={
                    "message": f"{path}: the server's access policy does not give you {scope!r} on it",
                    "hint": "ask the operator for access, or narrow the query to what you may read"})

    async def sees(self, dataset: str) -> bool:
        """Whether the access policy (if any) lets the caller see the dataset node at all."""
        if self.access_policy is None:
            return True
        other = Access(self.policy, self.request, self.principal, self.authn_access_tags, self.authn_scopes,
                       self.session_state)
        try:
            await other.check_dataset(dataset, ["read:metadata"])
        except HTTPException:
            return False
        return True

    async def hidden_artifacts(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Of (key, type) pairs, those the caller may not see (for listings, which leave them out)."""
        hidden: set[tuple[str, str]] = set()
        if self.entry is None:
            return hidden
        for key, type_ in pairs:
            try:
                await self.check_artifacts([key], type_, "read:metadata")
            except HTTPException:
                hidden.add((key, type_))
        return hidden


def _access_dependency(scopes: list[str], per_dataset: bool) -> Any:
    from tiled.server.authentication import (
        check_scopes,
        get_current_access_tags,
        get_current_principal,
        get_current_scopes,
        get_session_state,
    )

    async def resolve(request: Request, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                      session_state: dict) -> Access:
        return Access(for_app(request.app), request, principal, authn_access_tags, authn_scopes, session_state)

    if per_dataset:
        async def dataset_dependency(request: Request, dataset: str, principal: Any = Depends(get_current_principal),
                                     authn_access_tags: Any = Depends(get_current_access_tags),
                                     authn_scopes: Any = Depends(get_current_scopes),
                                     session_state: dict = Depends(get_session_state),
                                     _: Any = Security(check_scopes, scopes=scopes)) -> Access:
            access = await resolve(request, principal, authn_access_tags, authn_scopes, session_state)
            await access.check_dataset(dataset, scopes)
            return access

        return dataset_dependency

    async def server_dependency(request: Request, principal: Any = Depends(get_current_principal),
                                authn_access_tags: Any = Depends(get_current_access_tags),
                                authn_scopes: Any = Depends(get_current_scopes),
                                session_state: dict = Depends(get_session_state),
                                _: Any = Security(check_scopes, scopes=scopes)) -> Access:
        return await resolve(request, principal, authn_access_tags, authn_scopes, session_state)

    return server_dependency


def dataset_access(scopes: list[str]) -> Any:
    """A FastAPI dependency for routes with a ``{dataset}`` path parameter: Tiled's authentication with
    ``scopes``, then the access policy on the dataset node (if one is configured)."""
    return _access_dependency(scopes, per_dataset=True)


def server_access(scopes: list[str]) -> Any:
    """A FastAPI dependency for routes about the whole server: Tiled's authentication with ``scopes``."""
    return _access_dependency(scopes, per_dataset=False)


__all__ = ["BUDGET", "FILES", "ByteBudget", "ServerPolicy", "Access", "for_app", "dataset_access", "server_access",
           "check_response_size", "configured_rule_for"]
