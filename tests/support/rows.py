"""Every row and column of the catalog tables a subtree touches, with ids replaced by what they name
(node ids by paths below the subtree's top, data source ids by their node's path, asset ids by their
URI), so that two subtrees written by different means compare column by column, on either backend."""

from __future__ import annotations

import json
from typing import Any

from sweepcat.catalog.db import Database

JSON_COLUMNS = {"metadata", "specs", "parameters", "properties", "structure"}
TIME_COLUMNS = {"time_created", "time_updated"}


def columns_of(db: Database, table: str) -> list[str]:
    if db.dialect == "sqlite":
        return [r[1] for r in db.fetch(f'PRAGMA table_info("{table}")')]
    return [r[0] for r in db.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                   "ORDER BY ordinal_position", table)]


def _rows(db: Database, table: str, where: str, *args: Any) -> list[dict[str, Any]]:
    cols = columns_of(db, table)
    out = []
    for row in db.fetch(f'SELECT {", ".join(chr(34) + c + chr(34) for c in cols)} FROM "{table}" WHERE {where}',
                        *args):
        rec = dict(zip(cols, row, strict=True))
        for c in JSON_COLUMNS & set(rec):
            if isinstance(rec[c], str):
                rec[c] = json.loads(rec[c])
        for c in TIME_COLUMNS & set(rec):
            rec[c] = "set" if rec[c] is not None else None  # when differs by nature; that it is set does not
        out.append(rec)
    return out


def subtree_rows(db: Database, top_id: int) -> dict[str, Any]:
    """Every row of Tiled's tables that belongs to the subtree under ``top_id`` (the top itself included),
    ids translated; the top's own key and parent are left out (the two subtrees differ there by design)."""
    ids = [int(r[0]) for r in db.fetch("SELECT descendant FROM nodes_closure WHERE ancestor = ?", top_id)]
    marks = ",".join("?" * len(ids))
    path: dict[int, str] = {}
    parent_of = {int(i): p for i, p in db.fetch(f"SELECT id, parent FROM nodes WHERE id IN ({marks})", *ids)}
    key_of = {int(i): k for i, k in db.fetch(f"SELECT id, key FROM nodes WHERE id IN ({marks})", *ids)}

    def path_of(i: int) -> str:
        if i not in path:
            path[i] = "TOP" if i == top_id else f"{path_of(int(parent_of[i]))}/{key_of[i]}"
        return path[i]

    def name(i: Any) -> str:
        return path_of(int(i)) if int(i) in parent_of else f"outside:{int(i)}"

    nodes = []
    for rec in _rows(db, "nodes", f"id IN ({marks})", *ids):
        rec["id"] = name(rec["id"])
        if rec["id"] == "TOP":
            rec.pop("key")
            rec.pop("parent")
        else:
            rec["parent"] = name(rec["parent"])
        nodes.append(rec)
    closure = []
    for rec in _rows(db, "nodes_closure", f"descendant IN ({marks})", *ids):
        rec["descendant"] = name(rec["descendant"])
        rec["ancestor"] = name(rec["ancestor"]) if int(rec["ancestor"]) in parent_of else "above"
        closure.append(rec)
    sources = _rows(db, "data_sources", f"node_id IN ({marks})", *ids)
    source_name = {}
    for rec in sources:
        source_name[int(rec["id"])] = f"source of {name(rec['node_id'])}"
        rec["id"] = source_name[int(rec["id"])]
        rec["node_id"] = name(rec["node_id"])
    links, assets, structures = [], {}, {}
    if sources:
        smarks = ",".join("?" * len(source_name))
        for rec in _rows(db, "data_source_asset_association", f"data_source_id IN ({smarks})", *source_name):
            asset = _rows(db, "assets", "id = ?", rec["asset_id"])[0]
            rec["data_source_id"] = source_name[int(rec["data_source_id"])]
            rec["asset_id"] = asset["data_uri"]
            asset.pop("id")
            assets[asset["data_uri"]] = asset
            links.append(rec)
        for rec in sources:
            if rec["structure_id"] is not None:
                structures[rec["structure_id"]] = _rows(db, "structures", "id = ?", rec["structure_id"])
    extra = {}
    for table, column in (("revisions", "node_id"), ("node_access_tags_association", "node_id"),
                          ("entities", "node_id"), ("webhooks", "node_id")):
        extra[table] = len(db.fetch(f'SELECT 1 FROM "{table}" WHERE {column} IN ({marks})', *ids))
    if db.dialect == "sqlite":  # Tiled's full-text index of metadata (an external-content FTS5 table)
        extra["metadata_fts5"] = sorted((name(i), json.loads(md)) for i, md in db.fetch(
            f"SELECT rowid, metadata FROM metadata_fts5 WHERE rowid IN ({marks})", *ids))
        extra["metadata_fts5_docsize"] = len(db.fetch(f"SELECT 1 FROM metadata_fts5_docsize WHERE id IN ({marks})",
                                                      *ids))

    def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))

    return {"nodes": ordered(nodes), "nodes_closure": ordered(closure), "data_sources": ordered(sources),
            "data_source_asset_association": ordered(links), "assets": assets, "structures": structures, **extra}
