"""Bulk ingest: manifests -> Tiled's catalog, in one transaction per dataset, in bounded memory.

Layout written:

    /<DATASET>                    container: dataset metadata under "sweepcat"
    /<DATASET>/<key>              container per Hamiltonian: huid + parameters
    /<DATASET>/<key>/<type>       array; data source -> (file, dataset, index)
    /_axes/<DATASET>/<name>       the dataset's shared axes (whole 1-D datasets)

Two passes over the manifests, each in batches of rows. The first checks the whole contract
(``ManifestChecker``: hashes, not rows, are kept), sums up parameters and artifact types, and
opens a sample of the HDF5 files under the file rule; nothing is written if anything is wrong.
The second writes, inside one transaction: Hamiltonians batch by batch, then artifacts (their
parents found through the first pass's hash index), so memory holds a batch and a few bytes per
row. Killed at any point, the catalog stays as it was.

Speed comes from writing rows column-wise with explicit ids and replacing Tiled's two per-row
insert triggers that only derive rows (closure table, SQLite full-text index) by set-wise
statements writing the same rows; Tiled's integrity triggers stay on (SQLite), or, where
PostgreSQL's replica role switches every trigger and foreign key off, the same checks run
set-wise before commit. The catalog's triggers must be exactly those sweepcat knows.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import AXES_KEY, ManifestChecker, Manifests, asset_uri, hash64, key_problem
from ..errors import ContractError, SweepcatError
from ..h5open import FileRefused, FileRule, Opener
from . import params
from .db import WRITE_WAIT, Database, connect
from .delete import count_children, delete_node_ids
from .plan import (
    ParameterSummary,
    TypePlan,
    artifact_metadata,
    compact_json,
    data_source_parameters,
    dataset_metadata,
    first_of_each_type,
    hamiltonian_metadata,
    merged_range,
    provenance,
    structure_for,
    summary_of,
    type_plan,
)
from .schema import MIMETYPE, REPLACED_TRIGGERS, CatalogURI, check_triggers, ensure_catalog, parse_catalog
from .verify import AxisInfo, FileSample, read_axes, verify_sample

Progress = Callable[[str, int, int], None]  # (phase, done, total): phases in PHASES order
PHASES = ("checking", "verifying files", "locking", "hamiltonians", "artifacts", "indexing", "committing")
BATCH_ROWS = 65_536


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


# --------------------------------------------------------------------------- pass 1: check


@dataclass
class Survey:
    """What the first pass learned: enough to write without holding the manifests in memory."""

    manifests: Manifests
    n_ham: int
    n_art: int
    types: dict[str, TypePlan]
    parameters: dict[str, dict[str, Any]]
    kinds: dict[str, str]  # parameter name -> number | text (searchable ones)
    huid_hashes: np.ndarray  # sorted
    huid_rows: np.ndarray  # the Hamiltonian row of each sorted hash
    key_hashes: np.ndarray  # sorted
    axes: list[AxisInfo]
    real_root: str  # the data root resolved once: what is checked, verified against and recorded

    @property
    def key(self) -> str:
        return self.manifests.description.key

    @property
    def root(self) -> str:
        return self.manifests.description.root

    def ham_rows_of(self, huids: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """The Hamiltonian row of each huid (every one is known: the contract was checked)."""
        return self.huid_rows[np.searchsorted(self.huid_hashes, hash64(huids))]


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_holds_nul(v) for v in value)
    return False


def prepare(manifests: Manifests, *, verify_sample_files: int | None = 2000, opener: Opener | None = None,
            progress: Progress | None = None, batch_rows: int = BATCH_ROWS, within: FileRule | None = None) -> Survey:
    """The first pass: every contract rule, the files' headers (a sample), the summary. Writes nothing.

    The data root is resolved once, here; with ``within`` (a server's readable storage) that one real
    path must lie inside it, and it is the path the files are verified under and the one recorded."""
    say = progress or (lambda *_: None)
    d = manifests.description
    why = key_problem(d.key)
    if why:
        raise SweepcatError(f"dataset key {d.key!r} cannot name a dataset: it {why}",
                            "choose another label (--label) or `key:` in the spec")
    if _holds_nul(d.metadata):
        raise SweepcatError(f"the description of dataset {d.key!r} holds a NUL character (U+0000) in its metadata, "
                            "which the catalog's JSON cannot store", "remove it from the spec's metadata")
    real_root = os.path.realpath(d.root)
    if within is not None and not within.contains(real_root):
        raise FileRefused(d.root, f"the dataset root lies outside this server's {within.what} "
                                  f"({', '.join(within.roots) or 'none'})",
                          "ask the operator to add a directory that holds it (sweepcat serve --readable DIR)")
    n_ham, n_art = manifests.num_ham, manifests.num_art
    checker = ManifestChecker(root=d.root, check_files_exist=True, value_at=manifests.value_at)
    summary = ParameterSummary()
    schema = None
    done = 0
    for batch in manifests.ham_batches(batch_rows):
        schema = batch.schema
        checker.add_ham(batch)
        summary.add(batch)
        done += batch.num_rows
        say("checking", done, n_ham + n_art)
    firsts: dict[str, dict[str, Any]] = {}
    sample = FileSample(verify_sample_files)
    art_columns: list[str] = []
    for batch in manifests.art_batches(batch_rows):
        art_columns = batch.column_names
        checker.add_art(batch)
        if checker.art_schema_ok:
            for name, first in first_of_each_type(batch).items():
                firsts.setdefault(name, first)
            sample.add(batch)
        done += batch.num_rows
        say("checking", done, n_ham + n_art)
    problems = checker.problems()
    if problems:
        raise ContractError(problems, subject=f"manifests of dataset {d.key!r}")
    missing = [c for c in ("shape", "dtype") if c not in art_columns]
    if missing:
        raise SweepcatError(f"the artifacts manifest has no {' or '.join(missing)} column",
                            "regenerate it with `sweepcat manifest` (it records shape and dtype per artifact)")
    types = {name: type_plan(name, f["dataset"], f["shape"], f["dtype"], f["axes"]) for name, f in firsts.items()}
    opener = opener or Opener(FileRule.of([real_root], "the dataset root"))
    files = len(sample.groups)
    say("verifying files", 0, files)
    done_files = [0]

    def advance(n: int) -> None:
        done_files[0] += n
        say("verifying files", done_files[0], files)

    problems = verify_sample(sample, d.root, types, progress=advance, opener=opener)
    if problems:
        raise ContractError(problems, subject=f"files of dataset {d.key!r}")
    huid_hashes, huid_rows = checker.hash_index("huid")
    key_hashes, _ = checker.hash_index("key")
    return Survey(manifests, n_ham, n_art, types, summary.entries,
                  params.searchable_columns(schema) if schema is not None else {}, huid_hashes, huid_rows,
                  key_hashes, read_axes(d.shared_axes, d.root, opener), real_root)


# --------------------------------------------------------------------------- entry point


def ingest(manifests: Manifests, catalog: str | CatalogURI | None = None, *, update: bool = False,
           prune: bool = False, move_root: bool = False, verify_sample: int | None = 2000,
           progress: Progress | None = None, opener: Opener | None = None,
           batch_rows: int = BATCH_ROWS, root_rule: FileRule | None = None,
           wait: float = WRITE_WAIT) -> IngestResult:
    """Write one dataset's manifests into a catalog: atomic, idempotent, incremental, bounded in memory.

    Files are checked under ``opener``'s file rule (default: the dataset root). A dataset's recorded
    data root changes only with ``move_root`` (its files are checked like a new dataset's). With
    ``root_rule`` (a server's readable storage), the root must lie inside it. Another writer's lock is
    waited for ``wait`` seconds, then refused naming it (``CatalogBusy``)."""
    t0 = time.perf_counter()
    say = progress or (lambda *_: None)
    cat = catalog if isinstance(catalog, CatalogURI) else parse_catalog(catalog)
    survey = prepare(manifests, verify_sample_files=verify_sample, opener=opener, progress=say,
                     batch_rows=batch_rows, within=root_rule)
    t_prep = time.perf_counter()
    say("locking", 0, 1)
    created = ensure_catalog(cat)
    result = IngestResult(cat.display, survey.key, created_catalog=created)
    result.phases["prepare"] = t_prep - t0
    with connect(cat) as db:
        db.begin(wait)
        try:
            _Writer(db, survey, result, update=update, prune=prune, move_root=move_root, say=say,
                    batch_rows=batch_rows, wait=wait).run()
            say("committing", 0, 1)
            t = time.perf_counter()
            db.commit()
            result.phases["commit"] = time.perf_counter() - t
        except BaseException:
            db.rollback()
            raise
    result.seconds = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- pass 2: write


def _next_id(db: Database, table: str) -> int:
    return int(db.fetch(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")[0][0])


def _md(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value or {})


def _mask_valid(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)


_BULK_TABLES = ("nodes", "nodes_closure", "data_sources", "data_source_asset_association")


class _Writer:
    """The second pass, inside the caller's transaction."""

    def __init__(self, db: Database, survey: Survey, result: IngestResult, *, update: bool, prune: bool,
                 move_root: bool, say: Progress, batch_rows: int, wait: float = WRITE_WAIT):
        self.db, self.s, self.result = db, survey, result
        self.update, self.prune, self.move_root = update, prune, move_root
        self.say, self.batch_rows, self.wait = say, batch_rows, wait
        self.ham_ids = np.zeros(survey.n_ham, dtype=np.int64)
        self.ham_new = np.zeros(survey.n_ham, dtype=bool)

    # ---- the dataset node: whose it is, where its data lives

    def _dataset_node(self) -> tuple[int, dict[str, Any] | None]:
        db, key = self.db, self.s.key
        row = db.fetch("SELECT id, metadata FROM nodes WHERE parent = 0 AND key = ?", key)
        if not row:
            node_id = _next_id(db, "nodes")
            db.execute("INSERT INTO nodes (id, parent, key, structure_family, metadata, specs) "
                       "VALUES (?, 0, ?, 'container', '{}', '[]')", node_id, key)
            return node_id, None
        node_id, md = int(row[0][0]), _md(row[0][1])
        reg = params.registration_by_id(db, node_id)
        if reg is None:
            raise SweepcatError(
                f"a top-level node {key!r} already exists, and sweepcat did not create it (metadata keys: "
                f"{', '.join(sorted(md)[:8]) or 'none'}); sweepcat never writes into nodes it does not own",
                "ingest under another key (--label NEW); if sweepcat's own `register --stock` made it, adopt it "
                f"first with `sweepcat reindex {key} --catalog ...`")
        if reg.root is not None and reg.root != self.s.real_root and not self.move_root:
            raise SweepcatError(
                f"dataset {key!r} was ingested from {reg.root}; these manifests say its data lives in {self.s.root}",
                "a dataset's data root changes only on request: pass --move-root (every file is checked in the new "
                "root, as for a new dataset), or ingest under another key (--label NEW)")
        return node_id, md

    def _axes_root(self) -> int:
        """The top-level container of shared axes, created by sweepcat (and recorded as its own)."""
        db = self.db
        row = db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", AXES_KEY)
        recorded = params.owned_node(db, AXES_KEY)
        if row and recorded != int(row[0][0]):
            raise SweepcatError(f"a top-level node {AXES_KEY!r} exists that sweepcat did not create; the name is "
                                "reserved for the datasets' shared axes", f"rename or delete that {AXES_KEY!r} node")
        if row:
            return int(row[0][0])
        node_id = _next_id(db, "nodes")
        db.execute("INSERT INTO nodes (id, parent, key, structure_family, metadata, specs) "
                   "VALUES (?, 0, ?, 'container', ?, '[]')", node_id, AXES_KEY,
                   compact_json({"sweepcat": {"kind": "shared axes"}}))
        params.own(db, node_id, AXES_KEY)
        return node_id

    # ---- the run

    def run(self) -> None:
        db, s, result = self.db, self.s, self.result
        t = time.perf_counter()
        check_triggers(db)
        replica = self._lock()
        self.ds_id, self.old_md = self._dataset_node()
        self.ds_existed = self.old_md is not None
        self.ds_ancestors = db.fetch("SELECT ancestor, depth FROM nodes_closure WHERE descendant = ? "
                                     "ORDER BY ancestor", self.ds_id)
        if not self.ds_ancestors:  # a dataset node made just now: Tiled's closure trigger wrote its rows
            raise SweepcatError(f"dataset node {s.key!r} has no closure rows", "the catalog is damaged: run "
                                "`sweepcat delete` on it, or restore the catalog")
        self.columns = params.ensure_tables(db, self.ds_id, s.key, s.kinds)
        params.record_root(db, self.ds_id, s.real_root)  # resolved once, in prepare: what was checked
        legacy_axes = db.fetch("SELECT id FROM nodes WHERE parent = ? AND key = ?", self.ds_id, AXES_KEY) \
            if self.ds_existed else []
        # Deletes first, while every trigger and foreign key acts (PostgreSQL's replica role would also
        # switch off the ON DELETE CASCADE that removes what lies below a node).
        if legacy_axes:  # axes lived inside the dataset before: they move to /_axes/<DATASET>
            delete_node_ids(db, [int(legacy_axes[0][0])])
        if self.prune:
            self._prune()
        restore_ours = params.suspend_triggers(db)
        restore_tiled, indexes = self._suspend_tiled_triggers(replica)
        self.node_lo = self.next_node = _next_id(db, "nodes")
        self.ds_next = _next_id(db, "data_sources")
        result.phases["plan"] = time.perf_counter() - t

        t = time.perf_counter()
        offset = 0
        for batch in s.manifests.ham_batches(self.batch_rows):
            self._hamiltonians(batch, offset)
            offset += batch.num_rows
            self.say("hamiltonians", offset, s.n_ham)
        self.level3_lo = self.next_node
        result.phases["hamiltonians"] = time.perf_counter() - t

        t = time.perf_counter()
        db.executemany("INSERT INTO structures (id, structure) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                       [(p.structure_id, compact_json(p.structure)) for p in s.types.values()])
        done = 0
        for batch in s.manifests.art_batches(self.batch_rows):
            self._artifacts(batch)
            done += batch.num_rows
            self.say("artifacts", done, s.n_art)
        result.phases["artifacts"] = time.perf_counter() - t

        t = time.perf_counter()
        self.say("indexing", 0, 1)
        last = self.next_node - 1
        if replica:
            self._derived_rows(last)
        params.ensure_indexes(db, self.ds_id, self.columns)
        for sql in indexes:
            db.execute(sql)
        if replica and db.dialect == "postgresql":
            self._check_set_wise(last)
        restore_tiled()
        restore_ours()
        self._axes()
        if db.dialect == "postgresql":
            for table in ("nodes", "data_sources", "assets"):
                db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"(SELECT COALESCE(MAX(id), 1) FROM {table}))")
        params.bump(db, self.ds_id)
        self._finish()
        result.phases["indexing"] = time.perf_counter() - t

    def _lock(self) -> bool:
        """Serialise writers; True when Tiled's per-row triggers may be replaced for this transaction."""
        db = self.db
        db.lock_for_bulk(self.wait)
        if db.dialect == "sqlite":
            return True
        return bool(db.fetch("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0])

    def _suspend_tiled_triggers(self, replica: bool) -> tuple[Callable[[], None], list[str]]:
        """Tiled's row-deriving insert triggers stand down; returns (restore, index definitions to rebuild)."""
        db = self.db
        if db.dialect == "postgresql":
            if not replica:
                return (lambda: None), []
            db.execute("SET LOCAL session_replication_role = replica")
            # Tiled's GIN indexes on metadata flush their pending list every 4 MB by default;
            # for a bulk load, fewer and larger flushes with room to sort are much cheaper.
            db.execute("SET LOCAL work_mem = '256MB'")
            db.execute("SET LOCAL maintenance_work_mem = '512MB'")
            db.execute("SET LOCAL gin_pending_list_limit = '256MB'")
            return (lambda: db.execute("SET LOCAL session_replication_role = origin")), []
        replaced = [(n, sql) for n, sql in db.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
                    if n in REPLACED_TRIGGERS["sqlite"]]
        for name, _ in replaced:
            db.execute(f'DROP TRIGGER "{name}"')
        indexes: list[str] = []
        # An index built after the rows are in is sorted once and packed; one maintained row by row is
        # slower and half empty. Worth it when the load is large next to what is there.
        existing = int(db.fetch("SELECT COALESCE(MAX(id), 0) FROM nodes")[0][0])
        if self.s.n_ham + self.s.n_art >= existing // 2:
            rows = db.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND "
                            f"tbl_name IN ({','.join('?' * len(_BULK_TABLES))})", *_BULK_TABLES)
            for name, sql in rows:
                if "UNIQUE" not in sql.upper():
                    db.execute(f'DROP INDEX "{name}"')
                    indexes.append(sql)

        def restore() -> None:
            for _, sql in replaced:
                db.execute(sql)
        return restore, indexes

    def _prune(self) -> None:
        rows = self.db.fetch("SELECT key, id FROM nodes WHERE parent = ?", self.ds_id)
        if not rows:
            return
        keys = pa.array([k for k, _ in rows], pa.string())
        known = np.isin(hash64(keys), self.s.key_hashes)
        stale = [int(i) for (_, i), k in zip(rows, known, strict=True) if not k]
        if stale:
            self.say("hamiltonians", 0, self.s.n_ham)
            delete_node_ids(self.db, stale)
        self.result.pruned = len(stale)

    # ---- Hamiltonians

    def _hamiltonians(self, batch: pa.Table, offset: int) -> None:
        db, n = self.db, batch.num_rows
        keys = batch.column("key")
        ids = np.zeros(n, dtype=np.int64)
        present = np.zeros(n, dtype=bool)
        if self.ds_existed and n:
            found = dict(db.fetch_in("SELECT key, id FROM nodes WHERE parent = ? AND key IN ({})", keys.to_pylist(),
                                     self.ds_id))
            if found:
                at = pc.index_in(keys, value_set=pa.array(list(found), pa.string()))
                present = _mask_valid(at)
                found_ids = np.fromiter(found.values(), dtype=np.int64, count=len(found))
                ids[present] = found_ids[np.asarray(pc.drop_null(at).to_numpy(), dtype=np.int64)]
        new = np.flatnonzero(~present)
        ids[new] = np.arange(self.next_node, self.next_node + len(new))
        self.next_node += len(new)
        self.ham_ids[offset:offset + n] = ids
        self.ham_new[offset:offset + n] = ~present
        if len(new):
            part = batch.take(pa.array(new))
            db.copy("nodes", ("id", "key", "metadata"),
                    list(zip(ids[new].tolist(), part.column("key").to_pylist(),
                             hamiltonian_metadata(part).to_pylist(), strict=True)),
                    constants={"parent": self.ds_id, "structure_family": "container", "specs": "[]"})
            params.write_rows(db, self.ds_id, ids[new], part, self.columns)
        if present.any():
            self.result.existing_hamiltonians += int(present.sum())
            if self.update:
                old = np.flatnonzero(present)
                part = batch.take(pa.array(old))
                self.result.updated += self._update_metadata(ids[old], hamiltonian_metadata(part))
                params.write_rows(db, self.ds_id, ids[old], part, self.columns, upsert=True)
        self.result.added_hamiltonians += len(new)

    def _update_metadata(self, ids: np.ndarray, metadata: pa.Array) -> int:
        current = {int(i): _md(m) for i, m in self.db.fetch_in("SELECT id, metadata FROM nodes WHERE id IN ({})",
                                                               ids.tolist())}
        changed = [(m, int(i)) for i, m in zip(ids.tolist(), metadata.to_pylist(), strict=True)
                   if current.get(int(i)) != json.loads(m)]
        if changed:
            self.db.executemany("UPDATE nodes SET metadata = ?, time_updated = CURRENT_TIMESTAMP WHERE id = ?", changed)
        return len(changed)

    # ---- artifacts

    def _artifacts(self, batch: pa.Table) -> None:
        db, s = self.db, self.s
        rows = s.ham_rows_of(batch.column("huid"))
        parents = self.ham_ids[rows]
        new = self.ham_new[rows].copy()
        if (~new).any():  # artifacts of Hamiltonians already in: only the types they lack
            old_parents = np.unique(parents[~new]).tolist()
            have = pa.array([f"{p}/{k}" for p, k in db.fetch_in("SELECT parent, key FROM nodes WHERE parent IN ({})",
                                                                old_parents)], pa.string())
            mine = pc.binary_join_element_wise(pc.cast(pa.array(parents), pa.string()), batch.column("type"), "/")
            new |= ~np.asarray(pc.is_in(mine, value_set=have).to_numpy(zero_copy_only=False), dtype=bool)
        sel = np.flatnonzero(new)
        if not len(sel):
            return
        part = batch.take(pa.array(sel))
        n = len(sel)
        art_ids = np.arange(self.next_node, self.next_node + n)
        self.next_node += n
        types = part.column("type")
        db.copy("nodes", ("id", "parent", "key", "metadata"),
                list(zip(art_ids.tolist(), parents[sel].tolist(), types.to_pylist(),
                         artifact_metadata(part).to_pylist(), strict=True)),
                constants={"structure_family": "array", "specs": "[]"})
        names = list(s.types)
        sid_of = pa.array([s.types[t].structure_id for t in names], pa.string())
        structure_ids = pc.take(sid_of, pc.index_in(types, value_set=pa.array(names, pa.string())))
        files = part.column("file")
        unique_files = pc.unique(files)
        root = s.root.rstrip("/")
        asset_of = self._asset_ids([asset_uri(f"{root}/{f}") for f in unique_files.to_pylist()])
        asset_ids = pc.take(pa.array(asset_of, pa.int64()), pc.index_in(files, value_set=unique_files))
        ds_ids = np.arange(self.ds_next, self.ds_next + n)
        self.ds_next += n
        db.copy("data_sources", ("id", "node_id", "structure_id", "parameters"),
                list(zip(ds_ids.tolist(), art_ids.tolist(), structure_ids.to_pylist(),
                         data_source_parameters(part).to_pylist(), strict=True)),
                constants={"mimetype": MIMETYPE, "properties": "{}", "management": "external",
                           "structure_family": "array"})
        db.copy("data_source_asset_association", ("data_source_id", "asset_id"),
                list(zip(ds_ids.tolist(), asset_ids.to_pylist(), strict=True)),
                constants={"parameter": "data_uri", "num": None})
        self.result.added_artifacts += n

    def _asset_ids(self, uris: list[str]) -> list[int]:
        """Asset ids of ``uris`` (in order), inserting the ones the catalog does not have yet."""
        db = self.db
        found = {u: int(i) for i, u in db.fetch_in("SELECT id, data_uri FROM assets WHERE data_uri IN ({})", uris)}
        missing = sorted({u for u in uris if u not in found})
        if missing:
            start = _next_id(db, "assets")
            rows = [(start + k, u, False) for k, u in enumerate(missing)]
            db.copy("assets", ("id", "data_uri", "is_directory"), rows)
            found.update({u: i for i, u, _ in rows})
        return [found[u] for u in uris]

    # ---- what Tiled's row triggers derive, set-wise

    def _derived_rows(self, last: int) -> None:
        """Exactly the rows Tiled's closure trigger writes: (self, self, 0), and for every ancestor A of the
        parent at depth d, (A, node, d + 1); and the SQLite full-text rows. New nodes sit one or two
        levels below the dataset node, whose ancestors are known, so each set is a plain range scan."""
        db = self.db
        for lo, hi, below in ((self.node_lo, self.level3_lo - 1, 1), (self.level3_lo, last, 2)):
            if hi < lo:
                continue
            for ancestor, depth in self.ds_ancestors:
                db.execute("INSERT INTO nodes_closure (ancestor, descendant, depth) "
                           "SELECT ?, id, ? FROM nodes WHERE id BETWEEN ? AND ?", ancestor, depth + below, lo, hi)
            if below == 2:
                db.execute("INSERT INTO nodes_closure (ancestor, descendant, depth) "
                           "SELECT parent, id, 1 FROM nodes WHERE id BETWEEN ? AND ? ORDER BY parent, id", lo, hi)
            db.execute("INSERT INTO nodes_closure (ancestor, descendant, depth) "
                       "SELECT id, id, 0 FROM nodes WHERE id BETWEEN ? AND ?", lo, hi)
        if db.dialect == "sqlite" and last >= self.node_lo:
            db.execute("INSERT INTO metadata_fts5 (rowid, metadata) SELECT id, metadata FROM nodes "
                       "WHERE id BETWEEN ? AND ?", self.node_lo, last)

    def _check_set_wise(self, last: int) -> None:
        """PostgreSQL's replica role skipped every foreign key and trigger: run their checks on the new rows."""
        db = self.db
        checks = {
            "a node's parent is missing": ("SELECT n.id FROM nodes n LEFT JOIN nodes p ON p.id = n.parent "
                                           "WHERE n.id BETWEEN ? AND ? AND p.id IS NULL LIMIT 1", self.node_lo, last),
            "a data source's node or structure is missing": (
                "SELECT d.id FROM data_sources d LEFT JOIN nodes n ON n.id = d.node_id LEFT JOIN structures s "
                "ON s.id = d.structure_id WHERE d.node_id BETWEEN ? AND ? AND (n.id IS NULL OR s.id IS NULL) LIMIT 1",
                self.node_lo, last),
            "an asset link's data source or asset is missing": (
                "SELECT x.data_source_id FROM data_source_asset_association x JOIN data_sources d ON "
                "d.id = x.data_source_id LEFT JOIN assets a ON a.id = x.asset_id WHERE d.node_id BETWEEN ? AND ? "
                "AND a.id IS NULL LIMIT 1", self.node_lo, last),
            "a data source has a NULL and a numbered asset for one parameter (Tiled's num rule)": (
                "SELECT x.data_source_id FROM data_source_asset_association x JOIN data_sources d ON "
                "d.id = x.data_source_id WHERE d.node_id BETWEEN ? AND ? GROUP BY x.data_source_id, x.parameter "
                "HAVING count(*) > 1 AND bool_or(x.num IS NULL) LIMIT 1", self.node_lo, last),
            "a parameter row's node is missing": (
                f"SELECT p.node_id FROM {params.table_name(self.ds_id)} p LEFT JOIN nodes n ON n.id = p.node_id "
                "WHERE n.id IS NULL LIMIT 1",),
        }
        for what, (sql, *args) in checks.items():
            if db.fetch(sql, *args):
                raise SweepcatError(f"ingest of {self.s.key!r} refused before commit: {what}",
                                    "nothing was written; this is a bug in sweepcat, please report it")

    # ---- shared axes and the dataset node

    def _axes(self) -> None:
        """/_axes/<DATASET>/<name>: few nodes, written with Tiled's triggers on."""
        if not self.s.axes:
            return
        db = self.db
        root = self._axes_root()
        row = db.fetch("SELECT id FROM nodes WHERE parent = ? AND key = ?", root, self.s.key)
        if row:
            container = int(row[0][0])
            have = {k for (k,) in db.fetch("SELECT key FROM nodes WHERE parent = ?", container)}
        else:
            container = _next_id(db, "nodes")
            db.execute("INSERT INTO nodes (id, parent, key, structure_family, metadata, specs) "
                       "VALUES (?, ?, ?, 'container', '{}', '[]')", container, root, self.s.key)
            have = set()
        for axis in self.s.axes:
            if axis.name in have:
                continue
            sid, structure = structure_for(axis.shape, axis.dtype, None)
            db.execute("INSERT INTO structures (id, structure) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", sid,
                       compact_json(structure))
            node = _next_id(db, "nodes")
            db.execute("INSERT INTO nodes (id, parent, key, structure_family, metadata, specs) "
                       "VALUES (?, ?, ?, 'array', '{}', '[]')", node, container, axis.name)
            ds = _next_id(db, "data_sources")
            db.execute("INSERT INTO data_sources (id, node_id, structure_id, mimetype, parameters, properties, "
                       "management, structure_family) VALUES (?, ?, ?, ?, ?, '{}', 'external', 'array')", ds, node,
                       sid, MIMETYPE, compact_json({"dataset": axis.dataset}))
            (asset,) = self._asset_ids([asset_uri(f"{self.s.root.rstrip('/')}/{axis.file}")])
            db.execute("INSERT INTO data_source_asset_association (data_source_id, asset_id, parameter, num) "
                       "VALUES (?, ?, 'data_uri', NULL)", ds, asset)

    def _finish(self) -> None:
        """Dataset metadata: parameter ranges (merged unless pruning), artifact types, provenance, counts."""
        s, old = self.s, self.old_md
        parameters = dict(s.parameters)
        types = dict(s.types)
        summary = summary_of(old)
        if not self.prune:
            for name, entry in summary["parameters"].items():
                parameters[name] = merged_range(entry, parameters[name]) if name in parameters else entry
        md = dataset_metadata(s.manifests.description, types, parameters, provenance(s.manifests, s.n_ham, s.n_art))
        md["sweepcat"]["artifacts"] = {**summary["artifacts"], **md["sweepcat"]["artifacts"]}
        md["sweepcat"]["provenance"]["catalog_counts"] = count_children(self.db, self.ds_id)
        touched = ", time_updated = CURRENT_TIMESTAMP" if old is not None else ""
        self.db.execute(f"UPDATE nodes SET metadata = ?{touched} WHERE id = ?", compact_json(md), self.ds_id)
