"""Removing datasets, Hamiltonians or single artifacts from the catalog (HDF5 files are never touched).

sweepcat removes only what it created: nodes of the datasets in its registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..contract import AXES_KEY, RESERVED_KEYS
from ..errors import SweepcatError
from . import params
from .db import Database, connect
from .plan import compact_json, summary_of
from .schema import CatalogURI, ensure_catalog


@dataclass
class DeletePlan:
    path: str
    node_id: int
    nodes: int  # the node and everything below it
    dataset_id: int


def _dataset_id(db: Database, cat: CatalogURI, dataset: str) -> int:
    reg = params.registry(db, dataset)
    if reg is not None:
        return reg.dataset_id
    if db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", dataset):
        raise SweepcatError(f"{dataset}: not a sweepcat dataset in {cat.display} (sweepcat did not ingest or "
                            "register it), so sweepcat leaves it alone",
                            "delete it with Tiled's client, or adopt it first with `sweepcat reindex`")
    raise SweepcatError(f"{dataset}: no such dataset in {cat.display}",
                        "list them with `sweepcat datasets`")


def plan_delete(cat: CatalogURI, dataset: str, key: str | None = None, type_: str | None = None) -> DeletePlan:
    ensure_catalog(cat, create=False)
    segments = [s for s in (dataset, key, type_) if s is not None]
    with connect(cat) as db:
        node_id = dataset_id = _dataset_id(db, cat, dataset)
        for depth, segment in enumerate(segments[1:], start=1):
            row = db.fetch("SELECT id FROM nodes WHERE parent = ? AND key = ?", node_id, segment)
            if not row:
                where = "/".join(segments[: depth + 1])
                raise SweepcatError(f"{where}: no such node in {cat.display}",
                                    "check the names with `sweepcat datasets` or a Tiled client")
            node_id = int(row[0][0])
        count = int(db.fetch("SELECT COUNT(*) FROM nodes_closure WHERE ancestor = ?", node_id)[0][0])
    return DeletePlan("/".join(segments), node_id, count, dataset_id)


def execute_delete(cat: CatalogURI, plan: DeletePlan) -> None:
    """One transaction; children, data sources and closure rows go by Tiled's ON DELETE CASCADE."""
    with connect(cat) as db:
        db.begin()
        if plan.node_id == plan.dataset_id:
            dataset_key = plan.path
            delete_node_ids(db, [plan.node_id, *axes_of(db, dataset_key)])
            params.drop_dataset(db, plan.dataset_id)
        else:
            delete_node_ids(db, [plan.node_id])
            refresh_counts(db, plan.dataset_id)
        db.commit()


def axes_of(db: Database, dataset: str) -> list[int]:
    """The node of a dataset's shared axes, /_axes/<dataset>, if sweepcat made it."""
    axes_root = params.owned_node(db, AXES_KEY)
    if axes_root is None:
        return []
    return [int(i) for (i,) in db.fetch("SELECT id FROM nodes WHERE parent = ? AND key = ?", int(axes_root), dataset)]


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


def count_children(db: Database, dataset_id: int) -> dict[str, int]:
    """How many Hamiltonians and artifacts a dataset holds now."""
    reserved = ", ".join("'" + k + "'" for k in sorted(RESERVED_KEYS))
    n_ham = db.fetch(f"SELECT COUNT(*) FROM nodes WHERE parent = ? AND key NOT IN ({reserved})", dataset_id)[0][0]
    n_art = db.fetch(f"SELECT COUNT(*) FROM nodes n JOIN nodes p ON n.parent = p.id WHERE p.parent = ? "
                     f"AND p.key NOT IN ({reserved})", dataset_id)[0][0]
    return {"hamiltonians": int(n_ham), "artifacts": int(n_art)}


def refresh_counts(db: Database, dataset_id: int) -> None:
    """The dataset node's recorded counts of Hamiltonians and artifacts, after nodes came or went."""
    row = db.fetch("SELECT metadata FROM nodes WHERE id = ?", dataset_id)
    md = json.loads(row[0][0]) if isinstance(row[0][0], str) else dict(row[0][0] or {})
    md = md if isinstance(md, dict) else {}
    md["sweepcat"] = summary = summary_of(md)
    summary["provenance"]["catalog_counts"] = count_children(db, dataset_id)
    db.execute("UPDATE nodes SET metadata = ?, time_updated = CURRENT_TIMESTAMP WHERE id = ?", compact_json(md),
               dataset_id)


def prune_dataset(cat: CatalogURI, dataset: str, keep: set[str]) -> int:
    """Remove the Hamiltonians of ``dataset`` whose keys are not in ``keep``; returns how many."""
    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        db.begin()
        dataset_id = _dataset_id(db, cat, dataset)
        children = db.fetch("SELECT key, id FROM nodes WHERE parent = ?", dataset_id)
        stale = [int(i) for k, i in children if k not in RESERVED_KEYS and k not in keep]
        delete_node_ids(db, stale)
        if stale:
            refresh_counts(db, dataset_id)
        db.commit()
    return len(stale)
