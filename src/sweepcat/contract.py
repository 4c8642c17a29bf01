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
from concurrent.futures import ThreadPoolExecutor
import os
import re
import tempfile
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ContractError, Problem, SweepcatError

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


def is_valid_key(key: str) -> bool:
    return bool(key) and key not in (".", "..") and bool(_KEY_RE.match(key))


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
        data = json.loads(text)
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
    """``Locator.url`` for many rows of absolute paths (index None: whole dataset); each path quoted once."""
    quoted: dict[str, str] = {}
    out = []
    for path, dataset, index in zip(paths, datasets, indices):
        q = quoted.get(path)
        if q is None:
            q = quoted[path] = urllib.parse.quote(Path(path).as_posix())
        out.append(f"file://{q}#{_fragment(dataset, index)}")
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
# parses are escaped here, so that every ordinary path gives exactly the URI Tiled's own client writes.
_URI_UNSAFE = str.maketrans({"%": "%25", "#": "%23", "?": "%3F"})


def asset_uri(path: str | os.PathLike) -> str:
    """The catalog's asset URI of an absolute local file (the one place paths become URIs)."""
    return "file://localhost" + os.path.abspath(os.fspath(path)).translate(_URI_UNSAFE)


def asset_path(uri: str) -> str:
    """The local path of an asset URI (the inverse of ``asset_uri``; Tiled's raw form is read as is)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "file":
        raise SweepcatError(f"asset {uri!r} is not a local file", "sweepcat serves file:// assets only")
    return urllib.parse.unquote(parts.path) if "%" in parts.path else parts.path


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


def _list_rows(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


def _duplicated(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Mask of rows whose value occurs more than once (nulls ignored); cheap when all are unique."""
    n = len(values)
    if len(pc.unique(pc.drop_null(values))) + values.null_count >= n:
        return np.zeros(n, dtype=bool)
    counts = pc.value_counts(values)
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    return _mask(pc.is_in(values, value_set=repeated))


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _files_of(art: pa.Table, huid: Any) -> str:
    """', from files a.h5, b.h5': where a duplicated huid's artifacts come from."""
    if "file" not in art.column_names or "huid" not in art.column_names:
        return ""
    files = pc.unique(pc.filter(art.column("file"), pc.equal(art.column("huid"), huid))).to_pylist()
    return f", from files {', '.join(map(str, files[:5]))}" if files else ""


def normalize_strings(table: pa.Table) -> pa.Table:
    """large_string (pandas 3's default) -> string, so every kernel downstream sees one type."""
    fields = [pa.field(f.name, pa.string(), f.nullable, f.metadata) if pa.types.is_large_string(f.type) else f
              for f in table.schema]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    return table if schema.equals(table.schema) else table.cast(schema)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def parameter_columns(ham: pa.Table) -> list[str]:
    return [c for c in ham.column_names if c not in HAM_REQUIRED]


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _bad_keys(values: pa.ChunkedArray) -> np.ndarray:
    ok = pc.match_substring_regex(values, _KEY_RE.pattern)
    dots = pc.is_in(values, value_set=pa.array([".", ".."]))
    return ~_mask(ok) | _mask(dots)


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
    problems: list[Problem] = []
    add = problems.append

    for name, table, required in ((ham_name, ham, HAM_REQUIRED), (art_name, art, ART_REQUIRED)):
        for col in required:
            if col not in table.column_names:
                add(Problem(name, f"missing required column {col!r}",
                            f"add the column; required are {', '.join(required)}"))
            elif not _is_string(table.schema.field(col).type):
                add(Problem(f"{name} column {col!r}", f"has type {table.schema.field(col).type}, not string",
                            "store identifiers and paths as strings"))
    if problems:
        return problems

    # -- Hamiltonians
    for col in HAM_REQUIRED:
        values = ham.column(col)
        empty = _mask(pc.or_kleene(pc.is_null(values), pc.equal(values, "")))
        if empty.any():
            add(Problem(f"{ham_name} rows {_list_rows(_rows(empty))} column {col!r}", "is empty",
                        f"give every Hamiltonian a {col}"))
        dup = _duplicated(values) & ~empty
        if dup.any():
            rows = _rows(dup)
            first = values[int(rows[0])].as_py()
            add(Problem(f"{ham_name} rows {_list_rows(rows)} column {col!r}",
                        f"duplicate {col} (e.g. {first!r}{_files_of(art, first) if col == 'huid' else ''}); "
                        f"{col} must be unique",
                        f"derive {col} from something unique, such as file name and row index"))
        if col == "key":
            bad = _bad_keys(values) & ~empty
            if bad.any():
                rows = _rows(bad)
                add(Problem(f"{ham_name} rows {_list_rows(rows)} column 'key'",
                            f"{values[int(rows[0])].as_py()!r} is not a valid catalog key",
                            "use letters, digits and _ . - only (no '/' or spaces)"))

    for col in parameter_columns(ham):
        arr = ham.column(col)
        if pa.types.is_floating(arr.type):
            nonfinite = _mask(pc.invert(pc.is_finite(arr)))
            if nonfinite.any():
                rows = _rows(nonfinite)
                add(Problem(f"{ham_name} rows {_list_rows(rows)} column {col!r}",
                            f"parameter is not finite ({arr[int(rows[0])].as_py()!r} at row {rows[0]})",
                            "fix the simulation output, or regenerate with --nan-policy null|skip"))

    # -- Artifacts
    a_huid, a_type = art.column("huid"), art.column("type")
    orphan = ~_mask(pc.is_in(a_huid, value_set=ham.column("huid")))
    if orphan.any():
        rows = _rows(orphan)
        add(Problem(f"{art_name} rows {_list_rows(rows)} column 'huid'",
                    f"huid {a_huid[int(rows[0])].as_py()!r} is not in {ham_name}",
                    "add the Hamiltonian or drop its artifacts"))
    bad_type = _bad_keys(a_type) | _mask(pc.is_null(a_type))
    if bad_type.any():
        rows = _rows(bad_type)
        add(Problem(f"{art_name} rows {_list_rows(rows)} column 'type'",
                    f"{a_type[int(rows[0])].as_py()!r} is not a valid artifact type (it becomes a catalog key)",
                    "use letters, digits and _ . - only, e.g. 'rixs'"))
    pair = pc.binary_join_element_wise(pc.cast(a_huid, pa.string()), pc.cast(a_type, pa.string()), "\x00")
    dup = _duplicated(pair) & ~bad_type
    if dup.any():
        rows = _rows(dup)
        r0 = int(rows[0])
        add(Problem(f"{art_name} rows {_list_rows(rows)} columns 'huid','type'",
                    f"type {a_type[r0].as_py()!r} appears more than once for huid {a_huid[r0].as_py()!r}",
                    "type must be unique per huid: name them apart, e.g. mag_x and mag_y"))

    files = art.column("file")
    root_path = Path(root) if root is not None else None
    for file in pc.unique(files).to_pylist():
        why = path_problem(file, root_path)
        if why is None and check_files_exist and root_path is not None and not (root_path / file).is_file():
            why = f"does not exist under {root_path}"
        if why:
            rows = _rows(pc.is_null(files) if file is None else pc.equal(files, file))
            add(Problem(f"{art_name} rows {_list_rows(rows)} column 'file'", f"{file!r} {why}",
                        "list files relative to the dataset root, inside it"))

    datasets = art.column("dataset")
    empty_ds = _mask(pc.or_kleene(pc.is_null(datasets), pc.equal(datasets, "")))
    if empty_ds.any():
        add(Problem(f"{art_name} rows {_list_rows(_rows(empty_ds))} column 'dataset'", "is empty",
                    "give the HDF5 dataset path, e.g. /RIXS"))

    if "index" in art.column_names:
        col = art.column("index")
        if _is_numeric(col.type) or pa.types.is_null(col.type):
            if not pa.types.is_null(col.type):
                as_float = pc.cast(col, pa.float64())
                bad = _mask(pc.or_kleene(pc.less(as_float, 0), pc.not_equal(as_float, pc.floor(as_float))))
                if bad.any():
                    rows = _rows(bad)
                    add(Problem(f"{art_name} rows {_list_rows(rows)} column 'index'",
                                f"{col[int(rows[0])].as_py()!r} is not a non-negative integer",
                                "index is the row along axis 0 of a batched dataset; leave it null otherwise"))
        else:
            add(Problem(f"{art_name} column 'index'", f"has type {col.type}, not integer",
                        "store index as an integer column (null where the artifact is a whole dataset)"))

    problems.extend(_structure_problems(art, art_name))
    return problems


def shape_text(shapes: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """'151,40' per row: lets shapes be grouped and compared as strings."""
    return pc.binary_join(pc.cast(shapes, pa.list_(pa.string())), ",")


def _structure_problems(art: pa.Table, art_name: str) -> list[Problem]:
    """One shape and one dtype per artifact type (arrays are rectangular)."""
    problems: list[Problem] = []
    a_type = art.column("type")
    columns = {}
    if "dtype" in art.column_names:
        dtypes = art.column("dtype")
        for value in pc.unique(dtypes).to_pylist():
            try:
                if value is not None:
                    np.dtype(value)
            except (TypeError, ValueError, SyntaxError):
                rows = _rows(pc.equal(dtypes, value))
                problems.append(Problem(f"{art_name} rows {_list_rows(rows)} column 'dtype'",
                                        f"{value!r} is not a numpy dtype", "use names like float64 or int32"))
        columns["dtype"] = dtypes
    if "shape" in art.column_names:
        shapes = art.column("shape")
        if not (pa.types.is_list(shapes.type) or pa.types.is_large_list(shapes.type)):
            problems.append(Problem(f"{art_name} column 'shape'", f"has type {shapes.type}",
                                    "store shape as a list of integers, e.g. [151, 40]"))
        else:
            columns["shape"] = shape_text(shapes)
    for name, values in columns.items():
        table = pa.table({"type": a_type, "v": values})
        counts = table.group_by(["type", "v"]).aggregate([("v", "count")]).to_pylist()
        by_type: dict[Any, list[tuple[int, Any]]] = {}
        for row in counts:
            if row["v"] is not None:
                by_type.setdefault(row["type"], []).append((row["v_count"], row["v"]))
        for t, variants in by_type.items():
            if len(variants) < 2:
                continue
            variants.sort(reverse=True)
            common = variants[0][1]
            rows = _rows(pc.and_kleene(pc.equal(a_type, t), pc.not_equal(values, common)))
            shown = ", ".join(f"[{v}]" if name == "shape" else str(v) for _, v in variants[:4])
            what = (f"type {t!r} is ragged: shapes {shown} (most common [{common}])" if name == "shape"
                    else f"type {t!r} has several dtypes {shown} (most common {common})")
            problems.append(Problem(f"{art_name} rows {_list_rows(rows)} column {name!r}", what,
                                    "arrays must be rectangular with one dtype per type: "
                                    "zero-pad or convert the outliers, or split the type"))
    return problems


def check(ham: pa.Table, art: pa.Table, **kwargs: Any) -> None:
    """Raise ContractError listing every problem, or return quietly."""
    problems = validate(ham, art, **kwargs)
    if problems:
        raise ContractError(problems)


# --------------------------------------------------------------------------- files


@dataclass
class Manifests:
    ham: pa.Table
    art: pa.Table
    description: DatasetDescription
    ham_path: Path | None = None
    art_path: Path | None = None

    def __repr__(self) -> str:
        d = self.description
        types = sorted(set(self.art.column("type").to_pylist())) if self.art.num_rows else []
        return (f"<Manifests {d.key!r}: {self.ham.num_rows} Hamiltonians, {self.art.num_rows} artifacts "
                f"{types}, root={d.root}>")


def _with_description(table: pa.Table, description: DatasetDescription) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.pop(b"pandas", None)  # the pandas index note is meaningless here
    meta[DESCRIPTION_KEY] = description.to_json().encode()
    return table.replace_schema_metadata(meta)


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    if not is_valid_key(name):
        raise SweepcatError(f"dataset key {name!r} is not a valid catalog key, so it cannot name manifest files",
                            "use letters, digits and _ . - only (set `key:` in the spec, or --label)")
    return out_dir / f"{name}{HAM_SUFFIX}", out_dir / f"{name}{ART_SUFFIX}"


def write_manifests(out_dir: str | os.PathLike, manifests: Manifests) -> tuple[Path, Path]:
    """Validate, then write both files atomically; nothing is written if invalid."""
    d = manifests.description
    check(manifests.ham, manifests.art, root=d.root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ham_path, art_path = manifest_paths(out, d.key)
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


def find_manifest_pair(directory: Path) -> tuple[Path, Path]:
    pairs = find_manifest_pairs(directory)
    if len(pairs) != 1:
        raise SweepcatError(
            f"{directory}: expected one manifest pair, found {len(pairs)} ({', '.join(h.name for h, _ in pairs)})",
            "pass the two Parquet files explicitly: HAM.parquet ART.parquet")
    return pairs[0]


def read_manifests(
    ham_path: str | os.PathLike,
    art_path: str | os.PathLike | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    label: str | None = None,
) -> Manifests:
    """Read a manifest pair (or a directory holding one) with its dataset description.

    Manifests without an embedded description (written by other tools) need
    ``base_dir``; the label then defaults to the file name's prefix.
    """
    ham_p = Path(ham_path)
    if art_path is None:
        if not ham_p.is_dir():
            raise SweepcatError(f"{ham_p} is not a directory",
                                "pass a manifest directory, or both HAM.parquet and ART.parquet")
        ham_p, art_p = find_manifest_pair(ham_p)
    else:
        art_p = Path(art_path)
    tables = []
    for p in (ham_p, art_p):
        try:
            tables.append(pq.read_table(p))
        except FileNotFoundError:
            raise SweepcatError(f"{p}: no such file", "check the path") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise SweepcatError(f"{p}: not a readable Parquet file ({exc})",
                                "regenerate it with `sweepcat manifest`") from None
    ham, art = (normalize_strings(t) for t in tables)
    raw = (ham.schema.metadata or {}).get(DESCRIPTION_KEY) or (art.schema.metadata or {}).get(DESCRIPTION_KEY)
    if raw is not None:
        description = DatasetDescription.from_json(raw)
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
    return Manifests(ham, art, description, ham_p, art_p)


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
    return Manifests(normalize_strings(ham), normalize_strings(art), DatasetDescription.from_json(raw))
