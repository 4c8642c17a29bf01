"""Removing datasets, Hamiltonians or single artifacts from the catalog (HDF5 files are never touched)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SweepcatError
from .db import Database, connect
from .schema import CatalogURI, ensure_catalog

AXES_KEY = "_axes"


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
    from .params import table_name

    with connect(cat) as db:
        db.begin()
        is_dataset = db.fetch("SELECT parent FROM nodes WHERE id = ?", plan.node_id)[0][0] == 0
        db.execute("DELETE FROM nodes WHERE id = ?", plan.node_id)
        if is_dataset:  # its registry row went by cascade; its parameter table goes with it
            db.execute(f"DROP TABLE IF EXISTS {table_name(plan.node_id)}")
        db.commit()


def delete_node_ids(db: Database, ids: list[int]) -> None:
    """Delete nodes (and, by cascade, everything below them) inside the caller's transaction."""
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        db.execute(f"DELETE FROM nodes WHERE id IN ({','.join('?' * len(part))})", *part)


def prune_dataset(cat: CatalogURI, dataset: str, keep: set[str]) -> int:
    """Remove the Hamiltonians of ``dataset`` whose keys are not in ``keep``; returns how many."""
    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        db.begin()
        row = db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", dataset)
        if not row:
            raise SweepcatError(f"{dataset}: no such dataset in {cat.display}", "check the dataset key")
        children = db.fetch("SELECT key, id FROM nodes WHERE parent = ?", int(row[0][0]))
        stale = [int(i) for k, i in children if k != AXES_KEY and k not in keep]
        delete_node_ids(db, stale)
        db.commit()
    return len(stale)
