"""Building the Tiled app sweepcat serves: Tiled's own app, the server's boundary, and the fast path."""

from __future__ import annotations

from typing import Any, Callable

from ..catalog.schema import parse_catalog
from ..errors import SweepcatError
from .config import RAW_ASSETS, adapters_by_mimetype
from .policy import ServerPolicy


class _SettledOverrides(dict):
    """Tiled's only dependency override (its settings), once settled, returns the very object the
    original dependency returns; FastAPI, seeing any override, re-inspects every dependency signature
    on every request (~9 ms here). While the dict holds exactly that override it reports "no
    overrides", which changes no result. Any other override, added at any time, makes it truthy
    again, so FastAPI applies it (a test guards this)."""

    def __init__(self, overrides: dict, settled: tuple[Callable, Callable]):
        super().__init__(overrides)
        self._settled = settled  # (the overridden dependency, Tiled's override of it)

    def __bool__(self) -> bool:
        if len(self) != 1:
            return len(self) > 0
        dependency, override = self._settled
        return self.get(dependency) is not override


def _close_on_shutdown(app: Any) -> None:
    """After Tiled's own shutdown: close sweepcat's database connections and cached files."""
    from contextlib import asynccontextmanager

    from .policy import FILES
    from .routes import close_index_caches

    tiled_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> Any:
        async with tiled_lifespan(a) as state:
            try:
                yield state
            finally:
                close_index_caches()
                FILES.clear()
    app.router.lifespan_context = lifespan


M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters


def return_freed_memory() -> None:
    """Let the server's process give freed memory back (glibc only; elsewhere nothing changes).

    A fixed mmap threshold of 1 MiB: the buffers of stacked reads (MBs each) are mapped and unmapped,
    not kept in the heap by glibc's sliding threshold; two malloc arenas, not one per worker thread,
    each holding its own freed pages. Measured: RSS after 10,000-map reads 579 -> 540 MB (BENCHMARKS.md)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc
        pass


def build_app(config: dict[str, Any], *, fast_path: bool = True) -> Any:
    from tiled.server.app import build_app_from_config
    from tiled.server.settings import get_settings

    from .fastpath import LocatorFastPath

    if config.get(RAW_ASSETS):
        raise SweepcatError(f"the server config sets {RAW_ASSETS}: true, which lets any reader download the files "
                            "behind a node (its URI alone decides), past sweepcat's file rule and byte budget",
                            f"remove {RAW_ASSETS} from the config (sweepcat servers keep it off)")
    trees = [{**tree, "args": {**tree.get("args", {}), "adapters_by_mimetype": adapters_by_mimetype()}}
             if tree.get("tree") == "catalog" else tree for tree in config.get("trees", [])]
    app = build_app_from_config({**config, RAW_ASSETS: False, "trees": trees})  # Tiled's readers: refused
    overrides = app.dependency_overrides
    if set(overrides) == {get_settings} and overrides[get_settings]() is get_settings():
        app.dependency_overrides = _SettledOverrides(overrides, (get_settings, overrides[get_settings]))
    auth = config.get("authentication", {})
    tree_args = config["trees"][0]["args"]
    policy = ServerPolicy(parse_catalog(tree_args["uri"]), list(tree_args.get("readable_storage", [])),
                          api_key=auth.get("single_user_api_key"),
                          allow_anonymous=bool(auth.get("allow_anonymous_access")),
                          authenticated=bool(getattr(app.state, "authenticated", False)))
    app.state.sweepcat_policy = policy
    from .explorer import mount as mount_explorer  # the explorer page at /sweepcat/ (issue 11)

    mount_explorer(app)
    _close_on_shutdown(app)
    return_freed_memory()
    if fast_path:
        app.add_middleware(LocatorFastPath, policy=policy)
    return app


def bind(host: str, port: int) -> Any:
    """A listening socket on (host, port), or a sentence saying why not (the port in use, a bad address)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = ("stop the other server, or pick another --port" if exc.errno == 98 else
                "pass an address of this machine (--host 127.0.0.1 for this machine only)")
        raise SweepcatError(f"cannot listen on {host}:{port}: {exc.strerror}", hint) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


CONFIG_ENV = "SWEEPCAT_CONFIG"


def from_config_env() -> Any:
    """An app factory for uvicorn, serving the config file named by $SWEEPCAT_CONFIG (as `sweepcat config`
    writes it) exactly as `sweepcat serve` does, fast path included:

        SWEEPCAT_CONFIG=tiled.yml uvicorn --factory sweepcat.server.app:from_config_env --port 8000

    (`tiled serve config tiled.yml` serves the same catalog without the fast path.)"""
    import os
    from pathlib import Path

    import yaml

    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise SweepcatError(f"${CONFIG_ENV} is not set", f"set it to the file `sweepcat config` wrote: "
                            f"{CONFIG_ENV}=tiled.yml uvicorn --factory sweepcat.server.app:from_config_env")
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepcatError(f"{CONFIG_ENV}={path}: cannot read the config ({exc})",
                            "write it with `sweepcat config --catalog ... > tiled.yml`") from None
    return build_app(config)
