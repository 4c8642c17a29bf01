"""Reading HDF5 structure without reading arrays: the shared ground of inspect and manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .h5open import DatasetMissing, FileRefused, H5Handle, Opener, session

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
    error: str | None = None  # the file cannot be used at all
    refused: list[tuple[str, str]] = field(default_factory=list)  # (dataset path, why the file rule refuses it)

    @property
    def stem(self) -> str:
        return Path(self.rel).stem


def dtype_name(dtype: np.dtype) -> str:
    """Portable dtype name (float64, int32, complex128); byte order is the reader's business."""
    return np.dtype(dtype).newbyteorder("=").name if np.dtype(dtype).kind in "biufc" else str(dtype)


def list_files(root: Path) -> list[str]:
    """Every file under root (relative, sorted), hidden files and folders excluded; symlinked folders are
    not followed. FIFOs and devices are listed too: whoever opens them refuses them by name."""
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


def scan_file(root: Path, rel: str, opener: Opener | None = None) -> FileScan:
    """Structure of one file under the file rule: dataset paths, shapes, dtypes, numeric root attributes.

    Datasets reached through external links inside the root count as the file's; links, external
    storage and virtual datasets that leave the root are listed in ``refused`` by name."""
    scan = FileScan(rel)
    opener = opener or session([root])
    try:
        handle = opener.acquire(str(root / rel))
    except FileRefused as exc:
        scan.error = exc.reason
        return scan
    except FileNotFoundError:
        scan.error = "disappeared while being inspected"
        return scan
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        scan.error = describe_open_error(exc)
        return scan
    try:
        names: list[str] = []
        handle.file.visititems_links(lambda name, link: names.append("/" + name)
                                     if not isinstance(link, h5py.SoftLink) else None)
        for name in names:
            held: list[H5Handle] = []
            try:
                link = handle.file.get(name, getlink=True)
                if isinstance(link, h5py.HardLink) and handle.file.get(name, getclass=True) is not h5py.Dataset:
                    continue  # groups, committed datatypes
                ds = opener.resolve(handle, name, held)
                scan.datasets[name] = DatasetInfo(name, tuple(ds.shape), dtype_name(ds.dtype))
            except FileRefused as exc:
                scan.refused.append((name, exc.reason))
            except DatasetMissing:
                continue  # an external link to a group, or a dangling one: nothing to read
            finally:
                for h in held:
                    opener.release(h)
        for k, v in handle.file.attrs.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
                scan.attrs[k] = v.item() if hasattr(v, "item") else v
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        scan.error = describe_open_error(exc)
    finally:
        opener.release(handle)
    return scan


def read_parameters(opener: Opener, handle: H5Handle, group: str | None,
                    names: list[str] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """(values, missing names) of one file's parameters, read under the file rule: the datasets of
    ``group`` (every one when ``names`` is None), or numeric scalar root attributes when ``group`` is None.

    Raises DatasetMissing when the group is missing and FileRefused when a parameter's storage or
    link leaves the root."""
    if group is None:
        attrs = handle.file.attrs
        names = names or sorted(k for k, v in attrs.items() if np.ndim(v) == 0)
        return ({n: np.atleast_1d(np.asarray(attrs[n])) for n in names if n in attrs},
                [n for n in names if n not in attrs])
    held: list[H5Handle] = []
    try:
        grp = opener.resolve(handle, group, held, group=True)
        present = list(grp.keys())
        values: dict[str, np.ndarray] = {}
        for n in names or sorted(present):
            if n not in present:
                continue
            try:
                values[n] = np.atleast_1d(opener.resolve(handle, f"{group.rstrip('/')}/{n}", held)[()])
            except DatasetMissing:
                if names:
                    raise
        return values, [n for n in names or [] if n not in values]
    finally:
        for h in held:
            opener.release(h)
