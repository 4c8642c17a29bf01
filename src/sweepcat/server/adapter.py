"""A Tiled adapter for manifest locators: one row of a batched HDF5 dataset, or a whole dataset.

Mimetype ``application/x-sliced-hdf5``; data-source parameters ``dataset`` and
optional ``index``. Reads go through h5py hyperslabs, so ``[10:20, 5]`` of row
17 reads exactly that part of row 17 (for chunked files, only the chunks that
hold it), never the batch. Open files are kept in a small LRU cache.
"""

from __future__ import annotations

import builtins
import os
import threading
from collections import OrderedDict
from typing import Any

import h5py
import numpy as np
from fastapi import HTTPException
from tiled.ndslice import NDSlice
from tiled.structures.core import StructureFamily
from tiled.utils import path_from_uri

from ..contract import Locator

MIMETYPE = "application/x-sliced-hdf5"
MAX_OPEN_FILES = int(os.environ.get("SWEEPCAT_MAX_OPEN_FILES", "128"))


class _FileCache:
    """Bounded LRU of open h5py files; a file replaced on disk is reopened."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.lock = threading.Lock()
        self.files: OrderedDict[str, tuple[tuple[int, int], h5py.File]] = OrderedDict()

    def get(self, path: str) -> h5py.File:
        st = os.stat(path)  # FileNotFoundError propagates
        stamp = (st.st_mtime_ns, st.st_size)
        with self.lock:
            hit = self.files.get(path)
            if hit is not None and hit[0] == stamp:
                self.files.move_to_end(path)
                return hit[1]
            if hit is not None:
                self.files.pop(path)[1].close()
            handle = h5py.File(path, "r")
            self.files[path] = (stamp, handle)
            while len(self.files) > self.capacity:
                _, (_, old) = self.files.popitem(last=False)
                old.close()
            return handle

    def clear(self) -> None:
        with self.lock:
            for _, handle in self.files.values():
                handle.close()
            self.files.clear()


FILES = _FileCache(MAX_OPEN_FILES)


def _selection(slice_: Any, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Split a request into what h5py reads (positive steps, in range) and what numpy applies after."""
    expanded = NDSlice(*slice_).expand_for_shape(shape) if slice_ else tuple(builtins.slice(None) for _ in shape)
    read: list[Any] = []
    after: list[Any] = []
    for sel, dim in zip(expanded, shape):
        if isinstance(sel, (int, np.integer)):
            i = int(sel) + dim if sel < 0 else int(sel)
            if not 0 <= i < dim:
                raise IndexError(f"index {int(sel)} out of range for axis of length {dim}")
            read.append(i)
        elif isinstance(sel, builtins.slice):
            start, stop, step = sel.indices(dim)
            if step > 0:
                read.append(builtins.slice(start, max(start, stop), step))
                after.append(builtins.slice(None))
            else:  # h5py cannot step backwards: read the span forwards, reverse in memory
                lo = stop + 1
                read.append(builtins.slice(lo, start + 1) if start >= lo else builtins.slice(0, 0))
                after.append(builtins.slice(None, None, step))
        else:
            raise HTTPException(status_code=400, detail=f"unsupported selection {sel!r}")
    return tuple(read), tuple(after)


class SlicedHDF5Adapter:
    structure_family = StructureFamily.array

    def __init__(self, path: str, dataset: str, index: int | None, structure: Any,
                 metadata: dict | None = None, specs: list | None = None):
        self.path = path
        self.dataset = dataset
        self.index = index
        self._structure = structure
        self._metadata = metadata or {}
        self.specs = specs or []

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, dataset: str, index: int | None = None,
                     **_: Any) -> "SlicedHDF5Adapter":
        assets = [a for a in data_source.assets if a.parameter == "data_uri"] or list(data_source.assets)
        if not assets:
            raise HTTPException(status_code=500, detail=f"node {node.key!r} has no file asset")
        path = str(path_from_uri(assets[0].data_uri))
        return cls(path, dataset, None if index is None else int(index), data_source.structure,
                   metadata=node.metadata_, specs=node.specs)

    @property
    def locator(self) -> str:
        return Locator(self.path, self.dataset, self.index).url()

    def structure(self) -> Any:
        return self._structure

    def metadata(self) -> dict:
        return self._metadata

    def _dataset(self) -> h5py.Dataset:
        try:
            f = FILES.get(self.path)
        except FileNotFoundError:
            raise HTTPException(status_code=404, detail=f"{self.locator}: file not found on the server") from None
        except OSError as exc:
            raise HTTPException(status_code=422, detail=f"{self.locator}: file cannot be read as HDF5 ({exc})") from None
        ds = f.get(self.dataset)
        if not isinstance(ds, h5py.Dataset):
            raise HTTPException(status_code=404, detail=f"{self.locator}: no dataset {self.dataset} in the file")
        return ds

    def read(self, slice: Any = NDSlice(...)) -> np.ndarray:
        ds = self._dataset()
        shape = tuple(self._structure.shape)
        try:
            read, after = _selection(slice, shape)
        except IndexError as exc:
            raise HTTPException(status_code=400, detail=f"{self.locator}: {exc}") from None
        if self.index is not None:
            if not ds.shape or self.index >= ds.shape[0]:
                rows = ds.shape[0] if ds.shape else 0
                raise HTTPException(status_code=422,
                                    detail=f"{self.locator}: index out of range (the dataset has {rows} rows)")
            read = (self.index, *read)
        if ds.shape[1 if self.index is not None else 0:] != shape:
            raise HTTPException(status_code=422, detail=f"{self.locator}: file shape {ds.shape} no longer matches "
                                f"the catalog {shape}; re-ingest the dataset")
        array = ds[read] if read else ds[()]
        return array[after] if after and any(a != builtins.slice(None) for a in after) else array

    def read_block(self, block: Any, slice: Any = NDSlice(...)) -> np.ndarray:
        # One chunk per dimension (see catalog.plan.structure_for): block (0, ..., 0) is the array.
        if any(b not in (0, builtins.slice(None)) for b in block):
            raise HTTPException(status_code=400, detail=f"{self.locator}: block {tuple(block)} does not exist")
        return self.read(slice)


def clear_cache() -> None:
    FILES.clear()


__all__ = ["MIMETYPE", "SlicedHDF5Adapter", "clear_cache"]
