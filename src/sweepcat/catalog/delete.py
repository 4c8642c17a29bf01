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
        delete_node_ids(db, [plan.node_id])
        if is_dataset:  # its registry row went by cascade; its parameter table goes with it
            db.execute(f"DROP TABLE IF EXISTS {table_name(plan.node_id)}")
        db.commit()


def delete_node_ids(db: Database, ids: list[int]) -> None:
    """Delete nodes (and, by cascade, everything below them) inside the caller's transaction.

    Like Tiled's own delete, assets no data source uses any more go too."""
    assets: set[int] = set()
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        assets.update(int(a) for (a,) in db.fetch(
            "SELECT DISTINCT x.asset_id FROM nodes_closure c JOIN data_sources d ON d.node_id = c.descendant "
            f"JOIN data_source_asset_association x ON x.data_source_id = d.id WHERE c.ancestor IN ({marks})", *part))
        db.execute(f"DELETE FROM nodes WHERE id IN ({marks})", *part)
    orphans = sorted(assets)
    for start in range(0, len(orphans), 500):
        part = orphans[start:start + 500]
        db.execute(f"DELETE FROM assets WHERE id IN ({','.join('?' * len(part))}) AND id NOT IN "
                   "(SELECT asset_id FROM data_source_asset_association)", *part)


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
