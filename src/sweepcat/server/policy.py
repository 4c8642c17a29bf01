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


def configured_rule_for(path: str) -> FileRule:
    """Tiled's configured readable storage covering ``path`` (its lexical parents), as a file rule.

    For Tiled's own route, which resolves our adapter without telling it which
    server asks: Tiled registers every configured storage location in its
    storage registry, which this reads through its public ``get_storage``.
    """
    from tiled.storage import FileStorage, get_storage
    from tiled.utils import ensure_uri

    roots = []
    for parent in PurePosixPath(path).parents:
        try:
            storage = get_storage(ensure_uri(str(parent)))
        except KeyError:
            continue
        if isinstance(storage, FileStorage):
            roots.append(str(storage.path))
    return FileRule.under(*roots)


class ServerPolicy:
    """The boundary of one server: its readable storage, its authentication mode."""

    def __init__(self, catalog: CatalogURI, configured_roots: Iterable[str], *, api_key: str | None,
                 allow_anonymous: bool, authenticated: bool = False):
        self.catalog = catalog
        self.configured = tuple(os.path.realpath(r) for r in configured_roots)
        self.api_key = api_key
        self.allow_anonymous = allow_anonymous
        self.authenticated = authenticated
        self._rule = FileRule.under(*self.configured)
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
        self._rule = FileRule.under(*self.configured, *recorded)
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
        keys: list[str] = []
        query = scope.get("query_string", b"").decode("latin-1")
        if "api_key=" in query:
            from urllib.parse import parse_qsl

            keys += [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "api_key"]
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
    from tiled.storage import FileStorage
    from tiled.server.settings import get_settings

    context = app.state.root_tree.context
    roots = [str(s.path) for s in context.readable_storage.values() if isinstance(s, FileStorage)]
    settings = get_settings()
    url = context.engine.url.render_as_string(hide_password=False)
    policy = ServerPolicy(parse_catalog(url), roots, api_key=settings.single_user_api_key,
                          allow_anonymous=bool(settings.allow_anonymous_access),
                          authenticated=bool(getattr(app.state, "authenticated", False)))
    app.state.sweepcat_policy = policy
    return policy


# --------------------------------------------------------------------------- who, for the FastAPI routes


@dataclass
class Access:
    """A request that passed Tiled's authentication, with what Tiled resolved about its caller."""

    policy: ServerPolicy
    request: Request
    principal: Any
    authn_access_tags: Any
    authn_scopes: Any
    session_state: dict

    async def check_dataset(self, dataset: str, scopes: list[str]) -> None:
        """The access policy (if configured) on the dataset node, through Tiled's node-level lookup.

        Raises Tiled's own 404/403 for nodes the caller may not see or use, and 403 when the policy lets
        the caller see only part of the dataset (the bulk routes serve whole datasets only)."""
        access_policy = getattr(self.request.app.state, "access_policy", None)
        if access_policy is None:
            return  # Tiled's check_scopes on the route decided
        from collections import defaultdict

        from tiled.access_control.access_policies import NO_ACCESS
        from tiled.server.dependencies import get_entry
        from tiled.structures.core import StructureFamily

        metrics = getattr(self.request.state, "metrics", None) or defaultdict(lambda: defaultdict(float))
        entry = await get_entry(dataset, scopes, self.principal, self.authn_access_tags, self.authn_scopes,
                                self.request.app.state.root_tree, self.session_state, metrics,
                                {StructureFamily.container}, access_policy)
        filters = await access_policy.filters(entry, self.principal, self.authn_access_tags, self.authn_scopes,
                                              set(scopes))
        if filters is NO_ACCESS or filters:
            raise HTTPException(status_code=403, detail={
                "message": f"this server's access policy lets you see only part of dataset {dataset!r}; "
                           "sweepcat's bulk routes serve whole datasets only",
                "hint": "read single nodes through Tiled's own routes (/api/v1/array/full/...), which apply the "
                        "policy node by node, or ask the operator for access to the whole dataset"})

    async def visible(self, dataset: str, scopes: list[str]) -> bool:
        try:
            await self.check_dataset(dataset, scopes)
        except HTTPException:
            return False
        return True


def _access_dependency(scopes: list[str], per_dataset: bool) -> Any:
    from tiled.server.authentication import (check_scopes, get_current_access_tags, get_current_principal,
                                             get_current_scopes, get_session_state)

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
