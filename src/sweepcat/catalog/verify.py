"""Check manifests against the HDF5 files before anything is written.

Every (file, dataset) pair the manifest names must exist, with the declared
entity shape and dtype, and with enough rows for the largest index. Files are
opened once each, headers only.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from ..contract import path_problem
from ..errors import ContractError, Problem
from ..h5open import DatasetMissing, FileRefused, H5Handle, Opener, session
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


class FileSample:
    """The (file, dataset, type) groups of a uniform random sample of ``size`` files (all files for
    None), gathered over batches: a file's rank is a hash of its name, the lowest ranks are kept, so
    memory holds ``size`` files whatever the number of rows."""

    def __init__(self, size: int | None):
        self.size = size
        self.groups: dict[str, dict[tuple[str, str], dict]] = {}
        self._heap: list[tuple[int, str]] = []  # (-rank, file): the worst kept file on top

    @staticmethod
    def _rank(file: str) -> int:
        return int.from_bytes(hashlib.blake2b(file.encode(), digest_size=8).digest(), "little")

    def add(self, art: pa.Table) -> None:
        for g in _groups(art):
            file = g["file"]
            kept = self.groups.get(file)
            if kept is None:
                if self.size is not None and len(self.groups) >= self.size:
                    rank = self._rank(file)
                    if rank >= -self._heap[0][0]:
                        continue
                    _, evicted = heapq.heapreplace(self._heap, (-rank, file))
                    del self.groups[evicted]
                elif self.size is not None:
                    heapq.heappush(self._heap, (-self._rank(file), file))
                kept = self.groups[file] = {}
            key = (g["dataset"], g["type"])
            old = kept.get(key)
            if old is None:
                kept[key] = dict(g)
            else:  # the same file and dataset in another batch
                maxes = [x for x in (old["index_max"], g["index_max"]) if x is not None]
                old["index_max"] = max(maxes) if maxes else None
                old["index_count"] += g["index_count"]
                old["type_count"] += g["type_count"]

    def by_file(self) -> dict[str, list[dict]]:
        return {file: list(groups.values()) for file, groups in self.groups.items()}


def verify_sample(sample: FileSample, root: str, types: dict, *, progress: Callable[[int], None] | None = None,
                  opener: Opener | None = None) -> list[Problem]:
    """Problems found by opening the sampled files under the file rule (``opener``; default: the dataset
    root), so a symlink, external link, external storage or virtual dataset leaving it is reported by name."""
    opener = opener or session([root])
    problems: list[Problem] = []
    root_path = Path(root)
    for rel, entries in sorted(sample.by_file().items()):
        try:
            handle = opener.acquire(str(root_path / rel))
        except FileRefused as exc:
            problems.append(Problem(rel, exc.reason, "keep data files as regular files inside the dataset root"))
            continue
        except FileNotFoundError:
            problems.append(Problem(rel, f"listed in the artifacts manifest but missing under {root_path}",
                                    "restore the file, or regenerate the manifests"))
            continue
        except (OSError, RuntimeError) as exc:
            problems.append(Problem(rel, describe_open_error(exc), "re-copy or regenerate the file"))
            continue
        try:
            for g in entries:
                problem = _check_group(opener, handle, rel, g, types[g["type"]])
                if problem is not None:
                    problems.append(problem)
        finally:
            opener.release(handle)
        if progress:
            progress(1)
    return problems


def verify_against_files(art: pa.Table, root: str, types: dict, *, sample: int | None = 2000,
                         progress: Callable[[int], None] | None = None, opener: Opener | None = None) -> list[Problem]:
    """``verify_sample`` over one artifacts table."""
    files = FileSample(sample)
    files.add(art)
    return verify_sample(files, root, types, progress=progress, opener=opener)


def _check_group(opener: Opener, handle: H5Handle, rel: str, g: dict, t: Any) -> Problem | None:
    where = f"{rel}#{g['dataset']}"
    held: list[H5Handle] = []
    try:
        ds = opener.resolve(handle, g["dataset"], held)
        shape = list(ds.shape)
        dtype = dtype_name(ds.dtype)
    except FileRefused as exc:
        return Problem(where, exc.reason.removeprefix(f"{where}: "),
                       "write the data into files inside the dataset root (no links or storage that leave it)")
    except DatasetMissing:
        return Problem(where, f"dataset missing (artifact type {g['type']!r})",
                       "fix 'dataset' in the manifest, or regenerate the file")
    finally:
        for h in held:
            opener.release(h)
    indexed = g["index_count"] > 0
    if indexed and g["index_count"] != g["type_count"]:
        return Problem(where, "some rows have an index and some do not",
                       "give every row of a batched dataset its index")
    if indexed and (not shape or g["index_max"] >= shape[0]):
        return Problem(f"{where}[{g['index_max']}]", f"index out of range: the dataset has {shape[0] if shape else 0} "
                       "rows", "fix 'index' in the manifest, or regenerate it from the files")
    entity_shape = shape[1:] if indexed else shape
    if entity_shape != list(t.shape):
        return Problem(where, f"shape {entity_shape} in the file, {list(t.shape)} in the manifest",
                       "regenerate the manifests from the files (`sweepcat manifest`)")
    if dtype != t.dtype:
        return Problem(where, f"dtype {dtype} in the file, {t.dtype} in the manifest",
                       "regenerate the manifests from the files (`sweepcat manifest`)")
    return None


def read_axes(shared_axes: dict[str, dict[str, str]], root: str, opener: Opener | None = None) -> list[AxisInfo]:
    """Shape and dtype of each shared axis, opened under the file rule; raises ContractError naming the bad ones."""
    opener = opener or session([root])
    out, problems = [], []
    for name, ax in sorted(shared_axes.items()):
        rel, dataset = ax.get("file"), ax.get("dataset")
        why = path_problem(rel, Path(root))
        if why:
            problems.append(Problem(f"shared axis {name!r} file {rel!r}", why,
                                    "keep axis files inside the dataset root; fix shared_axes in the spec"))
            continue
        try:
            with opener.dataset(str(Path(root) / rel), str(dataset)) as ds:
                out.append(AxisInfo(name, rel, dataset, list(ds.shape), dtype_name(ds.dtype)))
        except FileRefused as exc:
            problems.append(Problem(f"{rel}#{dataset}", f"shared axis {name!r}: {exc.reason}",
                                    "keep axis files inside the dataset root; fix shared_axes in the spec"))
        except DatasetMissing:
            problems.append(Problem(f"{rel}#{dataset}", f"shared axis {name!r}: dataset missing",
                                    "fix shared_axes in the spec and regenerate the manifests"))
        except (OSError, RuntimeError, TypeError) as exc:
            problems.append(Problem(f"{rel}", f"shared axis {name!r}: {exc}",
                                    "fix shared_axes in the spec and regenerate the manifests"))
    if problems:
        raise ContractError(problems, subject="shared axes")
    return out
