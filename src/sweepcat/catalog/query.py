"""Reading what sweepcat wrote: datasets, their roots and descriptions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .db import Database, connect
from .schema import CatalogURI, ensure_catalog


@dataclass
class DatasetEntry:
    key: str
    node_id: int
    metadata: dict[str, Any]

    @property
    def root(self) -> str | None:
        return self.metadata.get("sweepcat", {}).get("root")


def datasets_in(db: Database) -> list[DatasetEntry]:
    """The top-level nodes sweepcat wrote as datasets, in listing order."""
    out = []
    for key, node_id, md in db.fetch("SELECT key, id, metadata FROM nodes WHERE parent = 0 ORDER BY id"):
        md = json.loads(md) if isinstance(md, str) else (md or {})
        if isinstance(md, dict) and (md.get("sweepcat") or {}).get("kind") == "dataset":
            out.append(DatasetEntry(key, int(node_id), md))
    return out


def list_datasets(cat: CatalogURI) -> list[DatasetEntry]:
    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        return datasets_in(db)


def dataset_roots(cat: CatalogURI) -> list[str]:
    return sorted({d.root for d in list_datasets(cat) if d.root})
