"""The Tiled server configuration sweepcat runs (and prints for `tiled serve config`)."""

from __future__ import annotations

import secrets
from typing import Any

import yaml

from .adapter import MIMETYPE

ADAPTER = "sweepcat.server.adapter:SlicedHDF5Adapter"
REFUSED = "sweepcat.server.adapter:RefusedAdapter"


def adapters_by_mimetype() -> dict[str, str]:
    """sweepcat's adapter for its arrays, and a refusal for every reader Tiled brings (they would open
    files past the file rule: see RefusedAdapter)."""
    from tiled.mimetypes import DEFAULT_ADAPTERS_BY_MIMETYPE

    return {**{m: REFUSED for m in DEFAULT_ADAPTERS_BY_MIMETYPE.keys() if m != MIMETYPE}, MIMETYPE: ADAPTER}
ROUTER = "sweepcat.server.routes:router"
API_KEY_ENV = "SWEEPCAT_API_KEY"


def new_api_key() -> str:
    return secrets.token_hex(16)  # Tiled requires an alphanumeric key


RAW_ASSETS = "expose_raw_assets"  # Tiled's setting; sweepcat servers keep it off
# Tiled counts a listing's children exactly only up to this many, and reports a lower bound beyond (on
# SQLite, where it has no statistics, "101" for 100,000 Hamiltonians). Counting walks the parent index,
# ~0.17 s per listing at 10^6 children on SQLite (BENCHMARKS.md): exact up to 10^6, Tiled's bound beyond.
EXACT_COUNT_LIMIT = 1_000_000


def server_config(catalog_uri: str, readable_storage: list[str], *, api_key: str, public: bool = False,
                  host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
    """A complete Tiled config: our adapter mapping, the dataset roots as readable storage, one API key."""
    if not api_key.isalnum():
        raise ValueError("the API key must be alphanumeric (Tiled's rule)")
    return {
        "authentication": {"single_user_api_key": api_key, "allow_anonymous_access": bool(public)},
        "trees": [{
            "path": "/",
            "tree": "catalog",
            "args": {
                "uri": catalog_uri,
                "readable_storage": sorted(set(readable_storage)),
                "init_if_not_exists": False,
                "adapters_by_mimetype": adapters_by_mimetype(),
            },
        }],
        "routers": [ROUTER],
        # Tiled's raw-asset routes open a node's files by their URI alone: no file rule, no byte budget.
        RAW_ASSETS: False,
        "exact_count_limit": EXACT_COUNT_LIMIT,
        "uvicorn": {"host": host, "port": port},
    }


def config_yaml(config: dict[str, Any]) -> str:
    head = ("# Tiled server config written by `sweepcat config`.\n"
            "# Run it as `sweepcat serve` does (fast path included):\n"
            "#   SWEEPCAT_CONFIG=THIS_FILE uvicorn --factory sweepcat.server.app:from_config_env --port PORT\n"
            "# or with Tiled's own command (the same answers; array reads without sweepcat's fast path, ~7x slower):\n"
            "#   tiled serve config THIS_FILE\n"
            "# Tiled's banner then prints a URL with a random api_key that this server refuses: the key is\n"
            "# authentication.single_user_api_key below.\n"
            "# readable_storage = the dataset roots recorded in the catalog.\n")
    return head + yaml.safe_dump(config, sort_keys=False)
