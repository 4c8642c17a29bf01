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

import json
import os
import re
import tempfile
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ContractError, Problem, SweepcatError

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
        quoted = urllib.parse.quote(Path(path).as_posix())
        fragment = urllib.parse.quote(self.dataset, safe="/_-.~")
        if self.index is not None:
            fragment += f"[{int(self.index)}]"
        return f"file://{quoted}#{fragment}"

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


def locator_urls(root: str, files: pd.Series, datasets: pd.Series, indices: pd.Series) -> pd.Series:
    """Vectorised ``Locator.url`` for whole result tables."""
    base = "file://" + urllib.parse.quote(Path(root).as_posix().rstrip("/")) + "/"
    quoted_files = files.map(lambda f: urllib.parse.quote(str(f)))
    quoted_ds = datasets.map(lambda d: urllib.parse.quote(str(d), safe="/_-.~"))
    out = base + quoted_files + "#" + quoted_ds
    has_idx = indices.notna()
    suffix = pd.Series("", index=indices.index, dtype=object)
    suffix[has_idx] = "[" + indices[has_idx].astype("int64").astype(str) + "]"
    return out + suffix


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


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask, dtype=bool))


def _list_rows(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


def parameter_columns(ham: pa.Table) -> list[str]:
    return [c for c in ham.column_names if c not in HAM_REQUIRED]


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


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
    and infinities are not.
    """
    problems: list[Problem] = []
    add = problems.append

    for name, table, required in ((ham_name, ham, HAM_REQUIRED), (art_name, art, ART_REQUIRED)):
        for col in required:
            if col not in table.column_names:
                add(Problem(name, f"missing required column {col!r}",
                            f"add the column; required are {', '.join(required)}"))
    if problems:
        return problems

    # -- Hamiltonians
    for col in HAM_REQUIRED:
        values = ham.column(col).to_pandas()
        if not pa.types.is_string(ham.schema.field(col).type) and not pa.types.is_large_string(
            ham.schema.field(col).type
        ):
            add(Problem(f"{ham_name} column {col!r}", f"has type {ham.schema.field(col).type}, not string",
                        "store identifiers as strings"))
            continue
        empty = values.isna() | (values == "")
        if empty.any():
            rows = _rows(empty)
            add(Problem(f"{ham_name} rows {_list_rows(rows)} column {col!r}", "is empty",
                        f"give every Hamiltonian a {col}"))
        dup = values.duplicated(keep=False) & ~empty
        if dup.any():
            rows = _rows(dup)
            first = values.iloc[rows[0]]
            add(Problem(f"{ham_name} rows {_list_rows(rows)} column {col!r}",
                        f"duplicate {col} (e.g. {first!r}); {col} must be unique",
                        f"derive {col} from something unique, such as file name and row index"))
        if col == "key":
            bad = ~empty & ~values.fillna("").map(is_valid_key).astype(bool)
            if bad.any():
                rows = _rows(bad)
                add(Problem(f"{ham_name} rows {_list_rows(rows)} column 'key'",
                            f"{values.iloc[rows[0]]!r} is not a valid catalog key",
                            "use letters, digits and _ . - only (no '/' or spaces)"))

    for col in parameter_columns(ham):
        arr = ham.column(col)
        if _is_numeric(arr.type):
            values = arr.to_numpy(zero_copy_only=False)
            nulls = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if pa.types.is_floating(arr.type):
                nonfinite = ~np.isfinite(np.where(nulls, 0.0, values.astype("float64")))
                if nonfinite.any():
                    rows = _rows(nonfinite)
                    add(Problem(f"{ham_name} rows {_list_rows(rows)} column {col!r}",
                                f"parameter is not finite ({values[rows[0]]!r} at row {rows[0]})",
                                "fix the simulation output, or regenerate with --nan-policy null|skip"))

    # -- Artifacts
    a_huid = art.column("huid").to_pandas()
    a_type = art.column("type").to_pandas()
    h_huid = ham.column("huid").to_pandas()
    orphan = ~a_huid.isin(h_huid)
    if orphan.any():
        rows = _rows(orphan)
        add(Problem(f"{art_name} rows {_list_rows(rows)} column 'huid'",
                    f"huid {a_huid.iloc[rows[0]]!r} is not in {ham_name}",
                    "add the Hamiltonian or drop its artifacts"))
    bad_type = a_type.isna() | ~a_type.fillna("").map(is_valid_key).astype(bool)
    if bad_type.any():
        rows = _rows(bad_type)
        add(Problem(f"{art_name} rows {_list_rows(rows)} column 'type'",
                    f"{a_type.iloc[rows[0]]!r} is not a valid artifact type (it becomes a catalog key)",
                    "use letters, digits and _ . - only, e.g. 'rixs'"))
    pair = pd.DataFrame({"huid": a_huid, "type": a_type})
    dup = pair.duplicated(keep=False).to_numpy() & ~bad_type.to_numpy()
    if dup.any():
        rows = _rows(dup)
        add(Problem(f"{art_name} rows {_list_rows(rows)} columns 'huid','type'",
                    f"type {a_type.iloc[rows[0]]!r} appears more than once for huid {a_huid.iloc[rows[0]]!r}",
                    "type must be unique per huid: name them apart, e.g. mag_x and mag_y"))

    files = art.column("file").to_pandas()
    root_path = Path(root) if root is not None else None
    for file, idx in files.groupby(files.fillna(""), sort=False).groups.items():
        why = path_problem(file, root_path)
        if why is None and check_files_exist and root_path is not None and not (root_path / file).is_file():
            why = f"does not exist under {root_path}"
        if why:
            rows = np.sort(np.asarray(files.index.get_indexer(idx)))
            add(Problem(f"{art_name} rows {_list_rows(rows)} column 'file'", f"{file!r} {why}",
                        "list files relative to the dataset root, inside it"))

    datasets = art.column("dataset").to_pandas()
    empty_ds = datasets.isna() | (datasets == "")
    if empty_ds.any():
        rows = _rows(empty_ds)
        add(Problem(f"{art_name} rows {_list_rows(rows)} column 'dataset'", "is empty",
                    "give the HDF5 dataset path, e.g. /RIXS"))

    if "index" in art.column_names:
        col = art.column("index")
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
            values = col.to_pandas()
            present = values.notna()
            numeric = values[present].astype("float64")
            bad = pd.Series(False, index=values.index)
            bad[present] = (numeric < 0) | (numeric != np.floor(numeric))
            if bad.any():
                rows = _rows(bad)
                add(Problem(f"{art_name} rows {_list_rows(rows)} column 'index'",
                            f"{values.iloc[rows[0]]!r} is not a non-negative integer",
                            "index is the row along axis 0 of a batched dataset; leave it null otherwise"))
        else:
            add(Problem(f"{art_name} column 'index'", f"has type {col.type}, not integer",
                        "store index as an integer column (null where the artifact is a whole dataset)"))

    problems.extend(_structure_problems(art, a_type, art_name))
    return problems


def _structure_problems(art: pa.Table, a_type: pd.Series, art_name: str) -> list[Problem]:
    """One shape and one dtype per artifact type (arrays are rectangular)."""
    problems: list[Problem] = []
    if "dtype" in art.column_names:
        dtypes = art.column("dtype").to_pandas()
        for value in dtypes.dropna().unique():
            try:
                np.dtype(value)
            except TypeError:
                rows = _rows(dtypes == value)
                problems.append(Problem(f"{art_name} rows {_list_rows(rows)} column 'dtype'",
                                        f"{value!r} is not a numpy dtype", "use names like float64 or int32"))
        for t, group in dtypes.groupby(a_type, sort=False):
            distinct = group.dropna().unique()
            if len(distinct) > 1:
                rows = np.asarray(group.index[group != distinct[0]])
                problems.append(Problem(f"{art_name} rows {_list_rows(rows)} column 'dtype'",
                                        f"type {t!r} has several dtypes {sorted(map(str, distinct))}",
                                        "one dtype per artifact type: convert the outliers or split the type"))
    if "shape" in art.column_names:
        shapes = art.column("shape")
        if not (pa.types.is_list(shapes.type) or pa.types.is_large_list(shapes.type)):
            problems.append(Problem(f"{art_name} column 'shape'", f"has type {shapes.type}",
                                    "store shape as a list of integers, e.g. [151, 40]"))
            return problems
        as_text = pd.Series(
            [None if s is None else json.dumps(s) for s in shapes.to_pylist()], index=a_type.index, dtype=object
        )
        for t, group in as_text.groupby(a_type, sort=False):
            distinct = group.dropna().unique()
            if len(distinct) > 1:
                counts = group.value_counts()
                common = counts.index[0]
                rows = np.asarray(group.index[group != common])
                problems.append(Problem(
                    f"{art_name} rows {_list_rows(rows)} column 'shape'",
                    f"type {t!r} is ragged: shapes {', '.join(counts.index[:4])} (most common {common})",
                    "arrays must be rectangular: zero-pad to a common shape, or split the type"))
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


def manifest_paths(out_dir: Path, name: str) -> tuple[Path, Path]:
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
    _atomic_write_parquet(ham, ham_path)
    _atomic_write_parquet(art, art_path)
    return ham_path, art_path


def find_manifest_pair(directory: Path) -> tuple[Path, Path]:
    hams = sorted(directory.glob(f"*{HAM_SUFFIX}"))
    if len(hams) != 1:
        found = ", ".join(p.name for p in hams) or "none"
        raise SweepcatError(
            f"{directory}: expected exactly one *{HAM_SUFFIX} file, found {found}",
            "pass the two Parquet files explicitly: HAM.parquet ART.parquet",
        )
    art = hams[0].with_name(hams[0].name[: -len(HAM_SUFFIX)] + ART_SUFFIX)
    if not art.exists():
        raise SweepcatError(f"{art} is missing (the artifacts manifest beside {hams[0].name})",
                            "regenerate the manifests with `sweepcat manifest`")
    return hams[0], art


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
    ham, art = tables
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
