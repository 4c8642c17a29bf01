"""A typed, indexed table of each dataset's parameters, inside the catalog database.

Tiled keeps parameters as JSON metadata, which range queries scan row by row.
sweepcat keeps, beside it, one table per dataset (``sweepcat_p_<dataset node
id>``: node id, key, one typed column per parameter, an index per column),
written in the same transaction as the nodes. Rows reference ``nodes(id)``
with ON DELETE CASCADE, so whoever deletes a Hamiltonian (sweepcat, or Tiled's
own API) removes its row too; a delete trigger bumps the dataset's version in
``sweepcat_datasets`` so that servers know to reload their in-memory copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import SweepcatError
from .db import Database

REGISTRY = "sweepcat_datasets"


def table_name(dataset_id: int) -> str:
    return f"sweepcat_p_{int(dataset_id)}"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_type(t: pa.DataType, dialect: str) -> str | None:
    if pa.types.is_floating(t):
        return "DOUBLE PRECISION" if dialect == "postgresql" else "REAL"
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "BIGINT" if dialect == "postgresql" else "INTEGER"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "TEXT"
    return None  # nested values are metadata, not search columns


def searchable_columns(ham: pa.Table, dialect: str) -> dict[str, str]:
    """Parameter name -> SQL type, for the columns a query can name (huid included)."""
    out = {}
    for name in ham.column_names:
        if name == "key":
            continue
        kind = sql_type(ham.schema.field(name).type, dialect)
        if kind is not None:
            out[name] = kind
    return out


def registry_exists(db: Database) -> bool:
    exists = (db.fetch("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", REGISTRY)
              if db.dialect == "sqlite" else db.fetch("SELECT to_regclass(?)", REGISTRY))
    return bool(exists) and exists[0][0] is not None


def _ensure_registry(db: Database) -> None:
    """The registry of sweepcat's datasets. ``root`` is the data directory recorded by ``ingest`` (the
    operator) or by ``register`` after its readable-storage check; Tiled's API cannot write it."""
    db.execute(f"CREATE TABLE IF NOT EXISTS {REGISTRY} (dataset_id INTEGER PRIMARY KEY REFERENCES nodes(id) "
               "ON DELETE CASCADE, key TEXT NOT NULL, table_name TEXT NOT NULL, columns TEXT NOT NULL, "
               "version BIGINT NOT NULL DEFAULT 0, root TEXT)")
    if db.dialect == "postgresql":
        db.execute(f"ALTER TABLE {REGISTRY} ADD COLUMN IF NOT EXISTS root TEXT")
    elif "root" not in {row[1] for row in db.fetch(f"PRAGMA table_info({REGISTRY})")}:
        db.execute(f"ALTER TABLE {REGISTRY} ADD COLUMN root TEXT")  # registries written before roots were kept


def record_root(db: Database, dataset_id: int, root: str) -> None:
    db.execute(f"UPDATE {REGISTRY} SET root = ? WHERE dataset_id = ?", root, dataset_id)


def recorded_root(db: Database, dataset_id: int) -> str | None:
    if not registry_exists(db) or not has_root_column(db):
        return None
    row = db.fetch(f"SELECT root FROM {REGISTRY} WHERE dataset_id = ?", dataset_id)
    return row[0][0] if row else None


def recorded_roots(db: Database) -> list[str]:
    """The data roots sweepcat recorded for its datasets (never taken from node metadata)."""
    if not registry_exists(db) or not has_root_column(db):
        return []
    return sorted({r for (r,) in db.fetch(f"SELECT root FROM {REGISTRY} WHERE root IS NOT NULL")})


def ensure_tables(db: Database, dataset_id: int, dataset_key: str, columns: dict[str, str]) -> list[str]:
    """Create (or widen) the dataset's parameter table; returns its columns in order.

    Indexes come separately (``ensure_indexes``), after the rows: an index built
    over loaded rows is sorted once instead of maintained row by row."""
    t = table_name(dataset_id)
    _ensure_registry(db)
    row = db.fetch(f"SELECT columns FROM {REGISTRY} WHERE dataset_id = ?", dataset_id)
    known: dict[str, str] = json.loads(row[0][0]) if row else {}
    if not row:
        db.execute(f"CREATE TABLE IF NOT EXISTS {t} (node_id INTEGER PRIMARY KEY REFERENCES nodes(id) "
                   "ON DELETE CASCADE, key TEXT NOT NULL)")
        _delete_trigger(db, dataset_id)
        db.execute(f"INSERT INTO {REGISTRY} (dataset_id, key, table_name, columns, version) VALUES (?, ?, ?, '{{}}', 0)",
                   dataset_id, dataset_key, t)
    for name, kind in columns.items():
        if name not in known:
            db.execute(f"ALTER TABLE {t} ADD COLUMN {quote(name)} {kind}")
            known[name] = kind
    db.execute(f"UPDATE {REGISTRY} SET columns = ? WHERE dataset_id = ?", json.dumps(known), dataset_id)
    return list(known)


def ensure_indexes(db: Database, dataset_id: int, columns: list[str]) -> None:
    t = table_name(dataset_id)
    for name in columns:
        db.execute(f"CREATE INDEX IF NOT EXISTS {quote(f'{t}_{name}')} ON {t} ({quote(name)})")


def _delete_trigger(db: Database, dataset_id: int) -> None:
    t = table_name(dataset_id)
    bump = f"UPDATE {REGISTRY} SET version = version + 1 WHERE dataset_id = {int(dataset_id)}"
    if db.dialect == "sqlite":
        db.execute(f"CREATE TRIGGER IF NOT EXISTS {t}_deleted AFTER DELETE ON {t} BEGIN {bump}; END")
    else:
        db.execute(f"CREATE OR REPLACE FUNCTION {t}_bump() RETURNS trigger AS $$ BEGIN {bump}; RETURN NULL; END; "
                   "$$ LANGUAGE plpgsql")
        db.execute(f"CREATE TRIGGER {t}_deleted AFTER DELETE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {t}_bump()")


def bump(db: Database, dataset_id: int) -> None:
    db.execute(f"UPDATE {REGISTRY} SET version = version + 1 WHERE dataset_id = ?", dataset_id)


def _extract(name: str, kind: str, dialect: str) -> str:
    """SQL reading one parameter out of a node's JSON metadata, typed like its column."""
    if dialect == "sqlite":
        path = '$."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "json_extract(metadata, '" + path.replace("'", "''") + "')"
    field = "'" + name.replace("'", "''") + "'"
    text = f"(metadata->>{field})"
    if kind == "TEXT":
        return text
    if kind == "DOUBLE PRECISION":
        return f"{text}::double precision"
    return (f"(CASE jsonb_typeof(metadata->{field}) WHEN 'boolean' THEN {text}::boolean::int "
            f"ELSE {text}::bigint END)")


def write_rows(db: Database, dataset_id: int, node_ids: np.ndarray, ham: pa.Table, columns: list[str],
               *, upsert: bool = False) -> None:
    """One row per Hamiltonian from the manifest table (binding values is cheaper than json_extract)."""
    if not len(node_ids):
        return
    t = table_name(dataset_id)
    present = [c for c in columns if c in ham.column_names]
    cols = ["node_id", "key", *present]
    values = [np.asarray(node_ids, dtype=np.int64).tolist(), ham.column("key").to_pylist()]
    for c in present:
        col = ham.column(c)
        values.append(col.cast(pa.int64()).to_pylist() if pa.types.is_boolean(col.type) else col.to_pylist())
    rows = list(zip(*values))
    if upsert:
        sets = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in cols[1:])
        db.executemany(f"INSERT INTO {t} ({', '.join(map(quote, cols))}) VALUES ({', '.join('?' * len(cols))}) "
                       f"ON CONFLICT (node_id) DO UPDATE SET {sets}", rows)
    else:
        db.copy(t, [quote(c) if db.dialect == "sqlite" else c for c in cols], rows)


def fill_from_nodes(db: Database, dataset_id: int, kinds: dict[str, str]) -> None:
    """Every Hamiltonian's row computed in SQL from its metadata (for ``reindex``: the metadata is the truth)."""
    t = table_name(dataset_id)
    cols = list(kinds)
    select = ", ".join(["id", "key"] + [_extract(c, kinds[c], db.dialect) for c in cols])
    db.execute(f"INSERT INTO {t} ({', '.join(['node_id', 'key', *map(quote, cols)])}) SELECT {select} FROM nodes "
               "WHERE parent = ? AND key != '_axes'", dataset_id)


@dataclass
class ParamTable:
    """A dataset's parameters as numpy columns, rows in node-id (listing) order."""

    dataset_id: int
    version: int
    node_id: np.ndarray
    key: np.ndarray
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.node_id)


@dataclass(frozen=True)
class Registration:
    """A dataset in sweepcat's registry: its parameter table's version and columns, its recorded root."""

    dataset_id: int
    version: int
    columns: dict[str, str]  # name -> SQL type
    root: str | None


def has_root_column(db: Database) -> bool:
    known = getattr(db, "_sweepcat_registry_root", None)
    if known is None:
        if db.dialect == "sqlite":
            known = "root" in {row[1] for row in db.fetch(f"PRAGMA table_info({REGISTRY})")}
        else:
            known = bool(db.fetch("SELECT 1 FROM information_schema.columns WHERE table_name = ? AND "
                                  "column_name = 'root'", REGISTRY))
        if known:  # a column once there stays there; its absence is looked up again
            db._sweepcat_registry_root = True  # type: ignore[attr-defined]
    return known


def registry(db: Database, dataset_key: str) -> Registration | None:
    """A dataset's registration, or None when sweepcat did not ingest or register it."""
    if not registry_exists(db):
        return None
    root = "r.root" if has_root_column(db) else "NULL"
    row = db.fetch(f"SELECT r.dataset_id, r.version, r.columns, {root} FROM {REGISTRY} r "
                   "JOIN nodes n ON n.id = r.dataset_id WHERE n.parent = 0 AND n.key = ?", dataset_key)
    if not row:
        return None
    return Registration(int(row[0][0]), int(row[0][1]), dict(json.loads(row[0][2])), row[0][3])


def load(db: Database, dataset_id: int, version: int, column_names: list[str],
         kinds: dict[str, str] | None = None) -> ParamTable:
    """Columns as numpy arrays; numeric ones converted in C (nulls become NaN), not row by row."""
    t = table_name(dataset_id)
    kinds = kinds or {}
    numeric = [c for c in column_names if kinds.get(c, "REAL") not in ("TEXT",)]
    text = [c for c in column_names if c not in numeric]
    nan = "'nan'" if db.dialect == "sqlite" else "'NaN'::float8"
    exprs = ["node_id", "key"] + [f"COALESCE({quote(c)}, {nan})" for c in numeric] + [quote(c) for c in text]
    rows = db.fetch(f"SELECT {', '.join(exprs)} FROM {t} ORDER BY node_id")
    if rows:
        columns_of = list(zip(*rows))
    else:
        columns_of = [() for _ in exprs]
    node_id = np.asarray(columns_of[0], dtype=np.int64)
    key = np.asarray(columns_of[1], dtype=object)
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(numeric, start=2):
        columns[name] = np.asarray(columns_of[j], dtype=np.float64)
    for j, name in enumerate(text, start=2 + len(numeric)):
        columns[name] = np.asarray(columns_of[j], dtype=object)
    ordered = {name: columns[name] for name in column_names}
    return ParamTable(dataset_id, version, node_id, key, ordered)


def reindex(db: Database, dataset_id: int, dataset_key: str) -> int:
    """Rebuild a dataset's parameter table from the Hamiltonians' metadata (if ever out of step)."""
    rows = db.fetch("SELECT metadata FROM nodes WHERE parent = ? AND key != '_axes' ORDER BY id", dataset_id)
    if not rows:
        raise SweepcatError(f"dataset {dataset_key!r} has no Hamiltonians to index", "ingest or register it first")
    records = []
    for (md,) in rows:
        md = json.loads(md) if isinstance(md, str) else (md or {})
        records.append({k: v for k, v in md.items() if isinstance(v, (int, float, str, bool)) or v is None})
    kinds = searchable_columns(pa.Table.from_pylist(records), db.dialect)
    t = table_name(dataset_id)
    _ensure_registry(db)
    root = recorded_root(db, dataset_id)
    db.execute(f"DROP TABLE IF EXISTS {t}")
    db.execute(f"DELETE FROM {REGISTRY} WHERE dataset_id = ?", dataset_id)
    columns = ensure_tables(db, dataset_id, dataset_key, kinds)
    if root is not None:
        record_root(db, dataset_id, root)
    fill_from_nodes(db, dataset_id, {c: kinds[c] for c in columns})
    ensure_indexes(db, dataset_id, columns)
    bump(db, dataset_id)
    return len(rows)
