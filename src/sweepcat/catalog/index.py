"""The read side of the catalog for search and batch access.

A dataset's parameter table (see ``params``) and its locators are loaded once
per dataset *version* into numpy columns; queries, facets, locator tables and
stacked reads then cost array operations, not SQL scans. Each request checks
the version with one indexed lookup, so a commit by `ingest`, `register` or a
delete is seen by the next request.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from .. import query as q
from ..contract import absolute_locator_urls, locator_of_source
from ..errors import SourceInvalid, SweepcatError
from ..h5open import FileRule, Opener
from ..h5read import Stack, read_stacked
from . import params
from .db import Database, connect
from .plan import summary_of
from .query import datasets_in
from .schema import MIMETYPE, CatalogURI


@dataclass
class TypeLocators:
    """Where each Hamiltonian's artifact of one type lives, aligned with the parameter rows."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    dims: tuple[str, ...] | None
    paths: list[str]
    file_idx: np.ndarray  # int32 per row; -1: this Hamiltonian has no such artifact; INVALID: see ``invalid``
    datasets: np.ndarray  # object per row
    indices: np.ndarray  # int64 per row; -1: whole dataset
    invalid: dict[int, str] = field(default_factory=dict)  # row -> why its data source is not sweepcat's

    def refuse_invalid(self, rows: np.ndarray, keys: np.ndarray, dataset: str) -> None:
        bad = rows[self.file_idx[rows] == INVALID]
        if len(bad):
            shown = "; ".join(f"{dataset}/{keys[r]}/{self.name}: {self.invalid[int(r)]}" for r in bad[:3])
            raise SourceInvalid(f"{len(bad)} {self.name!r} node(s) hold data sources sweepcat does not write: {shown}",
                                "delete or recreate those nodes (sweepcat delete, or Tiled's client), or narrow "
                                "the query to leave them out")


@dataclass
class DatasetIndex:
    key: str
    dataset_id: int
    version: int
    metadata: dict[str, Any]
    table: params.ParamTable
    root: str | None  # recorded by ingest or register (never taken from node metadata)
    types: dict[str, TypeLocators] = field(default_factory=dict)  # loaded with the parameters, one snapshot
    _refused: dict[tuple[str, tuple[str, ...]], np.ndarray] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def parameters(self) -> list[str]:
        return list(self.table.columns)

    def select(self, text: str | None) -> np.ndarray:
        """Row positions matching a query (all rows for None/empty), in listing order."""
        n = len(self.table)
        if not text or not text.strip():
            return np.arange(n)
        node = q.parse(text)
        q.check_names(node, ["key", *self.parameters], text)
        columns = {**self.table.columns, "key": self.table.key}
        return np.flatnonzero(q.evaluate(node, columns, n))

    def cut(self, rows: np.ndarray, cuts: str | None) -> np.ndarray:
        """``rows`` after a result's cuts (``query.parse_cuts``): sorted, shuffled, sliced."""
        if not cuts:
            return rows
        return q.apply_cuts(rows, q.parse_cuts(cuts), {**self.table.columns, "key": self.table.key})

    def facets(self, rows: np.ndarray, name: str, bins: int = 20) -> dict[str, Any]:
        if name not in self.table.columns:
            raise q.QueryError(f"unknown parameter {name!r}", f"valid parameters: {', '.join(self.parameters)}")
        col = self.table.columns[name]
        if col.dtype.kind != "f":
            return _distinct(col[rows], name)
        values = col[rows]
        values = values[~np.isnan(values)]
        if not len(values):
            return {"name": name, "count": 0, "min": None, "max": None, "histogram": {"edges": [], "counts": []}}
        counts, edges = np.histogram(values, bins=max(1, min(int(bins), 1000)))
        return {"name": name, "count": int(len(values)), "min": float(values.min()), "max": float(values.max()),
                "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}

    def params_table(self, rows: np.ndarray) -> pa.Table:
        data = {"key": pa.array(self.table.key[rows].tolist(), pa.string())}
        for name, col in self.table.columns.items():
            part = col[rows]
            data[name] = pa.array(part, mask=np.isnan(part)) if part.dtype.kind == "f" else pa.array(part.tolist())
        return pa.table(data)

    # ---- locators

    def outside(self, rows: np.ndarray, type_: str | None, rule: FileRule) -> str | None:
        """The first file of ``rows`` (of ``type_``, or any type) whose real path the rule refuses, or None.

        Which files pass is computed once per index version and rule (one realpath per distinct file)."""
        for name, t in self.types.items():
            if type_ is not None and name != type_:
                continue
            with self._lock:
                refused = self._refused.get((name, rule.roots))
                if refused is None:
                    refused = np.fromiter((not rule.permits_path(p) for p in t.paths), dtype=bool,
                                          count=len(t.paths))
                    self._refused[(name, rule.roots)] = refused
            if not refused.any():
                continue
            fi = t.file_idx[rows]
            bad = fi[(fi >= 0)]
            bad = bad[refused[bad]]
            if len(bad):
                return t.paths[int(bad[0])]
        return None

    def locator_table(self, rows: np.ndarray, type_: str | None = None, fields: str | None = None) -> pa.Table:
        """key, huid, type, file, dataset, index, url of every matching artifact; ``fields`` (comma-separated)
        keeps only those columns (a reader here needs file, dataset and index: a third of the bytes)."""
        types = self.types
        if type_ is not None and type_ not in types:
            raise q.QueryError(f"unknown artifact type {type_!r}", f"types of {self.key}: {', '.join(types)}")
        keep = LOCATOR_FIELDS if not fields else tuple(f.strip() for f in fields.split(","))
        unknown = [repr(f) for f in keep if f not in LOCATOR_FIELDS]
        if unknown or not keep:
            raise q.QueryError(f"unknown locator field(s) {', '.join(unknown) or '(none given)'}",
                               f"fields are {', '.join(LOCATOR_FIELDS)}")
        parts = [self._locator_part(name, t, rows, keep) for name, t in types.items()
                 if type_ is None or name == type_]
        if not parts:
            return pa.table({f: pa.array([], LOCATOR_TYPES[f]) for f in keep})
        return pa.concat_tables(parts)

    def _locator_part(self, name: str, t: "TypeLocators", rows: np.ndarray, keep: tuple[str, ...]) -> pa.Table:
        """The ``keep`` columns for one artifact type's rows that have it (only those columns are built)."""
        t.refuse_invalid(rows, self.table.key, self.key)
        fi = t.file_idx[rows]
        has = fi >= 0
        sel = rows[has]
        paths = np.asarray(t.paths, dtype=object)[fi[has]] if len(t.paths) else np.array([], dtype=object)
        idx = t.indices[sel]
        ds = t.datasets[sel]
        out = {}
        for f in keep:
            if f == "key":
                out[f] = pa.array(self.table.key[sel].tolist(), pa.string())
            elif f == "huid":
                out[f] = pa.array(self.table.columns["huid"][sel].tolist(), pa.string()) \
                    if "huid" in self.table.columns else pa.nulls(len(sel), pa.string())
            elif f == "type":
                out[f] = pa.array([name] * len(sel), pa.string())
            elif f == "file":
                out[f] = pa.array(paths.tolist(), pa.string())
            elif f == "dataset":
                out[f] = pa.array(ds.tolist(), pa.string())
            elif f == "index":
                out[f] = pa.array(idx, mask=idx < 0, type=pa.int64())
            else:
                out[f] = pa.array(absolute_locator_urls(paths, ds, (None if i < 0 else i for i in idx.tolist())),
                                  pa.string())
        return pa.table(out)

    def stack(self, rows: np.ndarray, type_: str) -> Stack:
        """Where the ``type_`` artifacts of ``rows`` live, in row order (for a stacked read)."""
        types = self.types
        if type_ not in types:
            raise q.QueryError(f"unknown artifact type {type_!r}", f"types of {self.key}: {', '.join(types)}")
        t = types[type_]
        t.refuse_invalid(rows, self.table.key, self.key)
        fi = t.file_idx[rows]
        if (fi < 0).any():
            missing = self.table.key[rows[fi < 0]][:5].tolist()
            raise SweepcatError(f"{self.key}: Hamiltonians without a {type_!r} artifact: {', '.join(missing)}",
                                f"narrow the query to Hamiltonians that have {type_!r}")
        return Stack(t.paths, fi, t.datasets[rows], t.indices[rows], t.shape, t.dtype)

    def read(self, rows: np.ndarray, type_: str, opener: Opener) -> np.ndarray:
        return read_stacked(self.stack(rows, type_), opener)


LOCATOR_FIELDS = ("key", "huid", "type", "file", "dataset", "index", "url")
LOCATOR_TYPES = {"key": pa.string(), "huid": pa.string(), "type": pa.string(), "file": pa.string(),
                 "dataset": pa.string(), "index": pa.int64(), "url": pa.string()}
MAX_DISTINCT = 1000  # values listed by a text facet
MAX_VALUE_CHARS = 200  # characters of each listed value


def _distinct(values: np.ndarray, name: str) -> dict[str, Any]:
    """Counts of a text parameter's values, most frequent first: memory grows with the rows, never with the
    length of the longest value (no fixed-width copies)."""
    import pandas as pd

    counts = pd.Series(values, dtype=object).value_counts(dropna=True)
    shown = counts.iloc[:MAX_DISTINCT]
    distinct = {(str(k) if len(str(k)) <= MAX_VALUE_CHARS else str(k)[:MAX_VALUE_CHARS] + "..."): int(v)
                for k, v in shown.items()}
    return {"name": name, "count": int(counts.sum()), "distinct": distinct, "distinct_total": int(len(counts)),
            "truncated": bool(len(counts) > MAX_DISTINCT)}


INVALID = -2  # file_idx of a row whose data source is not one sweepcat writes


def _load_locators(db: Database, index: DatasetIndex) -> dict[str, TypeLocators]:
    from tiled.structures.array import ArrayStructure

    rows = db.fetch(
        "SELECT n.parent, n.key, ds.parameters, a.data_uri, st.structure, ds.structure_id FROM nodes p "
        "JOIN nodes n ON n.parent = p.id JOIN data_sources ds ON ds.node_id = n.id "
        "JOIN structures st ON st.id = ds.structure_id "
        "LEFT JOIN data_source_asset_association x ON x.data_source_id = ds.id AND x.parameter = 'data_uri' "
        "LEFT JOIN assets a ON a.id = x.asset_id WHERE p.parent = ? AND ds.mimetype = ?", index.dataset_id, MIMETYPE)
    position = {int(node): i for i, node in enumerate(index.table.node_id.tolist())}
    n = len(index.table)
    # Each type's structure is the one most of its arrays share (node metadata and data sources are
    # writable through Tiled's API: one odd array is refused by name, never the others because of it).
    votes: dict[str, dict[Any, int]] = {}
    for parent, type_, _, _, _, structure_id in rows:
        if int(parent) in position:
            counts = votes.setdefault(type_, {})
            counts[structure_id] = counts.get(structure_id, 0) + 1
    reference = {t: max(sorted(c), key=c.__getitem__) for t, c in votes.items()}
    out: dict[str, TypeLocators] = {}
    path_ids: dict[str, dict[str, int]] = {}
    names: dict[str, str] = {}
    for parent, type_, parameters, uri, structure, structure_id in rows:
        pos = position.get(int(parent))
        if pos is None:
            continue  # not a Hamiltonian of the index
        t = out.get(type_)
        if t is None:
            t = out[type_] = _empty_type(type_, n)
            path_ids[type_] = {}
        try:
            if structure_id != reference[type_]:
                raise SourceInvalid(f"its structure differs from that of the other {type_!r} arrays")
            if t.dtype is None:
                s = ArrayStructure.from_json(json.loads(structure) if isinstance(structure, str) else structure)
                t.shape, t.dtype = tuple(s.shape), s.data_type.to_numpy_dtype()
                t.dims = tuple(s.dims) if s.dims else None
            p = json.loads(parameters) if isinstance(parameters, str) else parameters
            loc = locator_of_source(p, uri, "its data source")
        except SourceInvalid as exc:  # written through Tiled's API: refused when read, never guessed
            t.file_idx[pos] = INVALID
            t.invalid[pos] = exc.message.removeprefix("its data source: ")
            continue
        ids = path_ids[type_]
        if loc.file not in ids:
            ids[loc.file] = len(t.paths)
            t.paths.append(loc.file)
        t.file_idx[pos] = ids[loc.file]
        t.datasets[pos] = names.setdefault(loc.dataset, loc.dataset)  # one str per distinct name, not per row
        t.indices[pos] = -1 if loc.index is None else loc.index
    return out


def _empty_type(name: str, n: int) -> TypeLocators:
    return TypeLocators(name, (), None, None, [], np.full(n, -1, np.int32), np.full(n, "", dtype=object),  # type: ignore[arg-type]
                        np.full(n, -1, np.int64))


def _dtype_text(dtype: np.dtype) -> str:
    """'float64' for native byte order (as manifests write it), the explicit '>f8' otherwise."""
    return dtype.name if dtype.isnative else dtype.str


READER_CACHE_MIB = 8  # SQLite page cache per pooled read connection (the index is loaded once per version)


class IndexCache:
    """Per-dataset indexes, reloaded when the dataset's version changes, over a bounded pool of database
    connections (closed with ``close``)."""

    def __init__(self, cat: CatalogURI, max_connections: int = 8):
        self.cat = cat
        self._indexes: dict[str, DatasetIndex] = {}
        self._lock = threading.Lock()
        self._idle: list[Database] = []
        self._slots = threading.BoundedSemaphore(max_connections)

    @contextmanager
    def connection(self) -> Iterator[Database]:
        """A connection from the pool (at most ``max_connections`` at once; callers beyond wait)."""
        self._slots.acquire()
        try:
            with self._lock:
                db = self._idle.pop() if self._idle else None
            if db is None:
                db = connect(self.cat, cache_mib=READER_CACHE_MIB)
            try:
                yield db
            except BaseException:
                db.close()  # a connection in an unknown state is not reused
                raise
            else:
                with self._lock:
                    self._idle.append(db)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()

    def exists(self, dataset: str) -> bool:
        with self.connection() as db:
            return bool(db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", dataset))

    def get(self, dataset: str) -> DatasetIndex:
        with self.connection() as db:
            reg = params.registry(db, dataset)
            if reg is None:
                exists = db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", dataset)
                if not exists:
                    raise LookupError(dataset)
                raise SweepcatError(f"dataset {dataset!r} is not one of sweepcat's (no parameter index: made by "
                                    "another tool?)", f"adopt it with `sweepcat reindex {dataset} --catalog ...`")
            cached = self._indexes.get(dataset)
            if cached is not None and cached.version == reg.version and cached.dataset_id == reg.dataset_id:
                return cached
            db.begin_read()  # the version, the parameters and the locators: one snapshot
            try:
                reg = params.registry(db, dataset)
                if reg is None:  # deleted meanwhile
                    raise LookupError(dataset)
                table = params.load(db, reg)
                md = db.fetch("SELECT metadata FROM nodes WHERE id = ?", reg.dataset_id)[0][0]
                md = json.loads(md) if isinstance(md, str) else md
                index = DatasetIndex(dataset, reg.dataset_id, reg.version, md, table, reg.root)
                index.types = _load_locators(db, index)
            finally:
                db.rollback()
        with self._lock:
            self._indexes[dataset] = index
        return index

    def datasets(self) -> list[dict[str, Any]]:
        """Each dataset's summary. Counts, shapes and dtypes come from the index (the catalog's rows);
        labels, ranges and axes from the dataset's metadata, read defensively (any Tiled client can edit it)."""
        with self.connection() as db:
            entries = datasets_in(db)
        out = []
        for d in entries:
            index = self.get(d.key)
            summary = summary_of(d.metadata)
            artifacts = {name: {**summary["artifacts"].get(name, {}), "shape": list(t.shape),
                                "dtype": _dtype_text(t.dtype)}
                         for name, t in index.types.items() if t.dtype is not None}
            out.append({"key": d.key, "label": summary.get("label", d.key), "hamiltonians": len(index.table),
                        "artifacts": artifacts, "parameters": summary["parameters"],
                        "shared_axes": summary["shared_axes"], "root": d.root, "version": index.version})
        return out
