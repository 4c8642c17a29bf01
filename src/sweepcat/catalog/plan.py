"""Manifest batches -> the rows Tiled's catalog holds, built column-wise (no per-row Python).

The rows are exactly what Tiled's HTTP API writes for the same nodes: metadata as orjson writes it
(Tiled's serializer: floats in orjson's shortest form, strings escaped as RFC 8259 requires, UTF-8
kept), ``[]`` specs, one data source per array with ``{}`` properties, a structure row keyed by the
md5 of its canonical JSON, and asset URIs from ``contract.asset_uri``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import ART_STANDARD, AXES_KEY, HAM_REQUIRED, DatasetDescription, Manifests, file_sha256, shape_text
from .schema import MIMETYPE


def compact_json(value: Any) -> str:
    """JSON exactly as Tiled's server writes it (orjson)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


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

_ESCAPES = {chr(c): json.dumps(chr(c))[1:-1] for c in range(32)}  # \u0000 ... \n \t ..., as orjson writes them


def _json_string(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    escaped = pc.replace_substring(values, "\\", "\\\\")
    escaped = pc.replace_substring(escaped, '"', '\\"')
    if pc.any(pc.match_substring_regex(escaped, "[\\x00-\\x1f]")).as_py():
        for char, escape in _ESCAPES.items():
            escaped = pc.replace_substring(escaped, char, escape)
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _json_floats(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """orjson's text of each float (null -> null): one C call for the whole column, split by pyarrow."""
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN -> "null"
    if not len(values):
        return pa.array([], pa.string())
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()[1:-1]
    return pc.split_pattern(pa.array([text], pa.large_string()), ",").flatten().cast(pa.string())


def json_values(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Each value as JSON text, exactly as orjson writes it; null -> ``null``."""
    t = column.type
    if pa.types.is_floating(t):
        return _json_floats(column)
    if pa.types.is_integer(t):
        text = pc.cast(column, pa.string())
    elif pa.types.is_boolean(t):
        text = pc.if_else(column, "true", "false")
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = _json_string(column)
    else:  # nested: per-row encoding, rare and small
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


# --------------------------------------------------------------------------- rows of one batch


def hamiltonian_metadata(ham: pa.Table) -> pa.Array:
    """A Hamiltonian node's metadata: huid and every parameter, in manifest order."""
    return json_objects(ham, ["huid"] + [c for c in ham.column_names if c not in HAM_REQUIRED])


def artifact_metadata(art: pa.Table) -> pa.Array:
    """An artifact node's metadata: the manifest's extra columns."""
    return json_objects(art, [c for c in art.column_names if c not in ART_STANDARD])


def data_source_parameters(art: pa.Table) -> pa.Array:
    """``{"dataset": ..., "index": ...}`` per artifact (``index`` only for rows of batched datasets)."""
    ds_part = pc.binary_join_element_wise('{"dataset":', _json_string(art.column("dataset")), "")
    if "index" not in art.column_names or pa.types.is_null(art.schema.field("index").type):
        return _flat(pc.binary_join_element_wise(ds_part, "}", ""))
    idx = pc.cast(art.column("index"), pa.int64())
    with_index = pc.binary_join_element_wise(ds_part, ',"index":', pc.cast(idx, pa.string()), "}", "")
    return _flat(pc.if_else(pc.is_null(idx), pc.binary_join_element_wise(ds_part, "}", ""), with_index))


# --------------------------------------------------------------------------- what a dataset holds


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


def type_plan(name: str, dataset: str, shape: list[int], dtype: str, axes: list[str | None] | None) -> TypePlan:
    dims = axes if axes and all(axes) and len(axes) == len(shape) else None
    sid, structure = structure_for(shape, dtype, dims)
    return TypePlan(name, sid, structure, shape, dtype, axes, dataset)


def first_of_each_type(art: pa.Table) -> dict[str, dict[str, Any]]:
    """The first row of each artifact type in a batch: its dataset, shape, dtype and axes."""
    cols = {"type": art.column("type"), "dataset": art.column("dataset")}
    for c in ("dtype",):
        if c in art.column_names:
            cols[c] = art.column(c)
    if "shape" in art.column_names:
        cols["shape_text"] = shape_text(art.column("shape"))
    if "axes" in art.column_names and art.num_rows:
        cols["axes_text"] = pc.binary_join(pc.fill_null(art.column("axes"), pa.scalar([], pa.list_(pa.string()))),
                                           "\x1f")
    table = pa.table(cols)
    firsts = table.group_by("type", use_threads=False).aggregate(
        [(c, "first") for c in table.column_names if c != "type"])
    out = {}
    for row in firsts.to_pylist():
        shape_t = row.get("shape_text_first")
        axes_t = row.get("axes_text_first")
        out[row["type"]] = {
            "dataset": row["dataset_first"],
            "shape": [int(x) for x in shape_t.split(",") if x] if shape_t is not None else None,
            "dtype": row.get("dtype_first"),
            "axes": [a or None for a in axes_t.split("\x1f")] if axes_t else None,
        }
    return out


@dataclass
class ParameterSummary:
    """Each parameter's Arrow type and range, accumulated over batches."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, ham: pa.Table) -> None:
        for name in ham.column_names:
            if name in HAM_REQUIRED:
                continue
            col = ham.column(name)
            entry = self.entries.setdefault(name, {"dtype": str(col.type)})
            if (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) and col.null_count < len(col):
                mm = pc.min_max(col).as_py()
                lo, hi = entry.get("min"), entry.get("max")
                entry["min"] = mm["min"] if lo is None else min(lo, mm["min"])
                entry["max"] = mm["max"] if hi is None else max(hi, mm["max"])


def provenance(m: Manifests, n_ham: int, n_art: int) -> dict[str, Any]:
    d = m.description
    out = dict(d.provenance)
    out.update({"ingested": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "counts": {"hamiltonians": n_ham, "artifacts": n_art}})
    if m.ham_path is not None or "manifests" not in out:  # `register` sends its own
        out["manifests"] = {
            "hamiltonians": {"path": str(m.ham_path) if m.ham_path else None, "sha256": file_sha256(m.ham_path)},
            "artifacts": {"path": str(m.art_path) if m.art_path else None, "sha256": file_sha256(m.art_path)},
        }
    return out


def summary_of(metadata: Any) -> dict[str, Any]:
    """sweepcat's summary in a dataset node's metadata, with each known section a dict of dicts.

    Node metadata is writable through Tiled's API: a value of another shape reads as absent (and is
    rewritten by the next ingest), never as an error in the operator's commands or a 500."""
    summary = metadata.get("sweepcat") if isinstance(metadata, dict) else None
    out = dict(summary) if isinstance(summary, dict) else {}
    for section in ("parameters", "artifacts", "shared_axes"):
        entries = out.get(section)
        out[section] = {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}
    if not isinstance(out.get("provenance"), dict):
        out["provenance"] = {}
    if not isinstance(out.get("label"), str):
        out.pop("label", None)
    return out


def merged_range(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A parameter's summary over an earlier ingest's and this one's rows (numeric ranges widen)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if all(number(e.get(k)) for e in (old, new) for k in ("min", "max")):
        return {**new, "min": min(old["min"], new["min"]), "max": max(old["max"], new["max"])}
    return new


def dataset_metadata(d: DatasetDescription, types: dict[str, TypePlan], parameters: dict[str, Any],
                     prov: dict[str, Any]) -> dict[str, Any]:
    """The dataset node's metadata: the description's own, and sweepcat's summary under ``sweepcat``."""
    sweepcat_md = {
        "kind": "dataset",
        "label": d.label,
        "root": d.root,
        "contract_version": d.contract_version,
        "parameters": parameters,
        "artifacts": {t.name: {"dataset": t.dataset, "shape": t.shape, "dtype": t.dtype, "axes": t.axes,
                               "mimetype": MIMETYPE} for t in types.values()},
        "shared_axes": {name: {**ax, "node": f"{AXES_KEY}/{d.key}/{name}"} for name, ax in d.shared_axes.items()},
        "provenance": prov,
    }
    return {**d.metadata, "sweepcat": sweepcat_md}
