"""Manifests -> the rows Tiled's catalog holds, built column-wise (no per-row Python).

The rows match what Tiled's HTTP API writes for the same nodes: compact JSON
metadata, ``[]`` specs, one data source per array with ``{}`` properties, a
structure row keyed by the md5 of its canonical JSON, and ``file://localhost``
asset URIs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import ART_STANDARD, HAM_REQUIRED, Manifests, file_sha256, shape_text
from .schema import MIMETYPE

AXES_KEY = "_axes"  # child container of a dataset holding its shared axes


def compact_json(value: Any) -> str:
    """JSON as Tiled's server writes it (orjson: no spaces)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)




def structure_for(shape: list[int], dtype: str, dims: list[str] | None) -> tuple[str, dict[str, Any]]:
    """(structure id, structure dict) exactly as Tiled computes them: one chunk covering the array."""
    from tiled.catalog.utils import compute_structure_id
    from tiled.structures.array import ArrayStructure, BuiltinDtype

    structure = ArrayStructure(
        data_type=BuiltinDtype.from_numpy_dtype(np.dtype(dtype)),
        shape=tuple(int(s) for s in shape),
        chunks=tuple((int(s),) for s in shape),
        dims=tuple(dims) if dims else None,
    )
    as_dict = json.loads(json.dumps(dataclasses.asdict(structure), default=_enum_value))
    return compute_structure_id(as_dict), as_dict


def _enum_value(obj: Any) -> Any:
    return getattr(obj, "value", str(obj))


# --------------------------------------------------------------------------- vectorised JSON


def _json_string(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    escaped = pc.replace_substring(values, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, '"', '\\"')
    escaped = pc.replace_substring_regex(escaped, "[\\x00-\\x1f]", " ")
    return pc.binary_join_element_wise('"', escaped, '"', "")


def json_values(column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """Each value as JSON text; null -> ``null``."""
    t = column.type
    if pa.types.is_floating(t):
        text = pc.cast(pc.cast(column, pa.float64()), pa.string())
        # Keep floats floats: 2.0 must not come back as the integer 2.
        text = pc.if_else(pc.match_substring_regex(text, "[.eEn]"), text, pc.binary_join_element_wise(text, ".0", ""))
    elif pa.types.is_integer(t):
        text = pc.cast(column, pa.string())
    elif pa.types.is_boolean(t):
        text = pc.if_else(column, "true", "false")
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = _json_string(column)
    else:  # nested or exotic: per-row encoding, rare and small
        text = pa.array([compact_json(v) for v in column.to_pylist()], pa.string())
    return pc.fill_null(text, "null")


def _flat(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def json_objects(table: pa.Table, columns: list[str]) -> pa.Array:
    """One compact JSON object per row from the given columns, built with string kernels."""
    if not columns:
        return pa.array(["{}"], pa.string()).take(pa.array(np.zeros(table.num_rows, dtype=np.int32)))
    pieces: list[Any] = []
    for i, name in enumerate(columns):
        pieces.append(("{" if i == 0 else ",") + compact_json(name) + ":")
        pieces.append(json_values(table.column(name)))
    pieces.append("}")
    return _flat(pc.binary_join_element_wise(*pieces, ""))


# --------------------------------------------------------------------------- plan


@dataclass
class TypePlan:
    """One artifact type: every node of it shares one structure."""

    name: str
    structure_id: str
    structure: dict[str, Any]
    shape: list[int]
    dtype: str
    axes: list[str | None] | None
    dataset: str


@dataclass
class IngestPlan:
    dataset_key: str
    dataset_metadata: dict[str, Any]
    ham_keys: pa.Array  # in manifest order
    ham_metadata: pa.Array  # JSON text per Hamiltonian
    art_parent: np.ndarray  # position of each artifact's Hamiltonian in ham_keys
    art_type: pa.Array
    art_metadata: pa.Array
    art_parameters: pa.Array  # data source parameters (JSON) per artifact
    art_file: pa.Array  # relative path per artifact
    types: dict[str, TypePlan]
    axes: dict[str, dict[str, str]]  # shared axes: name -> {file, dataset}
    root: str
    ham: pa.Table  # the Hamiltonians manifest (parameters for the search table)


def parameter_summary(ham: pa.Table) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ham.column_names:
        if name in HAM_REQUIRED:
            continue
        col = ham.column(name)
        entry: dict[str, Any] = {"dtype": str(col.type)}
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            mm = pc.min_max(col).as_py()
            entry.update(min=mm["min"], max=mm["max"])
        out[name] = entry
    return out


def _types(manifests: Manifests) -> dict[str, TypePlan]:
    art = manifests.art
    cols = ["type", "dataset"] + [c for c in ("dtype",) if c in art.column_names]
    table = pa.table({c: art.column(c) for c in cols})
    if "shape" in art.column_names:
        table = table.append_column("shape_text", shape_text(art.column("shape")))
    if "axes" in art.column_names:
        table = table.append_column("axes_json", pa.array(
            [None] * art.num_rows, pa.string()) if art.num_rows == 0 else
            pc.binary_join(pc.fill_null(art.column("axes"), pa.scalar([], pa.list_(pa.string()))), "\x1f"))
    firsts = table.group_by("type", use_threads=False).aggregate([(c, "first") for c in table.column_names if c != "type"])
    types = {}
    for row in firsts.to_pylist():
        shape = [int(x) for x in row["shape_text_first"].split(",") if x] if row.get("shape_text_first") is not None else None
        axes = None
        if row.get("axes_json_first"):
            axes = [a or None for a in row["axes_json_first"].split("\x1f")]
        if shape is None or row.get("dtype_first") is None:
            raise ValueError(f"artifact type {row['type']!r} has no shape/dtype in the manifest")
        dims = axes if axes and all(axes) and len(axes) == len(shape) else None
        sid, structure = structure_for(shape, row["dtype_first"], dims)
        types[row["type"]] = TypePlan(row["type"], sid, structure, shape, row["dtype_first"], axes, row["dataset_first"])
    return types


def build_plan(manifests: Manifests) -> IngestPlan:
    """Everything to write, computed before the database is touched."""
    ham, art, d = manifests.ham, manifests.art, manifests.description
    types = _types(manifests)
    param_cols = ["huid"] + [c for c in ham.column_names if c not in HAM_REQUIRED]
    extra_art_cols = [c for c in art.column_names if c not in ART_STANDARD]
    positions = pc.index_in(art.column("huid"), value_set=ham.column("huid")).to_numpy(zero_copy_only=False)

    ds_part = pc.binary_join_element_wise('{"dataset":', _json_string(art.column("dataset")), "")
    if "index" in art.column_names:
        idx = pc.cast(art.column("index"), pa.int64())
        with_index = pc.binary_join_element_wise(ds_part, ',"index":', pc.cast(idx, pa.string()), "}", "")
        parameters = pc.if_else(pc.is_null(idx), pc.binary_join_element_wise(ds_part, "}", ""), with_index)
    else:
        parameters = pc.binary_join_element_wise(ds_part, "}", "")

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    provenance = dict(d.provenance)
    provenance.update({
        "ingested": now,
        "counts": {"hamiltonians": ham.num_rows, "artifacts": art.num_rows},
    })
    if manifests.ham_path is not None or "manifests" not in provenance:  # `register` sends its own
        provenance["manifests"] = {
            "hamiltonians": {"path": str(manifests.ham_path) if manifests.ham_path else None,
                             "sha256": file_sha256(manifests.ham_path)},
            "artifacts": {"path": str(manifests.art_path) if manifests.art_path else None,
                          "sha256": file_sha256(manifests.art_path)},
        }
    sweepcat_md = {
        "kind": "dataset",
        "label": d.label,
        "root": d.root,
        "contract_version": d.contract_version,
        "parameters": parameter_summary(ham),
        "artifacts": {t.name: {"dataset": t.dataset, "shape": t.shape, "dtype": t.dtype, "axes": t.axes,
                               "mimetype": MIMETYPE} for t in types.values()},
        "shared_axes": {name: {**ax, "node": f"{AXES_KEY}/{name}"} for name, ax in d.shared_axes.items()},
        "provenance": provenance,
    }
    return IngestPlan(
        dataset_key=d.key,
        dataset_metadata={**d.metadata, "sweepcat": sweepcat_md},
        ham_keys=_flat(ham.column("key")),
        ham_metadata=json_objects(ham, param_cols),
        art_parent=np.asarray(positions, dtype=np.int64),
        art_type=_flat(art.column("type")),
        art_metadata=json_objects(art, extra_art_cols),
        art_parameters=_flat(parameters),
        art_file=_flat(art.column("file")),
        types=types,
        axes=dict(d.shared_axes),
        root=d.root,
        ham=ham,
    )
