"""Reading many artifacts at once from HDF5: grouped by file, rows in index order, each file opened once.

Shared by the server's batch route and the client's direct (Mode A) reads.
Files and datasets are opened through an ``h5open.Opener``, so the file rule
holds for every read; a source whose dtype or entity shape no longer matches
the catalog is refused (``SourceChanged``), never cast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from .errors import SourceInvalid, SweepcatError
from .h5open import DatasetMissing, FileRefused, Opener
from .h5scan import dtype_name


class SourceChanged(SweepcatError):
    """A file no longer holds what the catalog recorded (dtype, shape, rows): refused, never cast."""


class SourceMissing(SweepcatError):
    """A file or dataset the catalog points at is gone."""


def filtered_chunk_bytes(node: h5py.Dataset) -> int:
    """Bytes of one chunk of a compressed (filtered) dataset, which HDF5 decompresses whole to read any of it;
    0 for data read as stored."""
    if node.chunks is None or not node.id.get_create_plist().get_nfilters():
        return 0
    return int(np.prod(node.chunks, dtype=np.int64)) * node.dtype.itemsize


@dataclass(frozen=True)
class Stack:
    """Where the rows of one stacked read live: ``file_idx[i]`` indexes ``paths``; ``indices[i]`` is the
    row of a batched dataset, or -1 for a whole dataset."""

    paths: list[str]
    file_idx: np.ndarray
    datasets: np.ndarray
    indices: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype

    def __len__(self) -> int:
        return len(self.file_idx)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def rows(self, start: int, stop: int) -> "Stack":
        return Stack(self.paths, self.file_idx[start:stop], self.datasets[start:stop], self.indices[start:stop],
                     self.shape, self.dtype)

    def groups(self) -> Iterator[tuple[str, str, np.ndarray]]:
        """(path, dataset, positions) per source, positions sorted by row."""
        n = len(self)
        if not n:
            return
        order = np.lexsort((self.indices, self.datasets.astype(str), self.file_idx))
        fi, ds = self.file_idx[order], self.datasets[order]
        breaks = np.flatnonzero((fi[1:] != fi[:-1]) | (ds[1:] != ds[:-1])) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, n], strict=True):
            yield self.paths[int(fi[start])], str(ds[start]), order[start:stop]


def _where(path: str, dataset: str, index: int | None = None) -> str:
    return f"file:{path}#{dataset}" + (f"[{index}]" if index is not None else "")


def check_source(node: h5py.Dataset, path: str, dataset: str, stack: Stack, rows: np.ndarray) -> None:
    """The dataset still matches the catalog: dtype, entity shape, enough rows."""
    if dtype_name(node.dtype) != dtype_name(stack.dtype):
        raise SourceChanged(f"{_where(path, dataset)}: the file holds {dtype_name(node.dtype)}, the catalog says "
                            f"{dtype_name(stack.dtype)}", "re-ingest the dataset (its files changed after ingest)")
    batched = rows[0] >= 0
    entity = tuple(node.shape[1:] if batched else node.shape)
    if entity != tuple(stack.shape):
        raise SourceChanged(f"{_where(path, dataset)}: the file's entity shape is {entity}, the catalog says "
                            f"{tuple(stack.shape)}", "re-ingest the dataset (its files changed after ingest)")
    if batched and rows[-1] >= node.shape[0]:
        raise SourceChanged(f"{_where(path, dataset, int(rows[-1]))}: index out of range ({node.shape[0]} rows)",
                            "re-ingest the dataset (its files changed after ingest)")


def _open_error(path: str, dataset: str, exc: BaseException) -> SweepcatError:
    if isinstance(exc, FileRefused):
        return FileRefused(_where(path, dataset), exc.reason)
    if isinstance(exc, FileNotFoundError):
        return SourceMissing(f"{_where(path, dataset)}: file not found", "restore the file or re-ingest the dataset")
    if isinstance(exc, DatasetMissing):
        return SourceMissing(exc.message, exc.hint)
    return SourceMissing(f"{_where(path, dataset)}: cannot be read as HDF5 ({exc})",
                         "restore the file or re-ingest the dataset")


def check_stack(stack: Stack, opener: Opener) -> int:
    """Open every source of a read under the rule and check it, before any byte is sent; returns the largest
    compressed chunk a read of it decompresses (bytes)."""
    largest = 0
    for path, dataset, positions in stack.groups():
        rows = np.sort(stack.indices[positions])
        try:
            with opener.dataset(path, dataset) as node:
                check_source(node, path, dataset, stack, rows)
                largest = max(largest, filtered_chunk_bytes(node))
        except (FileRefused, FileNotFoundError, DatasetMissing, OSError) as exc:
            raise _open_error(path, dataset, exc) from None
    return largest


def read_stacked(stack: Stack, opener: Opener, out: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``stack`` as one ``(n, *shape)`` array (into ``out`` when given)."""
    n = len(stack)
    if out is None:
        out = np.empty((n, *stack.shape), dtype=stack.dtype)
    for path, dataset, positions in stack.groups():
        rows = stack.indices[positions]
        try:
            with opener.dataset(path, dataset) as node:
                check_source(node, path, dataset, stack, rows)
                _copy(node, rows, positions, out)
        except (FileRefused, FileNotFoundError, DatasetMissing, OSError) as exc:
            raise _open_error(path, dataset, exc) from None
    return out


def _copy(node: h5py.Dataset, rows: np.ndarray, targets: np.ndarray, out: np.ndarray) -> None:
    """Rows (sorted) of one source into ``out[targets]``."""
    if rows[0] < 0:  # whole datasets (layouts A and C)
        for t in targets:
            node.read_direct(out, dest_sel=np.s_[int(t)])
        return
    distinct = bool(np.all(rows[1:] > rows[:-1]))
    in_order = distinct and bool(np.all(np.diff(targets) == 1))
    if in_order and rows[-1] - rows[0] + 1 == len(rows):
        # the common case (results in listing order): straight from the file into the output
        node.read_direct(out, np.s_[int(rows[0]):int(rows[-1]) + 1], np.s_[int(targets[0]):int(targets[-1]) + 1])
    elif in_order:
        out[int(targets[0]):int(targets[-1]) + 1] = _rows(node, rows)
    else:
        unique, inverse = np.unique(rows, return_inverse=True)
        out[targets] = _rows(node, unique)[inverse]


def _rows(node: h5py.Dataset, unique: np.ndarray) -> np.ndarray:
    """Rows ``unique`` (sorted) of a batched dataset: contiguous runs as slices, fewer calls."""
    if len(unique) == unique[-1] - unique[0] + 1:
        return node[int(unique[0]):int(unique[-1]) + 1]
    if len(unique) > 0.5 * (unique[-1] - unique[0] + 1):  # dense: one slice, then pick
        return node[int(unique[0]):int(unique[-1]) + 1][unique - unique[0]]
    return node[unique]


def stream_stacked(stack: Stack, opener: Opener, chunk_bytes: int) -> Iterator[memoryview]:
    """The stacked bytes in order, ``chunk_bytes`` at most at a time, through one reused buffer.

    Each chunk is valid until the next is requested (the consumer sends it first)."""
    per_chunk = max(1, chunk_bytes // max(1, stack.row_bytes))
    buffer = np.empty((min(per_chunk, len(stack)), *stack.shape), dtype=stack.dtype)
    for start in range(0, len(stack), per_chunk):
        stop = min(len(stack), start + per_chunk)
        part = buffer[: stop - start]
        read_stacked(stack.rows(start, stop), opener, out=part)
        yield memoryview(part.reshape(-1).view(np.uint8))


__all__ = ["Stack", "SourceChanged", "SourceMissing", "SourceInvalid", "check_stack", "read_stacked",
           "stream_stacked", "filtered_chunk_bytes"]
