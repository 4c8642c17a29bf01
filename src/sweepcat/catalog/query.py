"""Reading what sweepcat wrote: its datasets (those in its registry), their recorded roots and descriptions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import params
from .db import Database, connect
from .schema import CatalogURI, ensure_catalog


@dataclass
class DatasetEntry:
    key: str
    node_id: int
    metadata: dict[str, Any]
    root: str | None  # recorded by ingest or register; node metadata is never trusted for it


def datasets_in(db: Database) -> list[DatasetEntry]:
    """The datasets sweepcat ingested or registered (its registry, not node metadata), in listing order.

    A container that merely claims to be a dataset in its metadata (anyone with write access can
    write that through Tiled's API) is not one."""
    if not params.registry_exists(db):
        return []
    root = "r.root" if params.has_root_column(db) else "NULL"
    out = []
    for key, node_id, md, recorded in db.fetch(
            f"SELECT n.key, n.id, n.metadata, {root} FROM {params.REGISTRY} r JOIN nodes n ON n.id = r.dataset_id "
            "WHERE n.parent = 0 ORDER BY n.id"):
        md = json.loads(md) if isinstance(md, str) else (md or {})
        out.append(DatasetEntry(key, int(node_id), md if isinstance(md, dict) else {}, recorded))
    return out


def list_datasets(cat: CatalogURI) -> list[DatasetEntry]:
    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        return datasets_in(db)


def dataset_roots(cat: CatalogURI) -> list[str]:
    """The data roots sweepcat recorded when it ingested or registered datasets (not node metadata,
    which any writer can edit through Tiled's API)."""
    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        return params.recorded_roots(db)
