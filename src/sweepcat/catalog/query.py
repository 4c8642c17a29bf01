"""Reading what sweepcat wrote: datasets, their roots and descriptions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .db import connect
from .schema import CatalogURI, ensure_catalog


@dataclass
class DatasetEntry:
    key: str
    node_id: int
    metadata: dict[str, Any]

    @property
    def root(self) -> str | None:
        return self.metadata.get("sweepcat", {}).get("root")


def list_datasets(cat: CatalogURI) -> list[DatasetEntry]:
    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        rows = db.fetch("SELECT key, id, metadata FROM nodes WHERE parent = 0 ORDER BY id")
    out = []
    for key, node_id, md in rows:
        md = json.loads(md) if isinstance(md, str) else (md or {})
        if isinstance(md, dict) and md.get("sweepcat", {}).get("kind") == "dataset":
            out.append(DatasetEntry(key, int(node_id), md))
    return out


def dataset_roots(cat: CatalogURI) -> list[str]:
    return sorted({d.root for d in list_datasets(cat) if d.root})
