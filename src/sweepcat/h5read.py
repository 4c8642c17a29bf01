"""Reading many artifacts at once from HDF5: grouped by file, rows in index order, each file opened once.

Shared by the server's batch route and the client's direct (Mode A) reads.
"""

from __future__ import annotations

from typing import Callable

import h5py
import numpy as np

from .errors import SweepcatError

Opener = Callable[[str], h5py.File]


def _open(path: str) -> h5py.File:
    return h5py.File(path, "r")


def read_stacked(paths: list[str], file_idx: np.ndarray, datasets: np.ndarray, indices: np.ndarray,
                 shape: tuple[int, ...], dtype: np.dtype, *, opener: Opener | None = None,
                 close: bool = True) -> np.ndarray:
    """Stack ``len(file_idx)`` artifacts into ``(n, *shape)``.

    ``file_idx[i]`` indexes ``paths``; ``datasets[i]`` is the HDF5 path;
    ``indices[i]`` the row of a batched dataset, or -1 for a whole dataset.
    """
    n = len(file_idx)
    out = np.empty((n, *shape), dtype=dtype)
    if n == 0:
        return out
    opener = opener or _open
    order = np.lexsort((indices, datasets.astype(str), file_idx))  # by file, dataset, then row
    fi, ds, ix = file_idx[order], datasets[order], indices[order]
    breaks = np.flatnonzero((fi[1:] != fi[:-1]) | (ds[1:] != ds[:-1])) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, n]):
        path, dataset = paths[int(fi[start])], str(ds[start])
        try:
            f = opener(path)
        except (OSError, FileNotFoundError) as exc:
            raise SweepcatError(f"file:{path}#{dataset}: cannot open ({exc})",
                                "the file moved or is unreadable; re-ingest the dataset or restore it") from None
        try:
            node = f.get(dataset)
            if not isinstance(node, h5py.Dataset):
                raise SweepcatError(f"file:{path}#{dataset}: no such dataset", "re-ingest the dataset")
            rows = ix[start:stop]
            targets = order[start:stop]
            if rows[0] < 0:  # whole datasets (layouts A and C): one per file and type
                for t in targets:
                    out[t] = node[()]
                continue
            if rows[-1] >= node.shape[0]:
                raise SweepcatError(f"file:{path}#{dataset}[{int(rows[-1])}]: index out of range "
                                    f"({node.shape[0]} rows)", "re-ingest the dataset")
            distinct = bool(np.all(rows[1:] > rows[:-1]))
            in_order = distinct and targets[-1] - targets[0] + 1 == len(targets) and bool(np.all(np.diff(targets) == 1))
            if in_order and rows[-1] - rows[0] + 1 == len(rows):
                # the common case (results in listing order): straight from the file into the output
                node.read_direct(out, np.s_[int(rows[0]):int(rows[-1]) + 1],
                                 np.s_[int(targets[0]):int(targets[-1]) + 1])
            elif in_order:
                out[int(targets[0]):int(targets[-1]) + 1] = _rows(node, rows)
            else:
                unique, inverse = np.unique(rows, return_inverse=True)
                out[targets] = _rows(node, unique)[inverse]
        finally:
            if close:
                f.close()
    return out


def _rows(node: h5py.Dataset, unique: np.ndarray) -> np.ndarray:
    """Rows ``unique`` (sorted) of a batched dataset: contiguous runs as slices, fewer calls."""
    if len(unique) == unique[-1] - unique[0] + 1:
        return node[int(unique[0]):int(unique[-1]) + 1]
    if len(unique) > 0.5 * (unique[-1] - unique[0] + 1):  # dense: one slice, then pick
        return node[int(unique[0]):int(unique[-1]) + 1][unique - unique[0]]
    return node[unique]
