"""Bulk ingest: manifests -> Tiled's catalog, in one transaction per dataset.

Layout written:

    /<DATASET>                  container: dataset metadata under "sweepcat"
    /<DATASET>/_axes/<name>     shared axes (whole 1-D datasets)
    /<DATASET>/<key>            container per Hamiltonian: huid + parameters
    /<DATASET>/<key>/<type>     array; data source -> (file, dataset, index)

Speed comes from writing rows column-wise with explicit ids and replacing
Tiled's per-row insert triggers (closure table, SQLite full-text index) by
set-wise statements that produce the same rows, inside the same transaction.
The triggers are restored before commit, so readers never see them missing.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import Manifests, asset_uri, validate
from ..errors import ContractError, SweepcatError
from ..h5open import Opener, session
from . import params
from .db import Database, connect
from .delete import delete_node_ids
from .plan import AXES_KEY, IngestPlan, build_plan, compact_json, structure_for
from .schema import MIMETYPE, CatalogURI, ensure_catalog, parse_catalog
from .verify import AxisInfo, read_axes, verify_against_files

Progress = Callable[[str], None]


@dataclass
class IngestResult:
    catalog: str
    dataset: str
    created_catalog: bool = False
    added_hamiltonians: int = 0
    added_artifacts: int = 0
    existing_hamiltonians: int = 0
    updated: int = 0
    pruned: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def nodes_written(self) -> int:
        return self.added_hamiltonians + self.added_artifacts

    def __str__(self) -> str:
        parts = [f"dataset {self.dataset!r} in {self.catalog}:",
                 f"{self.added_hamiltonians} Hamiltonians and {self.added_artifacts} artifacts added"]
        if self.existing_hamiltonians:
            parts.append(f"{self.existing_hamiltonians} already present")
        if self.updated:
            parts.append(f"{self.updated} updated")
        if self.pruned:
            parts.append(f"{self.pruned} pruned")
        rate = self.nodes_written / self.seconds if self.seconds else 0
        return " ".join(parts[:1]) + " " + ", ".join(parts[1:]) + f" in {self.seconds:.2f} s ({rate:,.0f} nodes/s)"


# --------------------------------------------------------------------------- entry point


def prepare(manifests: Manifests, *, verify_sample: int | None = 2000,
            progress: Callable[[int], None] | None = None,
            opener: Opener | None = None) -> tuple[IngestPlan, list[AxisInfo]]:
    """Validate manifests and check them against the files; nothing touches the catalog."""
    d = manifests.description
    problems = validate(manifests.ham, manifests.art, root=d.root, check_files_exist=True)
    if problems:
        raise ContractError(problems, subject=f"manifests of dataset {d.key!r}")
    missing = [c for c in ("shape", "dtype") if c not in manifests.art.column_names]
    if missing:
        raise SweepcatError(f"the artifacts manifest has no {' or '.join(missing)} column",
                            "regenerate it with `sweepcat manifest` (it records shape and dtype per artifact)")
    plan = build_plan(manifests)
    opener = opener or session([d.root])
    problems = verify_against_files(manifests.art, d.root, plan.types, sample=verify_sample, progress=progress,
                                    opener=opener)
    if problems:
        raise ContractError(problems, subject=f"files of dataset {d.key!r}")
    return plan, read_axes(plan.axes, d.root, opener)


def ingest(manifests: Manifests, catalog: str | CatalogURI | None = None, *, update: bool = False,
           prune: bool = False, verify_sample: int | None = 2000, progress: Progress | None = None,
           opener: Opener | None = None) -> IngestResult:
    """Write one dataset's manifests into a catalog: atomic, idempotent, incremental.

    Files are checked under ``opener``'s file rule (default: the dataset root; a server registering
    passes its readable storage)."""
    t0 = time.perf_counter()
    say = progress or (lambda _: None)
    cat = catalog if isinstance(catalog, CatalogURI) else parse_catalog(catalog)
    say("checking manifests against the HDF5 files")
    plan, axes = prepare(manifests, verify_sample=verify_sample, opener=opener)
    t_prep = time.perf_counter()
    say(f"opening catalog {cat.display}")
    created = ensure_catalog(cat)
    result = IngestResult(cat.display, plan.dataset_key, created_catalog=created)
    result.phases["prepare"] = t_prep - t0
    with connect(cat) as db:
        db.begin()
        try:
            _write(db, plan, axes, update=update, prune=prune, result=result, say=say)
            say("committing")
            db.commit()
        except BaseException:
            db.rollback()
            raise
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- writing


_INSERT_TRIGGER = re.compile(r"\b(AFTER|BEFORE)\s+INSERT\s+ON\s+(nodes|data_source_asset_association)\b", re.I)


def _sqlite_insert_triggers(db: Database) -> list[tuple[str, str]]:
    rows = db.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    return [(name, sql) for name, sql in rows if sql and _INSERT_TRIGGER.search(sql)]


_BULK_TABLES = ("nodes", "nodes_closure", "data_sources", "data_source_asset_association")


def _sqlite_secondary_indexes(db: Database) -> list[tuple[str, str]]:
    """Plain indexes (not constraints) of the tables a bulk ingest fills."""
    rows = db.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
                    f"({','.join('?' * len(_BULK_TABLES))})", *_BULK_TABLES)
    return [(name, sql) for name, sql in rows if not re.search(r"\bUNIQUE\b", sql, re.I)]


def _lock(db: Database) -> bool:
    """Serialise writers; True when per-row triggers may be switched off for this transaction."""
    if db.dialect == "sqlite":
        return True  # BEGIN IMMEDIATE already holds the write lock
    # EXCLUSIVE lets the server keep reading while no one else writes (ids below come from max(id)).
    db.execute("LOCK TABLE nodes, data_sources, assets, structures, data_source_asset_association IN EXCLUSIVE MODE")
    return bool(db.fetch("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0])


def _next_id(db: Database, table: str) -> int:
    return int(db.fetch(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")[0][0])


def _dataset_node(db: Database, plan: IngestPlan) -> tuple[int, dict[str, Any] | None]:
    row = db.fetch("SELECT id, metadata FROM nodes WHERE parent = 0 AND key = ?", plan.dataset_key)
    if row:
        md = row[0][1]
        return int(row[0][0]), (json.loads(md) if isinstance(md, str) else md)
    node_id = _next_id(db, "nodes")
    db.execute("INSERT INTO nodes (id, parent, key, structure_family, metadata, specs) VALUES (?, 0, ?, 'container', ?, '[]')",
               node_id, plan.dataset_key, compact_json(plan.dataset_metadata))
    return node_id, None


def _merge_parameter_ranges(new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    if not old:
        return new
    merged = dict(old.get("sweepcat", {}).get("parameters", {}))
    for name, entry in new.items():
        prev = merged.get(name)
        if prev and "min" in prev and "min" in entry and prev["min"] is not None and entry["min"] is not None:
            entry = {**entry, "min": min(prev["min"], entry["min"]), "max": max(prev["max"], entry["max"])}
        merged[name] = entry
    return merged


def _write(db: Database, plan: IngestPlan, axes: list[AxisInfo], *, update: bool, prune: bool,
           result: IngestResult, say: Progress) -> None:
    t = time.perf_counter()
    may_disable_triggers = _lock(db)
    ds_id, old_md = _dataset_node(db, plan)
    ds_ancestors = db.fetch("SELECT ancestor, depth FROM nodes_closure WHERE descendant = ? ORDER BY ancestor", ds_id)
    if old_md is None:  # a new dataset node: nothing below it yet
        existing: dict[str, int] = {}
    elif prune:
        existing = {k: int(i) for k, i in db.fetch("SELECT key, id FROM nodes WHERE parent = ?", ds_id)}
    else:  # only this batch's keys: re-sending a batch stays cheap however large the dataset
        existing = {k: int(i) for k, i in db.fetch_in("SELECT key, id FROM nodes WHERE parent = ? AND key IN ({})",
                                                      plan.ham_keys.to_pylist() + [AXES_KEY], ds_id)}
    axes_container = existing.pop(AXES_KEY, None)

    ham_keys = plan.ham_keys
    existing_keys = pa.array(list(existing), pa.string())
    present = np.asarray(pc.is_in(ham_keys, value_set=existing_keys).to_numpy(zero_copy_only=False), dtype=bool)
    result.existing_hamiltonians = int(present.sum())

    if prune:
        keep = set(ham_keys.to_pylist())
        stale = [i for k, i in existing.items() if k not in keep]
        if stale:
            say(f"pruning {len(stale)} Hamiltonians no longer in the manifest")
            delete_node_ids(db, stale)
        result.pruned = len(stale)

    ham_ids = np.full(len(ham_keys), -1, dtype=np.int64)
    if present.any():
        pos = pc.index_in(ham_keys, value_set=existing_keys).to_numpy(zero_copy_only=False)
        existing_ids = np.fromiter(existing.values(), dtype=np.int64, count=len(existing))
        ham_ids[present] = existing_ids[np.asarray(pos[present], dtype=np.int64)]
        if update:
            result.updated = _update_metadata(db, ham_ids[present], plan.ham_metadata.filter(pa.array(present)))

    # ---- allocate ids for everything new
    next_node = _next_id(db, "nodes")
    level2_start = next_node
    new_containers: list[tuple[int, int, str, str]] = []  # (id, parent, key, metadata)
    new_ham = np.flatnonzero(~present)
    ham_ids[new_ham] = np.arange(next_node, next_node + len(new_ham))
    next_node += len(new_ham)
    if axes and axes_container is None:
        # After the Hamiltonians: listings go by id, so `values().first()` is a Hamiltonian.
        axes_container = next_node
        new_containers.append((axes_container, ds_id, AXES_KEY, "{}"))
        next_node += 1
    level3_start = next_node

    art_parent_ids = ham_ids[plan.art_parent]
    art_new = _new_artifacts(db, plan, art_parent_ids, present)
    n_art = int(art_new.sum())
    art_ids = np.arange(next_node, next_node + n_art)
    next_node += n_art
    axis_rows = _new_axes(db, axes, axes_container, existing_container=not new_containers)
    axis_ids = np.arange(next_node, next_node + len(axis_rows))
    next_node += len(axis_rows)
    result.phases["plan"] = time.perf_counter() - t

    # ---- bulk insert with per-row triggers replaced by set-wise statements
    t = time.perf_counter()
    triggers: list[tuple[str, str]] = []
    indexes: list[tuple[str, str]] = []
    if may_disable_triggers:
        if db.dialect == "sqlite":
            triggers = _sqlite_insert_triggers(db)
            for name, _sql in triggers:
                db.execute(f'DROP TRIGGER "{name}"')
            # Bulk load: an index built after the rows are in is sorted once and packed; one
            # maintained row by row is slower and half empty. Worth it when the load is large.
            if next_node - level2_start >= level2_start // 2:
                indexes = _sqlite_secondary_indexes(db)
                for name, _sql in indexes:
                    db.execute(f'DROP INDEX "{name}"')
        else:
            db.execute("SET LOCAL session_replication_role = replica")
    if db.dialect == "postgresql":
        # Tiled's GIN indexes on metadata flush their pending list every 4 MB by default;
        # for a bulk load, fewer and larger flushes with room to sort are much cheaper.
        db.execute("SET LOCAL work_mem = '256MB'")
        db.execute("SET LOCAL maintenance_work_mem = '512MB'")
        db.execute("SET LOCAL gin_pending_list_limit = '256MB'")

    say(f"writing {len(new_ham)} Hamiltonians and {n_art} artifacts")
    node_cols = ("id", "parent", "key", "structure_family", "metadata", "specs")
    if new_containers:
        db.copy("nodes", node_cols, [(i, p, k, "container", m, "[]") for i, p, k, m in new_containers])
    if len(new_ham):
        sel = pa.array(new_ham)
        db.copy("nodes", ("id", "key", "metadata"), list(zip(
            ham_ids[new_ham].tolist(), ham_keys.take(sel).to_pylist(), plan.ham_metadata.take(sel).to_pylist())),
            constants={"parent": ds_id, "structure_family": "container", "specs": "[]"})
    art_sel = pa.array(np.flatnonzero(art_new))
    if n_art:
        db.copy("nodes", ("id", "parent", "key", "metadata"), list(zip(
            art_ids.tolist(), art_parent_ids[art_new].tolist(), plan.art_type.take(art_sel).to_pylist(),
            plan.art_metadata.take(art_sel).to_pylist())), constants={"structure_family": "array", "specs": "[]"})
    if axis_rows:
        db.copy("nodes", node_cols, [(int(i), axes_container, a.name, "array", "{}", "[]")
                                     for i, a in zip(axis_ids, axis_rows)])
    result.phases["nodes"] = time.perf_counter() - t

    t = time.perf_counter()
    _data_sources(db, plan, art_ids, art_sel, axis_ids, axis_rows)
    result.phases["data_sources"] = time.perf_counter() - t

    t = time.perf_counter()
    if may_disable_triggers:
        # Exactly the rows Tiled's trigger writes: (self, self, 0), and for every ancestor A of
        # the parent at depth d, (A, node, d + 1). New nodes sit at two levels below the dataset
        # node, whose own ancestors are known, so each row set is a plain range scan.
        last = next_node - 1
        for lo, hi, below_ds in ((level2_start, level3_start - 1, 1), (level3_start, last, 2)):
            if hi < lo:
                continue
            for ancestor, depth in ds_ancestors:
                db.execute("INSERT INTO nodes_closure (ancestor, descendant, depth) "
                           "SELECT ?, id, ? FROM nodes WHERE id BETWEEN ? AND ?", ancestor, depth + below_ds, lo, hi)
            if below_ds == 2:
                db.execute("INSERT INTO nodes_closure (ancestor, descendant, depth) "
                           "SELECT parent, id, 1 FROM nodes WHERE id BETWEEN ? AND ? ORDER BY parent, id", lo, hi)
            db.execute("INSERT INTO nodes_closure (ancestor, descendant, depth) "
                       "SELECT id, id, 0 FROM nodes WHERE id BETWEEN ? AND ?", lo, hi)
        if db.dialect == "sqlite":
            if last >= level2_start:
                db.execute("INSERT INTO metadata_fts5 (rowid, metadata) SELECT id, metadata FROM nodes "
                           "WHERE id BETWEEN ? AND ?", level2_start, last)
            for _name, sql in triggers + indexes:
                db.execute(sql)
        else:
            db.execute("SET LOCAL session_replication_role = origin")
    if db.dialect == "postgresql":
        for table in ("nodes", "data_sources", "assets"):
            db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                       f"(SELECT COALESCE(MAX(id), 1) FROM {table}))")
    result.phases["closure_fts"] = time.perf_counter() - t

    t = time.perf_counter()
    columns = params.ensure_tables(db, ds_id, plan.dataset_key, params.searchable_columns(plan.ham, db.dialect))
    params.record_root(db, ds_id, plan.root)
    params.write_rows(db, ds_id, ham_ids[new_ham], plan.ham.take(pa.array(new_ham)), columns)
    if update and present.any():
        where = np.flatnonzero(present)
        params.write_rows(db, ds_id, ham_ids[where], plan.ham.take(pa.array(where)), columns, upsert=True)
    params.ensure_indexes(db, ds_id, columns)
    if len(new_ham) or n_art or result.updated or result.pruned or not old_md:
        params.bump(db, ds_id)
    result.phases["parameters"] = time.perf_counter() - t

    result.added_hamiltonians = len(new_ham)
    result.added_artifacts = n_art
    _finish_dataset(db, plan, ds_id, old_md, prune)


def _update_metadata(db: Database, ids: np.ndarray, metadata: pa.Array) -> int:
    current = {int(i): (json.loads(m) if isinstance(m, str) else m)
               for i, m in db.fetch_in("SELECT id, metadata FROM nodes WHERE id IN ({})", ids.tolist())}
    changed = [(m, int(i)) for i, m in zip(ids.tolist(), metadata.to_pylist()) if current.get(int(i)) != json.loads(m)]
    if changed:
        db.executemany("UPDATE nodes SET metadata = ?, time_updated = CURRENT_TIMESTAMP WHERE id = ?", changed)
    return len(changed)


def _new_artifacts(db: Database, plan: IngestPlan, parent_ids: np.ndarray,
                   ham_present: np.ndarray) -> np.ndarray:
    """Mask of artifact rows not yet in the catalog (new Hamiltonian, or a type it lacks)."""
    n = len(plan.art_type)
    new = np.ones(n, dtype=bool)
    under_existing = ham_present[plan.art_parent]
    if not under_existing.any():
        return new
    parents = np.unique(parent_ids[under_existing]).tolist()
    rows = db.fetch_in("SELECT parent, key FROM nodes WHERE parent IN ({})", parents)
    have = pa.array([f"{p}/{k}" for p, k in rows], pa.string())
    mine = pc.binary_join_element_wise(pc.cast(pa.array(parent_ids), pa.string()), plan.art_type, "/")
    found = np.asarray(pc.is_in(mine, value_set=have).to_numpy(zero_copy_only=False), dtype=bool)
    return ~found


def _new_axes(db: Database, axes: list[AxisInfo], container: int | None, existing_container: bool) -> list[AxisInfo]:
    if not axes or container is None:
        return []
    have = set()
    if existing_container:
        have = {k for (k,) in db.fetch("SELECT key FROM nodes WHERE parent = ?", container)}
    return [a for a in axes if a.name not in have]


def _asset_ids(db: Database, uris: list[str]) -> dict[str, int]:
    found = {u: int(i) for i, u in db.fetch_in("SELECT id, data_uri FROM assets WHERE data_uri IN ({})", uris)}
    missing = [u for u in uris if u not in found]
    if missing:
        start = _next_id(db, "assets")
        rows = [(start + k, u, False) for k, u in enumerate(missing)]
        db.copy("assets", ("id", "data_uri", "is_directory"), rows)
        found.update({u: i for i, u, _ in rows})
    return found


def _data_sources(db: Database, plan: IngestPlan, art_ids: np.ndarray, art_sel: pa.Array,
                  axis_ids: np.ndarray, axis_rows: list[AxisInfo]) -> None:
    n_art = len(art_ids)
    axis_structs = {a.name: structure_for(a.shape, a.dtype, None) for a in axis_rows}
    structures = {t.structure_id: t.structure for t in plan.types.values()}
    structures.update({sid: s for sid, s in axis_structs.values()})
    if not n_art and not axis_rows:
        return
    conflict = "ON CONFLICT (id) DO NOTHING"
    db.executemany(f"INSERT INTO structures (id, structure) VALUES (?, ?) {conflict}",
                   [(sid, compact_json(s)) for sid, s in structures.items()])

    files = plan.art_file.take(art_sel) if n_art else pa.array([], pa.string())
    unique_files = pc.unique(files).to_pylist() + [a.file for a in axis_rows]
    root = plan.root.rstrip("/")
    uri_of = {f: asset_uri(f"{root}/{f}") for f in unique_files}
    asset_of = _asset_ids(db, sorted(set(uri_of.values())))
    file_asset = pa.array([asset_of[uri_of[f]] for f in pc.unique(files).to_pylist()], pa.int64())
    asset_ids = pc.take(file_asset, pc.index_in(files, value_set=pc.unique(files))) if n_art else pa.array([], pa.int64())

    types = plan.art_type.take(art_sel) if n_art else pa.array([], pa.string())
    type_names = list(plan.types)
    sid_by_type = pa.array([plan.types[t].structure_id for t in type_names], pa.string())
    structure_ids = pc.take(sid_by_type, pc.index_in(types, value_set=pa.array(type_names, pa.string())))

    ds_start = _next_id(db, "data_sources")
    ds_ids = np.arange(ds_start, ds_start + n_art)
    ds_cols = ("id", "node_id", "structure_id", "mimetype", "parameters", "properties", "management",
               "structure_family")
    if n_art:
        db.copy("data_sources", ("id", "node_id", "structure_id", "parameters"), list(zip(
            ds_ids.tolist(), art_ids.tolist(), structure_ids.to_pylist(), plan.art_parameters.take(art_sel).to_pylist())),
            constants={"mimetype": MIMETYPE, "properties": "{}", "management": "external", "structure_family": "array"})
        db.copy("data_source_asset_association", ("data_source_id", "asset_id"),
                list(zip(ds_ids.tolist(), asset_ids.to_pylist())), constants={"parameter": "data_uri", "num": None})
    if axis_rows:
        ax_start = ds_start + n_art
        db.copy("data_sources", ds_cols, [
            (ax_start + k, int(node), axis_structs[a.name][0], MIMETYPE, compact_json({"dataset": a.dataset}), "{}",
             "external", "array") for k, (node, a) in enumerate(zip(axis_ids, axis_rows))])
        db.copy("data_source_asset_association", ("data_source_id", "asset_id", "parameter", "num"),
                [(ax_start + k, asset_of[uri_of[a.file]], "data_uri", None) for k, a in enumerate(axis_rows)])


def _finish_dataset(db: Database, plan: IngestPlan, ds_id: int, old_md: dict[str, Any] | None, prune: bool) -> None:
    """Dataset metadata: parameter ranges (merged unless pruning), artifact types, provenance, counts."""
    md = json.loads(compact_json(plan.dataset_metadata))
    sc = md["sweepcat"]
    if not prune:
        sc["parameters"] = _merge_parameter_ranges(sc["parameters"], old_md)
    n_ham = db.fetch("SELECT COUNT(*) FROM nodes WHERE parent = ? AND key != ?", ds_id, AXES_KEY)[0][0]
    n_art = db.fetch("SELECT COUNT(*) FROM nodes n JOIN nodes p ON n.parent = p.id "
                     "WHERE p.parent = ? AND p.key != ?", ds_id, AXES_KEY)[0][0]
    sc["provenance"]["catalog_counts"] = {"hamiltonians": int(n_ham), "artifacts": int(n_art)}
    if old_md is not None:
        if old_md.get("sweepcat", {}).get("artifacts"):
            sc["artifacts"] = {**old_md["sweepcat"]["artifacts"], **sc["artifacts"]}
        db.execute("UPDATE nodes SET metadata = ?, time_updated = CURRENT_TIMESTAMP WHERE id = ?",
                   compact_json(md), ds_id)
    else:
        db.execute("UPDATE nodes SET metadata = ? WHERE id = ?", compact_json(md), ds_id)
