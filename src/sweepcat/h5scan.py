"""Reading HDF5 structure without reading arrays: the shared ground of inspect and manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

H5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".nxs", ".nx5")


@dataclass(frozen=True)
class DatasetInfo:
    path: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class FileScan:
    rel: str  # relative to the dataset root, '/'-separated
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)
    attrs: dict[str, float | int] = field(default_factory=dict)  # numeric scalar root attributes
    error: str | None = None

    @property
    def stem(self) -> str:
        return Path(self.rel).stem


def dtype_name(dtype: np.dtype) -> str:
    """Portable dtype name (float64, int32, complex128); byte order is the reader's business."""
    return np.dtype(dtype).newbyteorder("=").name if np.dtype(dtype).kind in "biufc" else str(dtype)


def list_files(root: Path) -> list[str]:
    """Every regular file under root (relative, sorted), hidden files and folders excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def describe_open_error(exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text.lower() or "eof" in text.lower():
        return f"truncated HDF5 file ({text})"
    if "signature" in text.lower():
        return f"not an HDF5 file ({text})"
    return f"cannot be read as HDF5 ({text})"


def scan_file(root: Path, rel: str) -> FileScan:
    """Structure of one file: dataset paths, shapes, dtypes, numeric root attributes."""
    scan = FileScan(rel)
    path = root / rel
    try:
        with h5py.File(path, "r") as f:
            def visit(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset):
                    scan.datasets["/" + name] = DatasetInfo("/" + name, tuple(obj.shape), dtype_name(obj.dtype))

            f.visititems(visit)
            for k, v in f.attrs.items():
                if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                    scan.attrs[k] = v.item() if hasattr(v, "item") else v
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        scan.error = describe_open_error(exc)
    return scan
