"""Check manifests against the HDF5 files before anything is written.

Every (file, dataset) pair the manifest names must exist, with the declared
entity shape and dtype, and with enough rows for the largest index. Files are
opened once each, headers only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import path_problem
from ..errors import ContractError, Problem
from ..h5scan import describe_open_error, dtype_name


@dataclass
class AxisInfo:
    name: str
    file: str
    dataset: str
    shape: list[int]
    dtype: str


def _groups(art: pa.Table) -> list[dict]:
    cols = {"file": art.column("file"), "dataset": art.column("dataset"), "type": art.column("type")}
    if "index" in art.column_names:
        cols["index"] = pc.cast(art.column("index"), pa.int64())
    else:
        cols["index"] = pa.nulls(art.num_rows, pa.int64())
    table = pa.table(cols)
    grouped = table.group_by(["file", "dataset", "type"], use_threads=False).aggregate(
        [("index", "max"), ("index", "count"), ("type", "count")])
    return grouped.to_pylist()


def verify_against_files(art: pa.Table, root: str, types: dict, *, sample: int | None = 2000,
                         progress: Callable[[int], None] | None = None) -> list[Problem]:
    """Problems found by opening the files (all of them, or ``sample`` files chosen at random)."""
    groups = _groups(art)
    files = sorted({g["file"] for g in groups})
    if sample is not None and len(files) > sample:
        chosen = set(random.Random(0).sample(files, sample))
        groups = [g for g in groups if g["file"] in chosen]
    by_file: dict[str, list[dict]] = {}
    for g in groups:
        by_file.setdefault(g["file"], []).append(g)
    problems: list[Problem] = []
    root_path = Path(root)
    for rel, entries in by_file.items():
        path = root_path / rel
        if not path.is_file():
            problems.append(Problem(rel, f"listed in the artifacts manifest but missing under {root_path}",
                                    "restore the file, or regenerate the manifests"))
            continue
        try:
            f = h5py.File(path, "r")
        except (OSError, RuntimeError) as exc:
            problems.append(Problem(rel, describe_open_error(exc), "re-copy or regenerate the file"))
            continue
        with f:
            for g in entries:
                t = types[g["type"]]
                ds = f.get(g["dataset"])
                if not isinstance(ds, h5py.Dataset):
                    problems.append(Problem(f"{rel}#{g['dataset']}", f"dataset missing (artifact type {g['type']!r})",
                                            "fix 'dataset' in the manifest, or regenerate the file"))
                    continue
                shape = list(ds.shape)
                indexed = g["index_count"] > 0
                if indexed and g["index_count"] != g["type_count"]:
                    problems.append(Problem(f"{rel}#{g['dataset']}", "some rows have an index and some do not",
                                            "give every row of a batched dataset its index"))
                    continue
                entity_shape = shape[1:] if indexed else shape
                if indexed and (not shape or g["index_max"] >= shape[0]):
                    problems.append(Problem(f"{rel}#{g['dataset']}[{g['index_max']}]",
                                            f"index out of range: the dataset has {shape[0] if shape else 0} rows",
                                            "fix 'index' in the manifest, or regenerate it from the files"))
                    continue
                if entity_shape != list(t.shape):
                    problems.append(Problem(f"{rel}#{g['dataset']}",
                                            f"shape {entity_shape} in the file, {list(t.shape)} in the manifest",
                                            "regenerate the manifests from the files (`sweepcat manifest`)"))
                    continue
                if dtype_name(ds.dtype) != t.dtype:
                    problems.append(Problem(f"{rel}#{g['dataset']}",
                                            f"dtype {dtype_name(ds.dtype)} in the file, {t.dtype} in the manifest",
                                            "regenerate the manifests from the files (`sweepcat manifest`)"))
        if progress:
            progress(1)
    return problems


def read_axes(shared_axes: dict[str, dict[str, str]], root: str) -> list[AxisInfo]:
    """Shape and dtype of each shared axis; raises ContractError naming the bad ones."""
    out, problems = [], []
    for name, ax in sorted(shared_axes.items()):
        rel, dataset = ax.get("file"), ax.get("dataset")
        why = path_problem(rel, Path(root))
        if why:
            problems.append(Problem(f"shared axis {name!r} file {rel!r}", why,
                                    "keep axis files inside the dataset root; fix shared_axes in the spec"))
            continue
        try:
            with h5py.File(Path(root) / rel, "r") as f:
                ds = f.get(dataset)
                if not isinstance(ds, h5py.Dataset):
                    problems.append(Problem(f"{rel}#{dataset}", f"shared axis {name!r}: dataset missing",
                                            "fix shared_axes in the spec and regenerate the manifests"))
                    continue
                out.append(AxisInfo(name, rel, dataset, list(ds.shape), dtype_name(ds.dtype)))
        except (OSError, RuntimeError, TypeError) as exc:
            problems.append(Problem(f"{rel}", f"shared axis {name!r}: {exc}",
                                    "fix shared_axes in the spec and regenerate the manifests"))
    if problems:
        raise ContractError(problems, subject="shared axes")
    return out

