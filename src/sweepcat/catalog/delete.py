"""Removing datasets, Hamiltonians or single artifacts from the catalog (HDF5 files are never touched)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SweepcatError
from .db import connect
from .schema import CatalogURI, ensure_catalog


@dataclass
class DeletePlan:
    path: str
    node_id: int
    nodes: int  # the node and everything below it


def plan_delete(cat: CatalogURI, dataset: str, key: str | None = None, type_: str | None = None) -> DeletePlan:
    ensure_catalog(cat, create=False)
    segments = [s for s in (dataset, key, type_) if s is not None]
    with connect(cat) as db:
        node_id = 0
        for depth, segment in enumerate(segments):
            row = db.fetch("SELECT id FROM nodes WHERE parent = ? AND key = ?", node_id, segment)
            if not row:
                where = "/".join(segments[: depth + 1])
                raise SweepcatError(f"{where}: no such node in {cat.display}",
                                    "check the names with `sweepcat datasets` or a Tiled client")
            node_id = int(row[0][0])
        count = int(db.fetch("SELECT COUNT(*) FROM nodes_closure WHERE ancestor = ?", node_id)[0][0])
    return DeletePlan("/".join(segments), node_id, count)


def execute_delete(cat: CatalogURI, plan: DeletePlan) -> None:
    """One transaction; children, data sources and closure rows go by Tiled's ON DELETE CASCADE."""
    with connect(cat) as db:
        db.begin()
        db.execute("DELETE FROM nodes WHERE id = ?", plan.node_id)
        db.commit()
