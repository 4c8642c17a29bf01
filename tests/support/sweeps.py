"""Small sweeps written from scratch (HDF5 files and manifest tables), for tests that need data the
demo generator does not make: odd file names, odd parameters, many rows, chosen dtypes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import pyarrow as pa

from sweepcat.contract import DatasetDescription, Manifests


def make_sweep(root: Path, n: int, *, key: str = "sweep", per_file: int | None = None,
               file_name: Callable[[int], str] = lambda i: f"part{i:03d}.h5", shape: Sequence[int] = (5,),
               dtype: str = "float64", params: dict[str, Any] | None = None, type_: str = "xps",
               metadata: dict[str, Any] | None = None, prefix: str = "H") -> Manifests:
    """``n`` Hamiltonians, ``per_file`` to a batched HDF5 file (dataset ``/X``, row i of a file holds
    ``base + i`` everywhere), one artifact each; ``params``: name -> column values (default: one
    float parameter ``p``). Returns the manifests (in memory)."""
    root.mkdir(parents=True, exist_ok=True)
    per_file = per_file or n
    files, indices = [], []
    for f in range((n + per_file - 1) // per_file):
        rows = min(per_file, n - f * per_file)
        name = file_name(f)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(root / name, "w") as h5:
            values = (np.arange(f * per_file, f * per_file + rows, dtype="float64")
                      [:, None] * np.ones((1, int(np.prod(shape))))).reshape(rows, *shape)
            h5.create_dataset("X", data=values.astype(dtype))
        files += [name] * rows
        indices += list(range(rows))
    keys = [f"{prefix}{i:07d}" for i in range(n)]
    columns: dict[str, Any] = {"huid": keys, "key": keys}
    columns.update(params if params is not None else {"p": np.linspace(0.0, 1.0, n)})
    ham = pa.table(columns)
    art = pa.table({"huid": keys, "type": [type_] * n, "file": files, "dataset": ["/X"] * n,
                    "index": pa.array(indices, pa.int64()),
                    "shape": pa.array([list(shape)] * n, pa.list_(pa.int64())), "dtype": [dtype] * n})
    description = DatasetDescription(label=key, key=key, root=str(root), metadata=metadata or {})
    return Manifests(ham, art, description)


def expected_row(i: int, shape: Sequence[int] = (5,), dtype: str = "float64") -> np.ndarray:
    """What ``make_sweep`` wrote for Hamiltonian ``i``."""
    return np.full(tuple(shape), float(i)).astype(dtype)
