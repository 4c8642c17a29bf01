"""The manifest contract: two Parquet tables, a dataset description, validation, locators.

Hamiltonians: one row per entity; ``huid`` and ``key`` required; every other
column is metadata (the physics parameters).

Artifacts: one row per array; ``huid``, ``type``, ``file`` (relative to the
dataset root), ``dataset`` required; ``index`` (row along axis 0 of a batched
dataset), ``shape``, ``dtype`` and ``axes`` (names of shared axes, one per
dimension) optional; every other column is artifact metadata.

The dataset description (label, catalog key, root, metadata, shared axes,
provenance) travels inside both Parquet files as key-value metadata, so the two
files alone are enough to ingest.

This module is shared by every layer (server and client included): it imports
nothing from sweepcat but ``errors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import output_directory, replacing
from .errors import ContractError, Problem, SourceInvalid, SweepcatError

if TYPE_CHECKING:  # pandas costs 0.3 s to import; only the client's helpers need it
    import pandas as pd

CONTRACT_VERSION = 1
DESCRIPTION_KEY = b"sweepcat.dataset"

HAM_REQUIRED = ("huid", "key")
ART_REQUIRED = ("huid", "type", "file", "dataset")
ART_OPTIONAL = ("index", "shape", "dtype", "axes")
ART_STANDARD = ART_REQUIRED + ART_OPTIONAL
NAN_POLICIES = ("error", "null", "skip")

HAM_SUFFIX = "_hamiltonians.parquet"
ART_SUFFIX = "_artifacts.parquet"

# Tiled keys become URL path segments: keep them plain.
_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-+=@:]+$")
AXES_KEY = "_axes"  # top-level container of every dataset's shared axes: /_axes/<DATASET>/<name>
RESERVED_KEYS = frozenset({AXES_KEY})  # node names sweepcat uses itself


def key_problem(key: Any) -> str | None:
    """Why ``key`` cannot name a catalog node (a dataset, a Hamiltonian, an artifact type); None if it can."""
    if not isinstance(key, str) or not key:
        return "is empty"
    if key in (".", ".."):
        return "is a path step ('.' or '..'), which names no node"
    if not _KEY_RE.match(key):
        return "has characters other than letters, digits and _ . - + = @ : ('/', spaces and '%' among them)"
    if key in RESERVED_KEYS:
        return "is reserved: sweepcat names its own nodes so"
    return None


def is_valid_key(key: str) -> bool:
    return key_problem(key) is None


def to_key(label: str) -> str:
    """A catalog key from a free-form label: unsafe characters become '_'."""
    key = re.sub(r"[^A-Za-z0-9_.\-]+", "_", label).strip("_.")
    return key or "dataset"


# --------------------------------------------------------------------------- description


@dataclass
class DatasetDescription:
    """What travels with the manifests: enough to ingest without the spec."""

    label: str
    key: str
    root: str  # absolute directory; artifact ``file`` values are relative to it
    metadata: dict[str, Any] = field(default_factory=dict)
    shared_axes: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {file, dataset}
    nan_policy: str = "error"
    provenance: dict[str, Any] = field(default_factory=dict)
    contract_version: int = CONTRACT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "DatasetDescription":
        """Raises ValueError naming what is wrong (not JSON, not an object, fields missing or mistyped)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        wrong = [f for f in ("label", "key", "root") if not isinstance(data.get(f), str)]
        wrong += [f for f in ("metadata", "shared_axes", "provenance") if not isinstance(data.get(f, {}), dict)]
        if wrong:
            raise ValueError(f"fields missing or of the wrong type: {', '.join(wrong)}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- locators


@dataclass(frozen=True)
class Locator:
    """Where one artifact lives: ``(file, dataset, index)``; index None for whole datasets."""

    file: str
    dataset: str
    index: int | None = None

    def absolute(self, root: str | os.PathLike | None) -> "Locator":
        if root is None or os.path.isabs(self.file):
            return self
        return Locator(os.path.join(os.fspath(root), self.file), self.dataset, self.index)

    def url(self, root: str | os.PathLike | None = None) -> str:
        """One-string form: ``file:///abs/path.h5#/RIXS[17]``."""
        path = self.absolute(root).file
        if not os.path.isabs(path):
            raise SweepcatError(
                f"locator file {path!r} is relative",
                "pass the dataset root to url(root=...) to make it absolute",
            )
        return f"file://{urllib.parse.quote(Path(path).as_posix())}#{_fragment(self.dataset, self.index)}"

    @classmethod
    def parse(cls, url: str) -> "Locator":
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise SweepcatError(
                f"not a locator URL: {url!r}",
                "expected file:///absolute/path.h5#/dataset or #/dataset[index]",
            )
        m = re.fullmatch(r"(?P<ds>.*?)(?:\[(?P<idx>\d+)\])?", parts.fragment)
        if not parts.path or not m or not m.group("ds"):
            raise SweepcatError(
                f"locator URL {url!r} has no dataset after '#'",
                "append the HDF5 dataset path, e.g. #/RIXS[17]",
            )
        idx = m.group("idx")
        return cls(
            urllib.parse.unquote(parts.path),
            urllib.parse.unquote(m.group("ds")),
            int(idx) if idx is not None else None,
        )


def _fragment(dataset: str, index: int | None) -> str:
    text = urllib.parse.quote(str(dataset), safe="/_-.~")
    return text if index is None else f"{text}[{int(index)}]"


def absolute_locator_urls(paths: Iterable[str], datasets: Iterable[str],
                          indices: Iterable[int | None]) -> list[str]:
    """``Locator.url`` for many rows of absolute paths (index None: whole dataset); each distinct
    (path, dataset) quoted once."""
    prefixes: dict[tuple[str, str], str] = {}
    out = []
    for path, dataset, index in zip(paths, datasets, indices, strict=True):
        prefix = prefixes.get((path, dataset))
        if prefix is None:
            prefix = prefixes[(path, dataset)] = \
                f"file://{urllib.parse.quote(Path(path).as_posix())}#{_fragment(dataset, None)}"
        out.append(prefix if index is None else f"{prefix}[{int(index)}]")
    return out


def locator_urls(root: str, files: "pd.Series", datasets: "pd.Series", indices: "pd.Series") -> "pd.Series":
    """``Locator.url`` for whole result tables of root-relative files."""
    import pandas as pd

    base = Path(root).as_posix().rstrip("/")
    urls = absolute_locator_urls((f"{base}/{f}" for f in files), datasets,
                                 (None if pd.isna(i) else int(i) for i in indices))
    return pd.Series(urls, index=files.index, dtype=object)


# --------------------------------------------------------------------------- asset URIs

# Tiled's client writes ``file://localhost`` + the raw path; only characters that would change how the URI
# parses are escaped here (``#`` and ``?`` end the path, ``%`` starts an escape, and URL parsers drop tabs
# and newlines), so that every ordinary path gives exactly the URI Tiled's own client writes.
_URI_UNSAFE = str.maketrans({"%": "%25", "#": "%23", "?": "%3F",
                             **{chr(c): f"%{c:02X}" for c in (*range(32), 127)}})


def asset_uri(path: str | os.PathLike) -> str:
    """The catalog's asset URI of an absolute local file (the one place paths become URIs)."""
    return "file://localhost" + os.path.abspath(os.fspath(path)).translate(_URI_UNSAFE)


def asset_path(uri: str) -> str:
    """The local path of an asset URI (the inverse of ``asset_uri``; Tiled's raw form is read as is)."""
    parts = urllib.parse.urlsplit(uri)
    path = urllib.parse.unquote(parts.path) if "%" in parts.path else parts.path
    if parts.scheme != "file" or not path.startswith("/"):
        raise SourceInvalid(f"asset {uri!r} is not an absolute local file URI",
                            "sweepcat reads file://localhost/absolute/path assets only")
    return path


def locator_of_source(parameters: Any, data_uri: str | None, where: str) -> Locator:
    """The locator a sweepcat data source holds: ``{"dataset": str, "index": int >= 0 or absent}`` and an
    absolute file URI. Anything else (written through Tiled's API) is refused naming ``where``."""
    if data_uri is None:
        raise SourceInvalid(f"{where}: it has no file asset (removed through Tiled's API?)",
                            "recreate the node with its file, or delete it (sweepcat delete)")
    p = parameters if isinstance(parameters, dict) else None
    dataset = p.get("dataset") if p else None
    index = p.get("index") if p else None
    if not isinstance(dataset, str) or not dataset:
        raise SourceInvalid(f"{where}: its data source names no HDF5 dataset (parameters {parameters!r})",
                            "recreate the node with parameters {'dataset': '/PATH', 'index': N}")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise SourceInvalid(f"{where}: its data source's index {index!r} is not a row number",
                            "recreate the node with an integer index (or none for a whole dataset)")
    try:
        return Locator(asset_path(data_uri), dataset, index)
    except SourceInvalid as exc:
        raise SourceInvalid(f"{where}: {exc.message}", exc.hint) from None


# --------------------------------------------------------------------------- paths


def path_problem(file: str, root: Path | None) -> str | None:
    """Why ``file`` may not be used as an artifact path under ``root``; None if fine."""
    if not isinstance(file, str) or not file:
        return "empty file path"
    if "\\" in file:
        return "contains a backslash; use '/' as separator"
    pure = PurePosixPath(file)
    if pure.is_absolute() or re.match(r"^[A-Za-z]:", file):
        return "is absolute; it must be relative to the dataset root"
    if ".." in pure.parts:
        return "contains '..' and could leave the dataset root"
    if root is not None:
        real_root = root.resolve()
        real = (root / file).resolve()
        if real != real_root and real_root not in real.parents:
            return f"resolves to {real}, outside the dataset root {real_root} (a symlink?)"
    return None


# --------------------------------------------------------------------------- validation


def _rows(mask: Any) -> np.ndarray:
    if isinstance(mask, (pa.Array, pa.ChunkedArray)):
        mask = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.asarray(mask, dtype=bool))


def _list_rows(rows: np.ndarray | list[int], limit: int = 5, total: int | None = None) -> str:
    total = len(rows) if total is None else total
    shown = ", ".join(str(int(r)) for r in list(rows)[:limit])
    return shown + (f" (+{total - limit} more)" if total > limit else "")


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def normalize_strings(table: pa.Table) -> pa.Table:
    """large_string (pandas 3's default) -> string, dictionary (pandas categoricals) -> its values, so
    every kernel downstream sees one type per kind."""
    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_dictionary(t):
            t = t.value_type
        return pa.string() if pa.types.is_large_string(t) else t

    fields = [pa.field(f.name, plain(f.type), f.nullable, f.metadata) for f in table.schema]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def parameter_columns(ham: pa.Table | pa.Schema) -> list[str]:
    names = ham.names if isinstance(ham, pa.Schema) else ham.column_names
    return [c for c in names if c not in HAM_REQUIRED]


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _bad_keys(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    ok = pc.match_substring_regex(values, _KEY_RE.pattern)
    odd = pc.is_in(values, value_set=pa.array([".", "..", *sorted(RESERVED_KEYS)]))
    return ~_mask(ok) | _mask(odd)


MAX_EXACT_INT = 2**53  # integers beyond this are not exact in JSON numbers or float64


def parameter_name_problem(name: str) -> str | None:
    """Why a Hamiltonians column name cannot name a parameter; None if it can. Quotes, backslashes and
    control characters cannot be addressed inside the catalog's JSON (SQLite's JSON paths have no escapes)."""
    if not name.strip():
        return "is blank"
    bad = sorted({c for c in name if c in '"\\' or ord(c) < 32 or ord(c) == 127})
    if bad:
        return (f"contains {', '.join(repr(c) for c in bad)}: parameter names may not hold quotes, backslashes or "
                "control characters")
    return None


def parameter_type_problem(name: str, t: pa.DataType) -> str | None:
    """Why a Hamiltonians column of this type cannot be stored as a parameter; None if it can."""
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or _is_string(t) \
            or pa.types.is_null(t):
        return None
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_struct(t) or pa.types.is_fixed_size_list(t):
        inner = [t.value_type] if hasattr(t, "value_type") else [f.type for f in t]
        bad = [parameter_type_problem(name, v) for v in inner]
        return next((b for b in bad if b), None)  # nested values are metadata (not searchable)
    if pa.types.is_temporal(t):
        how = "a string (ISO 8601, e.g. df[c].dt.strftime(...)) or a number (seconds since the epoch)"
    elif pa.types.is_decimal(t):
        how = "float64 (df[c].astype('float64'))"
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        how = "a string, or leave it out of the manifest"
    else:
        how = "float64, int64, bool or string"
    return f"has type {t}, which sweepcat cannot store as a parameter; convert it to {how}"


def hash64(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each value (nulls as the empty string), for finding equal values across batches
    without keeping them: 8 bytes per row. Two different values share a hash with probability about
    n**2 / 2**65 (1e-5 at 2x10^7 rows); such a pair would be reported as a duplicate, never missed."""
    from pandas.util import hash_array

    plain = pc.fill_null(pc.cast(values, pa.string()), "").to_numpy(zero_copy_only=False)
    return np.asarray(hash_array(np.asarray(plain, dtype=object), categorize=False), dtype=np.uint64)


class _Findings:
    """Row-local findings merged across batches: one Problem per kind, its first rows and a count."""

    def __init__(self) -> None:
        self._by: dict[tuple, list] = {}  # key -> [where, column text, what, fix, rows, count]

    def add(self, key: tuple, where: str, column: str, rows: np.ndarray, what: str, fix: str) -> None:
        entry = self._by.get(key)
        if entry is None:
            entry = self._by[key] = [where, column, what, fix, [], 0]
        entry[4].extend(int(r) for r in rows[: 5 - len(entry[4])])
        entry[5] += len(rows)

    def problems(self) -> list[Problem]:
        return [Problem(f"{where} rows {_list_rows(rows, total=count)} {column}", what, fix)
                for where, column, what, fix, rows, count in self._by.values()]


@dataclass
class _Seen:
    """Hashes of a column's values with their rows, batch by batch; duplicates are found at the end."""

    hashes: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        self.hashes.append(hashes)
        self.rows.append(rows)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.hashes:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        return np.concatenate(self.hashes), np.concatenate(self.rows)

    def duplicate_groups(self) -> list[np.ndarray]:
        """Rows of each value that occurs more than once, groups in order of first row."""
        h, r = self.arrays()
        if len(h) < 2:
            return []
        order = np.argsort(h, kind="stable")
        hs = h[order]
        repeat = np.flatnonzero(hs[1:] == hs[:-1])
        if not len(repeat):
            return []
        starts = np.unique(np.r_[repeat, repeat + 1])
        groups: dict[int, list[int]] = {}
        for i in starts:
            groups.setdefault(int(hs[i]), []).append(int(r[order[i]]))
        return sorted((np.sort(np.asarray(g)) for g in groups.values()), key=lambda g: g[0])


ValueAt = Callable[[str, str, int], Any]  # (table name, column, row) -> the value there


class ManifestChecker:
    """Every rule of the contract, over manifests given in batches (rows counted across batches).

    Row-local rules are checked as each batch arrives. Rules across rows (unique huid, key and
    (huid, type); every artifact's huid among the Hamiltonians; one shape and one dtype per type)
    keep 64-bit hashes and small per-type tallies: memory grows by a few bytes per row, never with
    the rows' contents. ``problems()`` finishes them. ``value_at`` names values found by hash."""

    def __init__(self, *, root: str | os.PathLike | None = None, check_files_exist: bool = False,
                 ham_name: str = "hamiltonians", art_name: str = "artifacts", value_at: ValueAt | None = None,
                 files_of: Callable[[Any], list[str]] | None = None):
        self.root = Path(root) if root is not None else None
        self.check_files_exist = check_files_exist
        self.ham_name, self.art_name = ham_name, art_name
        self.value_at = value_at
        self.files_of = files_of
        self._schema: list[Problem] = []
        self._schemas_seen: set[str] = set()
        self._found = _Findings()
        self._huid, self._key, self._pair, self._art_huid = _Seen(), _Seen(), _Seen(), _Seen()
        self._variants: dict[tuple[str, str], dict[Any, list]] = {}  # (column, type) -> value -> [count, rows]
        self.ham_rows = 0
        self.art_rows = 0
        self._ham_ok = self._art_ok = True

    # ---- schemas

    def _required(self, name: str, schema: pa.Schema, required: tuple[str, ...]) -> bool:
        ok = True
        for col in required:
            if col not in schema.names:
                self._schema.append(Problem(name, f"missing required column {col!r}",
                                            f"add the column; required are {', '.join(required)}"))
                ok = False
            elif not _is_string(schema.field(col).type):
                self._schema.append(Problem(f"{name} column {col!r}", f"has type {schema.field(col).type}, not string",
                                            "store identifiers and paths as strings"))
                ok = False
        return ok

    def _check_ham_schema(self, schema: pa.Schema) -> None:
        ok = self._required(self.ham_name, schema, HAM_REQUIRED)
        for col in parameter_columns(schema):
            why = parameter_name_problem(col) or parameter_type_problem(col, schema.field(col).type)
            if why:
                self._schema.append(Problem(f"{self.ham_name} column {col!r}", why, "fix the generator or the files, "
                                            "then regenerate the manifests"))
                ok = False
        self._ham_ok = ok

    def _check_art_schema(self, schema: pa.Schema) -> None:
        ok = self._required(self.art_name, schema, ART_REQUIRED)
        if "index" in schema.names:
            t = schema.field("index").type
            if not (_is_numeric(t) or pa.types.is_null(t)):
                self._schema.append(Problem(f"{self.art_name} column 'index'", f"has type {t}, not integer",
                                            "store index as an integer column (null where the artifact is a whole "
                                            "dataset)"))
                ok = False
        if "shape" in schema.names:
            t = schema.field("shape").type
            if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
                self._schema.append(Problem(f"{self.art_name} column 'shape'", f"has type {t}",
                                            "store shape as a list of integers, e.g. [151, 40]"))
                ok = False
        self._art_ok = ok

    # ---- batches

    def add_ham(self, ham: pa.Table) -> None:
        offset, self.ham_rows = self.ham_rows, self.ham_rows + ham.num_rows
        if "ham" not in self._schemas_seen:
            self._schemas_seen.add("ham")
            self._check_ham_schema(ham.schema)
        if not self._ham_ok:
            return
        for col in HAM_REQUIRED:
            values = ham.column(col)
            empty = _mask(pc.or_kleene(pc.is_null(values), pc.equal(values, "")))
            if empty.any():
                self._found.add(("empty", col), self.ham_name, f"column {col!r}", _rows(empty) + offset, "is empty",
                                f"give every Hamiltonian a {col}")
            keep = np.flatnonzero(~empty)
            (self._huid if col == "huid" else self._key).add(hash64(values.take(keep)), keep + offset)
            if col == "key":
                bad = _bad_keys(values) & ~empty
                if bad.any():
                    rows = _rows(bad)
                    first = values[int(rows[0])].as_py()
                    self._found.add(("bad key",), self.ham_name, "column 'key'", rows + offset,
                                    f"{first!r} is not a valid catalog key: it {key_problem(first)}",
                                    "use letters, digits and _ . - + = @ : only (no '/' or spaces)")
        for col in parameter_columns(ham):
            arr = ham.column(col)
            if pa.types.is_floating(arr.type):
                nonfinite = _mask(pc.invert(pc.is_finite(arr)))
                if nonfinite.any():
                    rows = _rows(nonfinite)
                    self._found.add(("nonfinite", col), self.ham_name, f"column {col!r}", rows + offset,
                                    f"parameter is not finite ({arr[int(rows[0])].as_py()!r} at row "
                                    f"{int(rows[0]) + offset})",
                                    "fix the simulation output, or regenerate with --nan-policy null|skip")
            elif _is_string(arr.type):
                self._check_nul(self.ham_name, col, arr, offset)
            elif pa.types.is_integer(arr.type) and arr.null_count < len(arr):
                big = _mask(pc.greater(pc.abs_checked(pc.cast(arr, pa.float64(), safe=False)), float(MAX_EXACT_INT)))
                if big.any():
                    rows = _rows(big)
                    self._found.add(("bigint", col), self.ham_name, f"column {col!r}", rows + offset,
                                    f"integer {arr[int(rows[0])].as_py()} is beyond 2**53, which parameters "
                                    "cannot hold exactly", "store it as a string, or scale it")

    def _check_nul(self, manifest: str, col: str, arr: pa.ChunkedArray, offset: int) -> None:
        nul = _mask(pc.match_substring(arr, "\x00"))
        if nul.any():
            rows = _rows(nul)
            self._found.add(("nul", manifest, col), manifest, f"column {col!r}", rows + offset,
                            f"text holds a NUL character (U+0000) at row {int(rows[0]) + offset}, which the catalog's "
                            "JSON cannot store (PostgreSQL refuses it)", "remove NUL characters in the generator")

    def add_art(self, art: pa.Table) -> None:
        offset, self.art_rows = self.art_rows, self.art_rows + art.num_rows
        if "art" not in self._schemas_seen:
            self._schemas_seen.add("art")
            self._check_art_schema(art.schema)
        if not self._art_ok:
            return
        a_huid, a_type = art.column("huid"), art.column("type")
        named = np.flatnonzero(_mask(pc.is_valid(a_huid)))
        self._art_huid.add(hash64(a_huid.take(named)), named + offset)
        bad_type = _bad_keys(a_type) | _mask(pc.is_null(a_type))
        if bad_type.any():
            rows = _rows(bad_type)
            first = a_type[int(rows[0])].as_py()
            self._found.add(("bad type",), self.art_name, "column 'type'", rows + offset,
                            f"{first!r} is not a valid artifact type (it becomes a catalog key): it "
                            f"{key_problem(first)}", "use letters, digits and _ . - only, e.g. 'rixs'")
        good = np.flatnonzero(~bad_type)
        pair = pc.binary_join_element_wise(pc.cast(a_huid, pa.string()), pc.cast(a_type, pa.string()), "\x00")
        self._pair.add(hash64(pair.take(good)), good + offset)

        for col in art.column_names:
            if col not in ("huid", "type") and _is_string(art.schema.field(col).type):
                self._check_nul(self.art_name, col, art.column(col), offset)
        files = art.column("file")
        for file in pc.unique(files).to_pylist():
            why = path_problem(file, self.root)
            if why is None and self.check_files_exist and self.root is not None and not (self.root / file).is_file():
                why = f"does not exist under {self.root}"
            if why:
                rows = _rows(pc.is_null(files) if file is None else pc.equal(files, file))
                self._found.add(("file", file), self.art_name, "column 'file'", rows + offset, f"{file!r} {why}",
                                "list files relative to the dataset root, inside it")
        datasets = art.column("dataset")
        empty_ds = _mask(pc.or_kleene(pc.is_null(datasets), pc.equal(datasets, "")))
        if empty_ds.any():
            self._found.add(("empty dataset",), self.art_name, "column 'dataset'", _rows(empty_ds) + offset,
                            "is empty", "give the HDF5 dataset path, e.g. /RIXS")
        if "index" in art.column_names and not pa.types.is_null(art.schema.field("index").type):
            col = art.column("index")
            as_float = pc.cast(col, pa.float64(), safe=False)
            bad = _mask(pc.or_kleene(pc.or_kleene(pc.less(as_float, 0), pc.not_equal(as_float, pc.floor(as_float))),
                                     pc.greater_equal(as_float, float(MAX_EXACT_INT))))
            if bad.any():
                rows = _rows(bad)
                value = col[int(rows[0])].as_py()
                what = (f"{value!r} is beyond 2**53, too large for an exact row number"
                        if isinstance(value, (int, float)) and value >= MAX_EXACT_INT
                        else f"{value!r} is not a non-negative integer")
                self._found.add(("index",), self.art_name, "column 'index'", rows + offset, what,
                                "index is the row along axis 0 of a batched dataset; leave it null otherwise")
        self._tally(art, a_type, offset)

    def _tally(self, art: pa.Table, a_type: pa.ChunkedArray, offset: int) -> None:
        """Counts (and first rows) of each type's shapes and dtypes, for the one-per-type rule."""
        columns = {}
        if "dtype" in art.column_names:
            dtypes = art.column("dtype")
            for value in pc.unique(dtypes).to_pylist():
                try:
                    if value is not None:
                        np.dtype(value)
                except (TypeError, ValueError, SyntaxError):
                    self._found.add(("dtype", value), self.art_name, "column 'dtype'",
                                    _rows(pc.equal(dtypes, value)) + offset, f"{value!r} is not a numpy dtype",
                                    "use names like float64 or int32")
            columns["dtype"] = dtypes
        if "shape" in art.column_names:
            columns["shape"] = shape_text(art.column("shape"))
        for name, values in columns.items():
            table = pa.table({"type": a_type, "v": values, "row": pa.array(np.arange(art.num_rows) + offset)})
            grouped = table.group_by(["type", "v"], use_threads=False).aggregate(
                [("v", "count"), ("row", "min")])
            for row in grouped.to_pylist():
                if row["v"] is None or row["type"] is None:
                    continue
                entry = self._variants.setdefault((name, row["type"]), {}).setdefault(row["v"], [0, []])
                entry[0] += row["v_count"]
                if len(entry[1]) < 5:
                    rows = _rows(pc.and_kleene(pc.equal(a_type, row["type"]), pc.equal(values, row["v"])))
                    entry[1].extend(int(r) + offset for r in rows[: 5 - len(entry[1])])

    @property
    def art_schema_ok(self) -> bool:
        """The artifacts' columns (names, types) were fine: their rows can be read as the contract says."""
        return self._art_ok and "art" in self._schemas_seen

    def hash_index(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted hashes, their rows) of the Hamiltonians' ``huid`` or ``key``: a value's row by search."""
        h, r = {"huid": self._huid, "key": self._key}[column].arrays()
        order = np.argsort(h, kind="stable")
        return h[order], r[order]

    # ---- the rules across rows

    def _value(self, table: str, column: str, row: int) -> str:
        if self.value_at is None:
            return ""
        return repr(self.value_at(table, column, row))

    def problems(self) -> list[Problem]:
        if self._schema:
            return list(self._schema)
        out: list[Problem] = []
        for col, seen in (("huid", self._huid), ("key", self._key)):
            groups = seen.duplicate_groups()
            if groups:
                rows = np.sort(np.concatenate(groups))
                first = self.value_at(self.ham_name, col, int(groups[0][0])) if self.value_at else None
                files = self.files_of(first) if (col == "huid" and self.files_of and first is not None) else []
                where = f", from files {', '.join(map(str, files[:5]))}" if files else ""
                out.append(Problem(f"{self.ham_name} rows {_list_rows(rows)} column {col!r}",
                                   f"duplicate {col} (e.g. {first!r}{where}); {col} must be unique"
                                   if first is not None else f"duplicate {col}; {col} must be unique",
                                   f"derive {col} from something unique, such as file name and row index"))
        out += self._found.problems()
        ham_h, _ = self._huid.arrays()
        art_h, art_r = self._art_huid.arrays()
        orphan = art_r[~np.isin(art_h, ham_h)] if len(art_h) else art_r
        if len(orphan):
            orphan = np.sort(orphan)
            out.append(Problem(f"{self.art_name} rows {_list_rows(orphan)} column 'huid'",
                               f"huid {self._value(self.art_name, 'huid', int(orphan[0]))} is not in {self.ham_name}",
                               "add the Hamiltonian or drop its artifacts"))
        groups = self._pair.duplicate_groups()
        if groups:
            rows = np.sort(np.concatenate(groups))
            r0 = int(groups[0][0])
            out.append(Problem(f"{self.art_name} rows {_list_rows(rows)} columns 'huid','type'",
                               f"type {self._value(self.art_name, 'type', r0)} appears more than once for huid "
                               f"{self._value(self.art_name, 'huid', r0)}",
                               "type must be unique per huid: name them apart, e.g. mag_x and mag_y"))
        out += self._variant_problems()
        return out

    def _variant_problems(self) -> list[Problem]:
        """One shape and one dtype per artifact type (arrays are rectangular)."""
        out = []
        for (name, t), variants in self._variants.items():
            if len(variants) < 2:
                continue
            ranked = sorted(variants.items(), key=lambda kv: (-kv[1][0], kv[0]))
            common = ranked[0][0]
            rows = sorted(r for value, (_, rs) in ranked[1:] for r in rs)
            total = sum(c for _, (c, _) in ranked[1:])
            shown = ", ".join(f"[{v}]" if name == "shape" else str(v) for v, _ in ranked[:4])
            what = (f"type {t!r} is ragged: shapes {shown} (most common [{common}])" if name == "shape"
                    else f"type {t!r} has several dtypes {shown} (most common {common})")
            out.append(Problem(f"{self.art_name} rows {_list_rows(rows, total=total)} column {name!r}", what,
                               "arrays must be rectangular with one dtype per type: "
                               "zero-pad or convert the outliers, or split the type"))
        return out


def validate(
    ham: pa.Table,
    art: pa.Table,
    *,
    root: str | os.PathLike | None = None,
    check_files_exist: bool = False,
    ham_name: str = "hamiltonians",
    art_name: str = "artifacts",
) -> list[Problem]:
    """Every way the two tables break the contract (empty list when they don't).

    Row numbers count from 0, as pandas shows them. Null parameters are
    allowed (not applicable, or NaN turned null by ``--nan-policy null``); NaN
    and infinities are not. Vectorised: 100,000 rows take milliseconds.
    """
    tables = {ham_name: ham, art_name: art}

    def files_of(huid: Any) -> list[str]:
        if "file" not in art.column_names or "huid" not in art.column_names:
            return []
        return pc.unique(pc.filter(art.column("file"), pc.equal(art.column("huid"), huid))).to_pylist()

    checker = ManifestChecker(root=root, check_files_exist=check_files_exist, ham_name=ham_name, art_name=art_name,
                              value_at=lambda t, c, r: tables[t].column(c)[r].as_py(), files_of=files_of)
    checker.add_ham(ham)
    checker.add_art(art)
    return checker.problems()


def shape_text(shapes: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """'151,40' per row: lets shapes be grouped and compared as strings."""
    return pc.binary_join(pc.cast(shapes, pa.list_(pa.string())), ",")


def check(ham: pa.Table, art: pa.Table, **kwargs: Any) -> None:
    """Raise ContractError listing every problem, or return quietly."""
    problems = validate(ham, art, **kwargs)
    if problems:
        raise ContractError(problems)


# --------------------------------------------------------------------------- files


class Manifests:
    """Two manifest tables and their dataset description.

    Tables given in memory are used as they are; manifests read from Parquet are loaded whole only
    when ``ham`` or ``art`` is asked for. ``ham_batches``/``art_batches`` stream either in bounded
    batches (what ingest does: its memory does not grow with the rows)."""

    def __init__(self, ham: pa.Table | None, art: pa.Table | None, description: DatasetDescription,
                 ham_path: Path | None = None, art_path: Path | None = None):
        if (ham is None and ham_path is None) or (art is None and art_path is None):
            raise ValueError("Manifests need each table, or the Parquet file to read it from")
        self._ham, self._art = ham, art
        self.description = description
        self.ham_path, self.art_path = ham_path, art_path

    @property
    def ham(self) -> pa.Table:
        if self._ham is None:
            self._ham = _read_table(self.ham_path)
        return self._ham

    @property
    def art(self) -> pa.Table:
        if self._art is None:
            self._art = _read_table(self.art_path)
        return self._art

    @ham.setter
    def ham(self, table: pa.Table) -> None:
        self._ham = table

    @art.setter
    def art(self, table: pa.Table) -> None:
        self._art = table

    @property
    def num_ham(self) -> int:
        return self._ham.num_rows if self._ham is not None else pq.ParquetFile(self.ham_path).metadata.num_rows

    @property
    def num_art(self) -> int:
        return self._art.num_rows if self._art is not None else pq.ParquetFile(self.art_path).metadata.num_rows

    def ham_batches(self, rows: int) -> Iterator[pa.Table]:
        return _batches(self._ham, self.ham_path, rows)

    def art_batches(self, rows: int) -> Iterator[pa.Table]:
        return _batches(self._art, self.art_path, rows)

    def value_at(self, table: str, column: str, row: int) -> Any:
        """One value (for messages about rows found by hash), without loading a file's table."""
        loaded = self._ham if table == "hamiltonians" else self._art
        if loaded is not None:
            return loaded.column(column)[row].as_py()
        f = pq.ParquetFile(self.ham_path if table == "hamiltonians" else self.art_path)
        start = 0
        for g in range(f.metadata.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            if row < start + n:
                return f.read_row_group(g, columns=[column]).column(0)[row - start].as_py()
            start += n
        raise IndexError(row)

    def __repr__(self) -> str:
        d = self.description
        return f"<Manifests {d.key!r}: {self.num_ham} Hamiltonians, {self.num_art} artifacts, root={d.root}>"


def _read_table(path: Path | None) -> pa.Table:
    try:
        return normalize_strings(pq.read_table(path))
    except FileNotFoundError:
        raise SweepcatError(f"{path}: no such file", "check the path") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise SweepcatError(f"{path}: not a readable Parquet file ({exc})",
                            "regenerate it with `sweepcat manifest`") from None


def _batches(table: pa.Table | None, path: Path | None, rows: int) -> Iterator[pa.Table]:
    if table is not None:
        for start in range(0, max(table.num_rows, 1), rows):
            yield table.slice(start, rows)
        return
    f = pq.ParquetFile(path)
    if f.metadata.num_rows == 0:
        yield normalize_strings(f.schema_arrow.empty_table())
        return
    for batch in f.iter_batches(batch_size=rows):
        yield normalize_strings(pa.Table.from_batches([batch]))


def check_manifests(m: Manifests, *, root: str | os.PathLike | None = None, check_files_exist: bool = False,
                    rows: int = 65_536) -> list[Problem]:
    """Every contract problem of ``m``, read in batches of ``rows``."""
    checker = ManifestChecker(root=root, check_files_exist=check_files_exist, value_at=m.value_at)
    for batch in m.ham_batches(rows):
        checker.add_ham(batch)
    for batch in m.art_batches(rows):
        checker.add_art(batch)
    return checker.problems()


def _with_description(table: pa.Table, description: DatasetDescription) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)  # the pandas index note is meaningless here
    meta[DESCRIPTION_KEY] = description.to_json().encode()
    return table.replace_schema_metadata(meta)


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def file_sha256(path: Path | None) -> str | None:
    if path is None or not Path(path).exists():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    """The two manifest files of dataset ``name`` in ``out_dir``; a name that is not a plain key (it
    could lead elsewhere, e.g. ``../../x``) is refused."""
    why = key_problem(name)
    if why:
        raise SweepcatError(f"dataset key {name!r} cannot name manifest files or a dataset: it {why}",
                            "use letters, digits and _ . - only (set `key:` in the spec, or --label)")
    return out_dir / f"{name}{HAM_SUFFIX}", out_dir / f"{name}{ART_SUFFIX}"


def write_manifests(out_dir: str | os.PathLike, manifests: Manifests, *, trial: bool = False) -> tuple[Path, Path]:
    """Validate, then write both files atomically; nothing is written if invalid. A ``trial`` (a
    first-N run) never replaces manifests already there: they may be the real ones."""
    d = manifests.description
    check(manifests.ham, manifests.art, root=d.root)
    out = output_directory(out_dir)
    ham_path, art_path = manifest_paths(out, d.key)
    if trial and (ham_path.exists() or art_path.exists()):
        raise SweepcatError(f"{ham_path} exists; a trial run ({manifests.ham.num_rows} Hamiltonians) would replace "
                            "it", "write the trial elsewhere (e.g. -o trial/), or pass --overwrite to replace it")
    ham = _with_description(manifests.ham, d)
    art = _with_description(manifests.art, d)
    # Parquet encoding releases the GIL: write both files at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(_atomic_write_parquet, ham, ham_path),
                       pool.submit(_atomic_write_parquet, art, art_path)]:
            future.result()
    return ham_path, art_path


def find_manifest_pairs(directory: Path) -> list[tuple[Path, Path]]:
    """Every NAME_hamiltonians.parquet / NAME_artifacts.parquet pair in a directory."""
    hams = sorted(directory.glob(f"*{HAM_SUFFIX}"))
    if not hams:
        raise SweepcatError(f"{directory}: no *{HAM_SUFFIX} file",
                            "write manifests with `sweepcat manifest SPEC.yml -o DIR`, or pass the Parquet files")
    pairs = []
    for ham in hams:
        art = ham.with_name(ham.name[: -len(HAM_SUFFIX)] + ART_SUFFIX)
        if not art.exists():
            raise SweepcatError(f"{art} is missing (the artifacts manifest beside {ham.name})",
                                "regenerate the manifests with `sweepcat manifest`")
        pairs.append((ham, art))
    return pairs


def find_manifest_pair(directory: Path, dataset: str | None = None) -> tuple[Path, Path]:
    """The pair of one dataset in a directory: the only one there, or NAME_*.parquet for ``dataset=NAME``."""
    pairs = find_manifest_pairs(directory)
    names = [h.name[: -len(HAM_SUFFIX)] for h, _ in pairs]
    if dataset is not None:
        if dataset in names:
            return pairs[names.index(dataset)]
        raise SweepcatError(f"{directory}: no manifests of dataset {dataset!r} (it holds {', '.join(names)})",
                            "pass one of those names, or the directory `sweepcat manifest -o` wrote")
    if len(pairs) != 1:
        raise SweepcatError(
            f"{directory}: holds the manifests of {len(pairs)} datasets ({', '.join(names)})",
            f"say which: read_manifests({str(directory)!r}, dataset={names[0]!r}), or pass its two Parquet files")
    return pairs[0]


def read_manifests(
    ham_path: str | os.PathLike,
    art_path: str | os.PathLike | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    label: str | None = None,
    dataset: str | None = None,
) -> Manifests:
    """Read a manifest pair (or a directory holding it) with its dataset description.

    A directory holding several datasets' manifests needs ``dataset`` (the NAME of
    NAME_hamiltonians.parquet). Manifests without an embedded description (written
    by other tools) need ``base_dir``; the label then defaults to the file name's prefix.
    """
    ham_p = Path(ham_path)
    if art_path is None:
        if not ham_p.is_dir():
            raise SweepcatError(f"{ham_p} is not a directory",
                                "pass a manifest directory, or both HAM.parquet and ART.parquet")
        ham_p, art_p = find_manifest_pair(ham_p, dataset)
    else:
        art_p = Path(art_path)
    metadata = []
    for p in (ham_p, art_p):
        try:
            metadata.append(pq.read_schema(p).metadata or {})
        except FileNotFoundError:
            raise SweepcatError(f"{p}: no such file", "check the path") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise SweepcatError(f"{p}: not a readable Parquet file ({exc})",
                                "regenerate it with `sweepcat manifest`") from None
    raw = metadata[0].get(DESCRIPTION_KEY) or metadata[1].get(DESCRIPTION_KEY)
    if raw is not None:
        try:
            description = DatasetDescription.from_json(raw)
        except (ValueError, TypeError) as exc:
            raise SweepcatError(f"{ham_p}: its sweepcat dataset description is damaged ({exc})",
                                "regenerate the manifests with `sweepcat manifest`, or pass --base-dir and "
                                "--label to ingest them without it") from None
        if base_dir is not None:
            description.root = str(Path(base_dir).resolve())
    else:
        if base_dir is None:
            raise SweepcatError(
                f"{ham_p} carries no sweepcat dataset description, so the data root is unknown",
                "pass --base-dir DIR (the directory artifact 'file' paths are relative to)",
            )
        name = label or ham_p.name.removesuffix(HAM_SUFFIX).removesuffix(".parquet")
        description = DatasetDescription(label=name, key=to_key(name), root=str(Path(base_dir).resolve()))
    if label is not None:
        description.label = label
        description.key = to_key(label)
    return Manifests(None, None, description, ham_p, art_p)


# --------------------------------------------------------------------------- wire format

BATCH_MAGIC = b"SWEEPCAT-BATCH-1"


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def encode_batch(manifests: Manifests) -> bytes:
    """Manifests (or a slice of them) as one request body: two Arrow IPC streams."""
    ham = _with_description(manifests.ham, manifests.description)
    ham_bytes = _ipc(ham)
    return BATCH_MAGIC + len(ham_bytes).to_bytes(8, "little") + ham_bytes + _ipc(manifests.art)


def decode_batch(body: bytes) -> Manifests:
    if not body.startswith(BATCH_MAGIC) or len(body) < len(BATCH_MAGIC) + 8:
        raise SweepcatError("request body is not a sweepcat batch", "send it with `sweepcat register`")
    start = len(BATCH_MAGIC) + 8
    n = int.from_bytes(body[len(BATCH_MAGIC):start], "little")
    try:
        ham = pa.ipc.open_stream(pa.py_buffer(body[start:start + n])).read_all()
        art = pa.ipc.open_stream(pa.py_buffer(body[start + n:])).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise SweepcatError(f"request body is a damaged sweepcat batch ({exc})", "resend it") from None
    raw = (ham.schema.metadata or {}).get(DESCRIPTION_KEY)
    if raw is None:
        raise SweepcatError("the batch carries no dataset description", "send it with `sweepcat register`")
    try:
        description = DatasetDescription.from_json(raw)
    except ValueError as exc:
        raise SweepcatError(f"the batch's dataset description is damaged ({exc})",
                            "send it with `sweepcat register`") from None
    return Manifests(normalize_strings(ham), normalize_strings(art), description)
