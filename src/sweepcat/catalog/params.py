"""sweepcat's own tables in the catalog database: its registry of datasets, and a typed, indexed table of
each dataset's parameters, kept in step with Tiled's nodes by triggers.

The registry (``sweepcat_datasets``) is the record of which top-level nodes are sweepcat's datasets,
the data root each was ingested from, its parameter columns and a version that changes with every
change to the dataset's nodes or data sources. Only ``ingest`` (the operator) and ``register`` (after
its checks) write it; Tiled's API cannot.

Tiled keeps parameters as JSON metadata, which range queries scan row by row. Beside it, each dataset
has ``sweepcat_p_<dataset node id>``: node id, key, one column per parameter and an index per column.
Columns are positional (``c0``, ``c1`` ...), so parameter names that differ only in case (``J``,
``j``) or match the table's own columns (``key``, ``node_id``) all work; each parameter has one kind,
number or text, for the life of the dataset.

Triggers keep both in step whichever API writes: a Hamiltonian inserted or edited through Tiled gets
its row (deleted ones lose it by ON DELETE CASCADE), and any change to a dataset's nodes or data
sources bumps its version, so servers reload their in-memory copy. A bulk ingest suspends them inside
its transaction, writes the same rows itself, and bumps the version once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyarrow as pa

from ..contract import RESERVED_KEYS, parameter_name_problem
from ..errors import SweepcatError
from .db import Database

if TYPE_CHECKING:
    from .schema import CatalogURI

REGISTRY = "sweepcat_datasets"
NUMBER, TEXT = "number", "text"  # the two kinds of parameter
_SQL_TYPE = {("sqlite", NUMBER): "REAL", ("sqlite", TEXT): "TEXT",
             ("postgresql", NUMBER): "DOUBLE PRECISION", ("postgresql", TEXT): "TEXT"}
_LEGACY_KIND = {"REAL": NUMBER, "INTEGER": NUMBER, "DOUBLE PRECISION": NUMBER, "BIGINT": NUMBER, "TEXT": TEXT}
_RESERVED_SQL = ", ".join("'" + k.replace("'", "''") + "'" for k in sorted(RESERVED_KEYS))
BULK_SETTING = "sweepcat.bulk"  # PostgreSQL: set (locally) while a bulk ingest writes the rows itself


def table_name(dataset_id: int) -> str:
    return f"sweepcat_p_{int(dataset_id)}"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def kind_of(t: pa.DataType) -> str | None:
    """The kind of a parameter of this Arrow type; None for values that are metadata only (null, nested)."""
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        return NUMBER
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return TEXT
    return None


def searchable_columns(schema: pa.Schema) -> dict[str, str]:
    """Parameter name -> kind, for the columns a query can name (huid included, key excluded)."""
    out = {}
    for name in schema.names:
        kind = kind_of(schema.field(name).type) if name != "key" else None
        if kind is not None:
            out[name] = kind
    return out


@dataclass(frozen=True)
class Column:
    name: str  # the parameter's name, as in the manifests
    kind: str  # NUMBER or TEXT
    column: str  # the SQL column holding it


@dataclass(frozen=True)
class Registration:
    """A dataset in sweepcat's registry."""

    dataset_id: int
    version: int
    columns: tuple[Column, ...]
    root: str | None


def _parse_columns(text: str) -> tuple[Column, ...]:
    data = json.loads(text)
    if isinstance(data, dict) and "columns" in data:
        return tuple(Column(n, k, c) for n, k, c in data["columns"])
    # registries written before columns were positional: the column was named after the parameter
    return tuple(Column(n, _LEGACY_KIND.get(t, TEXT), n) for n, t in (data or {}).items())


def _columns_json(columns: tuple[Column, ...] | list[Column]) -> str:
    return json.dumps({"format": 2, "columns": [[c.name, c.kind, c.column] for c in columns]})


# --------------------------------------------------------------------------- the registry


def registry_exists(db: Database) -> bool:
    exists = (db.fetch("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", REGISTRY)
              if db.dialect == "sqlite" else db.fetch("SELECT to_regclass(?)", REGISTRY))
    return bool(exists) and exists[0][0] is not None


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


def _ensure_registry(db: Database) -> None:
    db.execute(f"CREATE TABLE IF NOT EXISTS {REGISTRY} (dataset_id INTEGER PRIMARY KEY REFERENCES nodes(id) "
               "ON DELETE CASCADE, key TEXT NOT NULL, table_name TEXT NOT NULL, columns TEXT NOT NULL, "
               "version BIGINT NOT NULL DEFAULT 0, root TEXT)")
    if db.dialect == "postgresql":
        db.execute(f"ALTER TABLE {REGISTRY} ADD COLUMN IF NOT EXISTS root TEXT")
    elif not has_root_column(db):
        db.execute(f"ALTER TABLE {REGISTRY} ADD COLUMN root TEXT")  # registries written before roots were kept
    install_version_triggers(db)


def registry(db: Database, dataset_key: str) -> Registration | None:
    """A dataset's registration, or None when sweepcat did not ingest or register it."""
    if not registry_exists(db):
        return None
    root = "r.root" if has_root_column(db) else "NULL"
    row = db.fetch(f"SELECT r.dataset_id, r.version, r.columns, {root} FROM {REGISTRY} r "
                   "JOIN nodes n ON n.id = r.dataset_id WHERE n.parent = 0 AND n.key = ?", dataset_key)
    if not row:
        return None
    return Registration(int(row[0][0]), int(row[0][1]), _parse_columns(row[0][2]), row[0][3])


def registration_by_id(db: Database, dataset_id: int) -> Registration | None:
    if not registry_exists(db):
        return None
    root = "root" if has_root_column(db) else "NULL"
    row = db.fetch(f"SELECT dataset_id, version, columns, {root} FROM {REGISTRY} WHERE dataset_id = ?", dataset_id)
    return Registration(int(row[0][0]), int(row[0][1]), _parse_columns(row[0][2]), row[0][3]) if row else None


def record_root(db: Database, dataset_id: int, root: str) -> None:
    db.execute(f"UPDATE {REGISTRY} SET root = ? WHERE dataset_id = ?", root, dataset_id)


def recorded_roots(db: Database) -> list[str]:
    """The data roots sweepcat recorded for its datasets (never taken from node metadata).

    Roots are recorded resolved. One that no longer resolves to itself (a directory on its path was
    swapped for a symlink since) is left out: resolving it again would widen readable storage to
    wherever the link points. Its dataset's files are then refused, until the operator re-ingests."""
    import os

    if not registry_exists(db) or not has_root_column(db):
        return []
    recorded = {r for (r,) in db.fetch(f"SELECT root FROM {REGISTRY} WHERE root IS NOT NULL")}
    return sorted(r for r in recorded if os.path.realpath(r) == r)


def fresh_version(db: Database) -> int:
    """A new registration's first version: never one an earlier registration under the same node id
    (Tiled reuses ids) may have had, so a cached index or a pinned result cannot take one for the other.
    Versions start at the clock in microseconds (each change adds 1: a dataset would need more changes
    than microseconds passed to reach it) and above every version in the registry."""
    import time

    top = db.fetch(f"SELECT COALESCE(MAX(version), 0) FROM {REGISTRY}")[0][0]
    return max(time.time_ns() // 1000, int(top) + 1)


def bump(db: Database, dataset_id: int) -> None:
    db.execute(f"UPDATE {REGISTRY} SET version = version + 1 WHERE dataset_id = ?", dataset_id)


OWNED = "sweepcat_owned"  # nodes sweepcat made that are not datasets (the /_axes container), by role


def _ensure_owned(db: Database) -> None:
    # ON DELETE CASCADE: a node deleted through any API takes its record along, so a node created
    # later with the same id (Tiled reuses ids) is never taken for sweepcat's.
    db.execute(f"CREATE TABLE IF NOT EXISTS {OWNED} (node_id INTEGER PRIMARY KEY REFERENCES nodes(id) "
               "ON DELETE CASCADE, role TEXT NOT NULL)")


def owned_node(db: Database, role: str) -> int | None:
    """The node sweepcat made for ``role`` (and that still exists), or None."""
    exists = (db.fetch("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", OWNED)
              if db.dialect == "sqlite" else db.fetch("SELECT to_regclass(?)", OWNED))
    if not exists or exists[0][0] is None:
        return None
    row = db.fetch(f"SELECT o.node_id FROM {OWNED} o JOIN nodes n ON n.id = o.node_id WHERE o.role = ?", role)
    return int(row[0][0]) if row else None


def own(db: Database, node_id: int, role: str) -> None:
    _ensure_owned(db)
    db.execute(f"DELETE FROM {OWNED} WHERE role = ?", role)
    db.execute(f"INSERT INTO {OWNED} (node_id, role) VALUES (?, ?)", node_id, role)


# --------------------------------------------------------------------------- the parameter table


def ensure_tables(db: Database, dataset_id: int, dataset_key: str, wanted: dict[str, str]) -> tuple[Column, ...]:
    """Register the dataset and create (or widen) its parameter table; returns its columns in order.

    A parameter already registered with the other kind (number / text) is refused, naming it.
    Indexes come separately (``ensure_indexes``), after the rows: an index built over loaded rows
    is sorted once instead of maintained row by row."""
    t = table_name(dataset_id)
    _ensure_registry(db)
    reg = registration_by_id(db, dataset_id)
    if reg is None:
        # A table or triggers under this id belong to a dataset deleted through Tiled's API (its registry
        # row went with its node by cascade; Tiled reuses node ids): they go before the new one is made.
        drop_dataset(db, dataset_id)
        db.execute(f"CREATE TABLE {t} (node_id INTEGER PRIMARY KEY REFERENCES nodes(id) "
                   "ON DELETE CASCADE, key TEXT NOT NULL)")
        db.execute(f"INSERT INTO {REGISTRY} (dataset_id, key, table_name, columns, version) VALUES (?, ?, ?, ?, ?)",
                   dataset_id, dataset_key, t, _columns_json([]), fresh_version(db))
        known: list[Column] = []
    else:
        known = list(reg.columns)
    by_name = {c.name: c for c in known}
    conflicts = [(n, by_name[n].kind, k) for n, k in wanted.items() if n in by_name and by_name[n].kind != k]
    if conflicts:
        name, was, now = conflicts[0]
        raise SweepcatError(
            f"dataset {dataset_key!r}: parameter {name!r} holds {was}s in the catalog and {now}s in these manifests"
            + (f" (and {len(conflicts) - 1} more parameter(s))" if len(conflicts) > 1 else ""),
            "a parameter keeps one kind for the life of a dataset: convert it in the generator to match, or "
            "ingest these manifests as a new dataset (--label NEW)")
    taken = {c.column.lower() for c in known} | {"node_id", "key"}
    added = False
    for name, kind in wanted.items():
        if name in by_name:
            continue
        k = len(known)
        while f"c{k}" in taken:
            k += 1
        col = Column(name, kind, f"c{k}")
        taken.add(col.column)
        db.execute(f"ALTER TABLE {t} ADD COLUMN {col.column} {_SQL_TYPE[db.dialect, kind]}")
        known.append(col)
        added = True
    if added or reg is None:
        db.execute(f"UPDATE {REGISTRY} SET columns = ? WHERE dataset_id = ?", _columns_json(known), dataset_id)
        install_sync_triggers(db, dataset_id, known)
    return tuple(known)


def ensure_indexes(db: Database, dataset_id: int, columns: tuple[Column, ...]) -> None:
    t = table_name(dataset_id)
    for c in columns:
        db.execute(f"CREATE INDEX IF NOT EXISTS {quote(f'{t}_{c.column}')} ON {t} ({quote(c.column)})")


def _cell(values: pa.ChunkedArray | pa.Array, kind: str) -> list[Any]:
    if kind == NUMBER:
        return values.cast(pa.float64()).to_pylist()
    return values.to_pylist()


def write_rows(db: Database, dataset_id: int, node_ids: np.ndarray, ham: pa.Table, columns: tuple[Column, ...],
               *, upsert: bool = False) -> None:
    """One row per Hamiltonian from a manifest batch (binding values is cheaper than extracting JSON)."""
    if not len(node_ids):
        return
    t = table_name(dataset_id)
    present = [c for c in columns if c.name in ham.column_names]
    cols = ["node_id", "key", *(c.column for c in present)]
    values = [np.asarray(node_ids, dtype=np.int64).tolist(), ham.column("key").to_pylist()]
    values += [_cell(ham.column(c.name), c.kind) for c in present]
    rows = list(zip(*values, strict=True))
    if upsert:
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
        db.executemany(f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                       f"ON CONFLICT (node_id) DO UPDATE SET {sets}", rows)
    else:
        db.copy(t, cols, rows)


def extract(name: str, kind: str, dialect: str, source: str = "metadata") -> str:
    """SQL reading one parameter out of JSON metadata (``source``): its value when it has the parameter's
    kind, else NULL (a value of the wrong kind, written through Tiled's API, is not searchable)."""
    if dialect == "sqlite":
        path = "'" + ('$."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"').replace("'", "''") + "'"
        typed = f"json_type({source}, {path})"
        if kind == TEXT:
            return f"(CASE {typed} WHEN 'text' THEN json_extract({source}, {path}) END)"
        return (f"(CASE {typed} WHEN 'integer' THEN json_extract({source}, {path}) WHEN 'real' THEN "
                f"json_extract({source}, {path}) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)")
    field = "'" + name.replace("'", "''") + "'"
    typed = f"jsonb_typeof({source}->{field})"
    if kind == TEXT:
        return f"(CASE {typed} WHEN 'string' THEN {source}->>{field} END)"
    return (f"(CASE {typed} WHEN 'number' THEN ({source}->>{field})::double precision "
            f"WHEN 'boolean' THEN ({source}->>{field})::boolean::int END)")


def fill_from_nodes(db: Database, dataset_id: int, columns: tuple[Column, ...]) -> None:
    """Every Hamiltonian's row computed in SQL from its metadata (``reindex``: the metadata is the truth)."""
    t = table_name(dataset_id)
    select = ", ".join(["id", "key"] + [extract(c.name, c.kind, db.dialect) for c in columns])
    db.execute(f"INSERT INTO {t} ({', '.join(['node_id', 'key', *(c.column for c in columns)])}) "
               f"SELECT {select} FROM nodes WHERE parent = ? AND key NOT IN ({_RESERVED_SQL})", dataset_id)


# --------------------------------------------------------------------------- triggers


def _bump_where(parent_of: str) -> str:
    """Datasets whose version a change to a node with parent ``parent_of`` touches (the node is a
    Hamiltonian, or an artifact of one)."""
    return f"dataset_id IN ({parent_of}, (SELECT parent FROM nodes WHERE id = {parent_of}))"


def install_version_triggers(db: Database) -> None:
    """Any change to a dataset's nodes or data sources, through any API, bumps its version."""
    if db.dialect == "sqlite":
        bump_node = f"UPDATE {REGISTRY} SET version = version + 1 WHERE "
        ds_parent = "(SELECT p.parent FROM nodes n JOIN nodes p ON p.id = n.parent WHERE n.id = {}.node_id)"
        via_link = ("(SELECT p.parent FROM data_sources d JOIN nodes n ON n.id = d.node_id JOIN nodes p ON "
                    "p.id = n.parent WHERE d.id = {}.data_source_id)")
        via_asset = ("SELECT p.parent FROM data_source_asset_association x JOIN data_sources d ON d.id = "
                     "x.data_source_id JOIN nodes n ON n.id = d.node_id JOIN nodes p ON p.id = n.parent "
                     "WHERE x.asset_id = NEW.id")
        statements = {
            "sweepcat_nodes_ai": ("AFTER INSERT ON nodes", bump_node + _bump_where("NEW.parent")),
            "sweepcat_nodes_au": ("AFTER UPDATE ON nodes", bump_node + _bump_where("OLD.parent") + " OR "
                                  + _bump_where("NEW.parent")),
            "sweepcat_nodes_ad": ("AFTER DELETE ON nodes", bump_node + _bump_where("OLD.parent")),
            "sweepcat_data_sources_ai": ("AFTER INSERT ON data_sources",
                                         bump_node + "dataset_id = " + ds_parent.format("NEW")),
            "sweepcat_data_sources_au": ("AFTER UPDATE ON data_sources",
                                         bump_node + "dataset_id IN (" + ds_parent.format("NEW") + ", "
                                         + ds_parent.format("OLD") + ")"),
            "sweepcat_data_sources_ad": ("AFTER DELETE ON data_sources",
                                         bump_node + "dataset_id = " + ds_parent.format("OLD")),
            # An asset attached, detached or re-pointed (Tiled's asset routes, or SQL) moves bytes too.
            "sweepcat_asset_links_ai": ("AFTER INSERT ON data_source_asset_association",
                                        bump_node + "dataset_id = " + via_link.format("NEW")),
            "sweepcat_asset_links_ad": ("AFTER DELETE ON data_source_asset_association",
                                        bump_node + "dataset_id = " + via_link.format("OLD")),
            "sweepcat_asset_links_au": ("AFTER UPDATE ON data_source_asset_association",
                                        bump_node + "dataset_id IN (" + via_link.format("NEW") + ", "
                                        + via_link.format("OLD") + ")"),
            "sweepcat_assets_au": ("AFTER UPDATE ON assets", bump_node + "dataset_id IN (" + via_asset + ")"),
        }
        for name, (when, body) in statements.items():
            db.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {when} BEGIN {body}; END")
        return
    db.execute(f"""CREATE OR REPLACE FUNCTION sweepcat_bump_version() RETURNS trigger AS $$
DECLARE node_id BIGINT; parent_id BIGINT;
-- Datasets whose node is gone are left alone: a recursive delete through Tiled removes the dataset
-- node in the same statement, and its registry row goes by cascade (updating it would violate the key).
BEGIN
  IF current_setting('{BULK_SETTING}', true) = 'on' THEN RETURN NULL; END IF;
  IF TG_TABLE_NAME = 'assets' THEN
    UPDATE {REGISTRY} r SET version = version + 1
      WHERE EXISTS (SELECT 1 FROM nodes WHERE id = r.dataset_id) AND dataset_id IN
      (SELECT p.parent FROM data_source_asset_association x JOIN data_sources d ON d.id = x.data_source_id
       JOIN nodes n ON n.id = d.node_id JOIN nodes p ON p.id = n.parent WHERE x.asset_id IN (OLD.id, NEW.id));
    RETURN NULL;
  END IF;
  IF TG_TABLE_NAME = 'data_source_asset_association' THEN
    IF TG_OP = 'UPDATE' AND OLD.data_source_id IS DISTINCT FROM NEW.data_source_id THEN
      UPDATE {REGISTRY} r SET version = version + 1
      WHERE EXISTS (SELECT 1 FROM nodes WHERE id = r.dataset_id) AND dataset_id IN
        (SELECT p.parent FROM data_sources d JOIN nodes n ON n.id = d.node_id JOIN nodes p ON p.id = n.parent
         WHERE d.id = OLD.data_source_id);
    END IF;
    SELECT d.node_id INTO node_id FROM data_sources d
      WHERE d.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.data_source_id ELSE NEW.data_source_id END;
    SELECT n.parent INTO parent_id FROM nodes n WHERE n.id = node_id;
  ELSIF TG_TABLE_NAME = 'data_sources' THEN
    node_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.node_id ELSE NEW.node_id END;
    SELECT n.parent INTO parent_id FROM nodes n WHERE n.id = node_id;
  ELSE
    parent_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.parent ELSE NEW.parent END;
    IF TG_OP = 'UPDATE' AND OLD.parent IS DISTINCT FROM NEW.parent THEN
      UPDATE {REGISTRY} r SET version = version + 1
      WHERE EXISTS (SELECT 1 FROM nodes WHERE id = r.dataset_id) AND dataset_id IN
        (OLD.parent, (SELECT parent FROM nodes WHERE id = OLD.parent));
    END IF;
  END IF;
  UPDATE {REGISTRY} r SET version = version + 1
      WHERE EXISTS (SELECT 1 FROM nodes WHERE id = r.dataset_id) AND dataset_id IN
    (parent_id, (SELECT parent FROM nodes WHERE id = parent_id));
  RETURN NULL;
END; $$ LANGUAGE plpgsql""")
    for table, events in (("nodes", "INSERT OR UPDATE OR DELETE"), ("data_sources", "INSERT OR UPDATE OR DELETE"),
                          ("data_source_asset_association", "INSERT OR UPDATE OR DELETE"), ("assets", "UPDATE")):
        name = VERSION_TRIGGERS_PG[table]
        if not db.fetch("SELECT 1 FROM pg_trigger WHERE tgname = ?", name):
            db.execute(f"CREATE TRIGGER {name} AFTER {events} ON {table} FOR EACH ROW EXECUTE FUNCTION "
                       "sweepcat_bump_version()")


VERSION_TRIGGERS_PG = {"nodes": "sweepcat_nodes_changed", "data_sources": "sweepcat_data_sources_changed",
                       "data_source_asset_association": "sweepcat_asset_links_changed",
                       "assets": "sweepcat_assets_changed"}


def install_sync_triggers(db: Database, dataset_id: int, columns: list[Column] | tuple[Column, ...]) -> None:
    """A Hamiltonian inserted or edited through any API gets its parameter row (deletes go by cascade)."""
    t = table_name(dataset_id)
    ds = int(dataset_id)
    cols = ", ".join(["node_id", "key", *(c.column for c in columns)])
    if db.dialect == "sqlite":
        values = ", ".join(["NEW.id", "NEW.key", *(extract(c.name, c.kind, "sqlite", "NEW.metadata")
                                                   for c in columns)])
        db.execute(f"DROP TRIGGER IF EXISTS {t}_ai")
        db.execute(f"DROP TRIGGER IF EXISTS {t}_au")
        db.execute(f"CREATE TRIGGER {t}_ai AFTER INSERT ON nodes WHEN NEW.parent = {ds} AND NEW.key NOT IN "
                   f"({_RESERVED_SQL}) BEGIN INSERT OR REPLACE INTO {t} ({cols}) VALUES ({values}); END")
        db.execute(f"CREATE TRIGGER {t}_au AFTER UPDATE ON nodes WHEN OLD.parent = {ds} OR NEW.parent = {ds} BEGIN "
                   f"DELETE FROM {t} WHERE node_id = OLD.id; INSERT INTO {t} ({cols}) SELECT {values} "
                   f"WHERE NEW.parent = {ds} AND NEW.key NOT IN ({_RESERVED_SQL}); END")
        return
    values = ", ".join(["NEW.id", "NEW.key", *(extract(c.name, c.kind, "postgresql", "NEW.metadata")
                                               for c in columns)])
    db.execute(f"""CREATE OR REPLACE FUNCTION {t}_sync() RETURNS trigger AS $$
BEGIN
  IF current_setting('{BULK_SETTING}', true) = 'on' THEN RETURN NULL; END IF;
  IF TG_OP = 'UPDATE' THEN DELETE FROM {t} WHERE node_id = OLD.id; END IF;
  IF NEW.parent = {ds} AND NEW.key NOT IN ({_RESERVED_SQL}) THEN
    INSERT INTO {t} ({cols}) VALUES ({values}) ON CONFLICT (node_id) DO NOTHING;
  END IF;
  RETURN NULL;
END; $$ LANGUAGE plpgsql""")
    db.execute(f"DROP TRIGGER IF EXISTS {t}_ai ON nodes")
    db.execute(f"DROP TRIGGER IF EXISTS {t}_au ON nodes")
    db.execute(f"CREATE TRIGGER {t}_ai AFTER INSERT ON nodes FOR EACH ROW WHEN (NEW.parent = {ds}) "
               f"EXECUTE FUNCTION {t}_sync()")
    db.execute(f"CREATE TRIGGER {t}_au AFTER UPDATE ON nodes FOR EACH ROW WHEN (OLD.parent = {ds} OR "
               f"NEW.parent = {ds}) EXECUTE FUNCTION {t}_sync()")


def drop_dataset(db: Database, dataset_id: int) -> None:
    """A dataset's parameter table and its triggers (its registry row goes with its node, by cascade)."""
    t = table_name(dataset_id)
    if db.dialect == "sqlite":
        for suffix in ("ai", "au"):
            db.execute(f"DROP TRIGGER IF EXISTS {t}_{suffix}")
    else:
        for suffix in ("ai", "au"):
            db.execute(f"DROP TRIGGER IF EXISTS {t}_{suffix} ON nodes")
        db.execute(f"DROP FUNCTION IF EXISTS {t}_sync()")
    db.execute(f"DROP TABLE IF EXISTS {t}")


def suspend_triggers(db: Database) -> Callable[[], None]:
    """Inside a bulk ingest's transaction, sweepcat's per-row triggers stand down (the ingest writes their
    rows itself and bumps the version once); the returned function restores them before commit."""
    if db.dialect == "postgresql":
        db.execute(f"SET LOCAL {BULK_SETTING} = 'on'")
        return lambda: db.execute(f"SET LOCAL {BULK_SETTING} = 'off'")
    ours = db.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'sweepcat\\_%' "
                    "ESCAPE '\\' AND tbl_name IN ('nodes', 'data_sources', 'data_source_asset_association', "
                    "'assets')")
    for name, _ in ours:
        db.execute(f'DROP TRIGGER "{name}"')

    def restore() -> None:
        for _, sql in ours:
            db.execute(sql)
    return restore


# --------------------------------------------------------------------------- reading


@dataclass
class ParamTable:
    """A dataset's parameters as numpy columns, rows in node-id (listing) order."""

    dataset_id: int
    version: int
    node_id: np.ndarray
    key: np.ndarray
    columns: dict[str, np.ndarray]  # parameter name -> values

    def __len__(self) -> int:
        return len(self.node_id)


def load(db: Database, reg: Registration) -> ParamTable:
    """Columns as numpy arrays; numbers converted in C (nulls become NaN), not row by row."""
    t = table_name(reg.dataset_id)
    numbers = [c for c in reg.columns if c.kind == NUMBER]
    texts = [c for c in reg.columns if c.kind == TEXT]
    nan = "'nan'" if db.dialect == "sqlite" else "'NaN'::float8"
    exprs = ["node_id", "key"] + [f"COALESCE({quote(c.column)}, {nan})" for c in numbers] + \
            [quote(c.column) for c in texts]
    rows = db.fetch(f"SELECT {', '.join(exprs)} FROM {t} ORDER BY node_id")
    columns_of = list(zip(*rows, strict=True)) if rows else [() for _ in exprs]
    node_id = np.asarray(columns_of[0], dtype=np.int64)
    key = np.asarray(columns_of[1], dtype=object)
    values: dict[str, np.ndarray] = {}
    for j, c in enumerate(numbers, start=2):
        values[c.name] = np.asarray(columns_of[j], dtype=np.float64)
    for j, c in enumerate(texts, start=2 + len(numbers)):
        values[c.name] = np.asarray(columns_of[j], dtype=object)
    return ParamTable(reg.dataset_id, reg.version, node_id, key, {c.name: values[c.name] for c in reg.columns})


def _kind_of_value(value: Any) -> str | None:
    if isinstance(value, (bool, int, float)):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    return None


def reindex(db: Database, dataset_id: int, dataset_key: str) -> tuple[int, list[str]]:
    """Rebuild a dataset's parameter table from the Hamiltonians' metadata: (rows, warnings).

    Never fails on what the metadata holds: a parameter whose values mix numbers and text across
    Hamiltonians is indexed as text, and said so."""
    rows = db.fetch(f"SELECT metadata FROM nodes WHERE parent = ? AND key NOT IN ({_RESERVED_SQL}) ORDER BY id",
                    dataset_id)
    if not rows:
        raise SweepcatError(f"dataset {dataset_key!r} has no Hamiltonians to index", "ingest or register it first")
    kinds: dict[str, set[str]] = {}
    for (md,) in rows:
        md = json.loads(md) if isinstance(md, str) else (md or {})
        for name, value in (md.items() if isinstance(md, dict) else ()):
            kind = _kind_of_value(value)
            if kind is not None and name != "key":
                kinds.setdefault(name, set()).add(kind)
    unnamable = {name: why for name in kinds if (why := parameter_name_problem(name))}
    wanted = {name: (TEXT if len(k) > 1 else next(iter(k))) for name, k in kinds.items() if name not in unnamable}
    warnings = [f"parameter {name!r} mixes numbers and text across Hamiltonians: indexed as text, so only "
                "its text values are searchable" for name, k in kinds.items() if len(k) > 1 and name in wanted]
    warnings += [f"metadata key {name!r} {why}: not indexed" for name, why in unnamable.items()]
    t = table_name(dataset_id)
    _ensure_registry(db)
    old = registration_by_id(db, dataset_id)
    db.execute(f"DROP TABLE IF EXISTS {t}")
    db.execute(f"DELETE FROM {REGISTRY} WHERE dataset_id = ?", dataset_id)
    columns = ensure_tables(db, dataset_id, dataset_key, wanted)
    if old is not None and old.root is not None:
        record_root(db, dataset_id, old.root)
    fill_from_nodes(db, dataset_id, columns)
    ensure_indexes(db, dataset_id, columns)
    bump(db, dataset_id)
    return len(rows), warnings


@dataclass
class Reindexed:
    key: str
    hamiltonians: int
    warnings: list[str]
    adopted: bool  # a dataset sweepcat had not registered (e.g. made by `register --stock`) is now its own


def reindex_catalog(cat: "CatalogURI", dataset: str | None = None, root: str | None = None) -> list[Reindexed]:
    """Rebuild the parameter index of one dataset (adopting it if sweepcat had not registered it) or of
    every registered one; one transaction per dataset."""
    import os

    from .db import connect
    from .schema import ensure_catalog

    ensure_catalog(cat, create=False)
    with connect(cat) as db:
        if dataset is None:
            targets = [(k, int(i), False) for k, i in db.fetch(
                f"SELECT n.key, n.id FROM {REGISTRY} r JOIN nodes n ON n.id = r.dataset_id WHERE n.parent = 0 "
                "ORDER BY n.id")] if registry_exists(db) else []
            if not targets:
                raise SweepcatError(f"no sweepcat datasets in {cat.display}", "name the dataset to adopt: "
                                    "`sweepcat reindex DATASET --root DIR`")
        else:
            row = db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", dataset)
            if not row:
                raise SweepcatError(f"no dataset {dataset!r} in {cat.display}", "check the key (`sweepcat datasets`)")
            targets = [(dataset, int(row[0][0]), registration_by_id(db, int(row[0][0])) is None)]
    if root is not None and not os.path.isdir(root):
        raise SweepcatError(f"--root {root}: not a directory", "pass the directory the dataset's files lie in")
    out = []
    for key, node_id, adopting in targets:
        with connect(cat) as db:
            db.begin()
            n, warnings = reindex(db, node_id, key)
            if root is not None:
                record_root(db, node_id, os.path.realpath(root))
            db.commit()
        out.append(Reindexed(key, n, warnings, adopting))
    return out
