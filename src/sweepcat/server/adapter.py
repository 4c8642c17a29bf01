"""A Tiled adapter for manifest locators: one row of a batched HDF5 dataset, or a whole dataset.

Mimetype ``application/x-sliced-hdf5``; data-source parameters ``dataset`` and
optional ``index``. Reads go through h5py hyperslabs, so ``[10:20, 5]`` of row
17 reads exactly that part of row 17 (for chunked files, only the chunks that
hold it), never the batch.

Every read goes through the server's boundary (``policy``): the byte size is
computed from the structure and the slice and checked before anything is
read, the bytes are reserved in the server-wide budget, and the file and the
dataset are opened under the file rule. Tiled's route builds this adapter
with Tiled's configured readable storage; the fast path with the policy's.
"""

from __future__ import annotations

import builtins
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import numpy as np
from fastapi import HTTPException
from tiled.ndslice import NDSlice
from tiled.structures.core import StructureFamily

from ..catalog.schema import MIMETYPE
from ..contract import Locator, locator_of_source
from ..errors import SourceInvalid
from ..h5open import DatasetMissing, FileRefused, Opener
from ..h5read import filtered_chunk_bytes, read_direct
from ..h5scan import dtype_name
from .policy import BUDGET, FILES, Reservation, check_chunk, check_response_size, configured_rule_for


class Refused(HTTPException):
    """The file rule refuses the locator's file (403). The fast path leaves such requests to Tiled."""


def selection(slice_: Any, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[int, ...]]:
    """(what h5py reads: positive steps, in range; what numpy applies after; the output shape).

    Raises HTTPException 400 for selections that do not fit the array."""
    parts = tuple(slice_) if slice_ is not None else ()  # (an NDSlice of only ':' is falsy: count, do not test)
    try:
        expanded = NDSlice(*parts).expand_for_shape(shape) if parts else tuple(builtins.slice(None) for _ in shape)
    except (IndexError, ValueError, TypeError) as exc:
        raise HTTPException(status_code=400, detail=f"slice {slice_!r} does not fit shape {shape}: {exc}") from None
    if len(expanded) > len(shape):
        raise HTTPException(status_code=400, detail=f"slice has {len(expanded)} dimensions, the array {len(shape)}")
    expanded = tuple(expanded) + tuple(builtins.slice(None) for _ in range(len(shape) - len(expanded)))
    read: list[Any] = []
    after: list[Any] = []
    out: list[int] = []
    for sel, dim in zip(expanded, shape, strict=True):
        if isinstance(sel, (int, np.integer)):
            i = int(sel) + dim if sel < 0 else int(sel)
            if not 0 <= i < dim:
                raise HTTPException(status_code=400, detail=f"index {int(sel)} out of range for an axis of length "
                                    f"{dim}")
            read.append(i)
        elif isinstance(sel, builtins.slice):
            if sel.step == 0:
                raise HTTPException(status_code=400, detail="slice step cannot be zero")
            start, stop, step = sel.indices(dim)
            if step > 0:
                read.append(builtins.slice(start, max(start, stop), step))
                after.append(builtins.slice(None))
            else:  # h5py cannot step backwards: read the span forwards, reverse in memory
                lo = stop + 1
                read.append(builtins.slice(lo, start + 1) if start >= lo else builtins.slice(0, 0))
                after.append(builtins.slice(None, None, step))
            out.append(len(range(start, stop, step)))
        else:
            raise HTTPException(status_code=400, detail=f"unsupported selection {sel!r}")
    return tuple(read), tuple(after), tuple(out)


def _refused(locator: str, exc: FileRefused) -> Refused:
    return Refused(status_code=403, detail=f"{locator}: refused: {exc.reason}")


def _everything(read: tuple[Any, ...], after: tuple[Any, ...], shape: tuple[int, ...]) -> bool:
    """The selection is the whole array, in order (no slice given, or one that changes nothing)."""
    return len(read) == len(shape) and all(isinstance(r, builtins.slice) and r.indices(d) == (0, d, 1)
                                           for r, d in zip(read, shape, strict=True)) \
        and all(a == builtins.slice(None) for a in after)


class SlicedHDF5Adapter:
    structure_family = StructureFamily.array

    def __init__(self, path: str, dataset: str, index: int | None, structure: Any, *, opener: Opener,
                 metadata: dict | None = None, specs: list | None = None):
        self.path = path
        self.dataset = dataset
        self.index = index
        self._structure = structure
        self._metadata = metadata or {}
        self.specs = specs or []
        self.opener = opener

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, **_: Any) -> "SlicedHDF5Adapter":
        assets = [a for a in data_source.assets if a.parameter == "data_uri"] or list(data_source.assets)
        if not assets:
            raise HTTPException(status_code=422, detail=f"node {node.key!r}: its data source has no file asset")
        try:
            loc = locator_of_source(data_source.parameters, assets[0].data_uri, f"node {node.key!r}")
        except SourceInvalid as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return cls(loc.file, loc.dataset, loc.index, data_source.structure,
                   opener=FILES.opener(configured_rule_for(loc.file)), metadata=node.metadata_, specs=node.specs)

    @property
    def locator(self) -> str:
        return Locator(self.path, self.dataset, self.index).url()

    def get(self, key: str) -> None:
        """An array has no children: a path below it is Tiled's 404, not an AttributeError (500)."""
        return None

    def structure(self) -> Any:
        return self._structure

    def metadata(self) -> dict:
        return self._metadata

    def read(self, slice: Any = NDSlice(...)) -> np.ndarray:
        """For Tiled's route, which serializes the array after this returns: the bytes stay reserved
        until the array is freed."""
        array, reservation = self.read_reserved(slice)
        return reservation.until_freed(array)

    def read_reserved(self, slice: Any = NDSlice(...)) -> tuple[np.ndarray, Reservation]:
        """The array and its reservation in the server's budget, which the caller releases once sent."""
        shape = tuple(self._structure.shape)
        dtype = np.dtype(self._structure.data_type.to_numpy_dtype())
        read, after, out_shape = selection(slice, shape)
        nbytes = int(np.prod(out_shape, dtype=np.int64)) * dtype.itemsize
        check_response_size(nbytes)
        reservation = BUDGET.reserve(nbytes, lambda: self.locator)
        try:
            with self._open() as (ds, handle):
                self._check(ds, shape, dtype)
                whole = np.empty(shape, dtype) if _everything(read, after, shape) else None
                if whole is not None and read_direct(ds, handle, self.dataset, self.index, whole):
                    return whole, reservation  # the whole entity, stored as read: one positional read
                chunk = filtered_chunk_bytes(ds)  # decompressed whole to read any part of it
                check_chunk(chunk, self.locator)
                if self.index is not None:
                    read = (self.index, *read)
                with BUDGET.reserve(chunk, lambda: self.locator) if chunk else nullcontext():
                    array = ds[read] if read else ds[()]
            if after and any(a != builtins.slice(None) for a in after):
                array = np.ascontiguousarray(array[after])
            return np.asarray(array), reservation
        except BaseException:
            reservation.release()
            raise

    @contextmanager
    def _open(self) -> Iterator[tuple[Any, Any]]:
        """The dataset and the handle holding its bytes, under the file rule; errors become HTTP errors
        that name the locator."""
        try:
            with self.opener.located(self.path, self.dataset) as found:
                yield found
        except FileRefused as exc:
            raise _refused(self.locator, exc) from None
        except FileNotFoundError:
            raise HTTPException(status_code=404, detail=f"{self.locator}: file not found on the server") from None
        except DatasetMissing as exc:
            raise HTTPException(status_code=404, detail=f"{self.locator}: {exc.message}") from None
        except OSError as exc:
            raise HTTPException(status_code=422, detail=f"{self.locator}: the file cannot be read as HDF5 ({exc})") \
                from None

    def _check(self, ds: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """The file still holds what the catalog says: else 422 naming the locator (never a silent cast)."""
        if self.index is not None:
            if not ds.shape or self.index >= ds.shape[0]:
                rows = ds.shape[0] if ds.shape else 0
                raise HTTPException(status_code=422,
                                    detail=f"{self.locator}: index out of range (the dataset has {rows} rows)")
        file_shape = tuple(ds.shape[1:] if self.index is not None else ds.shape)
        if file_shape != shape:
            raise HTTPException(status_code=422, detail=f"{self.locator}: the file's shape {tuple(ds.shape)} no longer "
                                f"matches the catalog's {shape}; re-ingest the dataset")
        if dtype_name(ds.dtype) != dtype_name(dtype):
            raise HTTPException(status_code=422, detail=f"{self.locator}: the file's dtype {dtype_name(ds.dtype)} no "
                                f"longer matches the catalog's {dtype_name(dtype)}; re-ingest the dataset")

    def read_block(self, block: Any, slice: Any = NDSlice(...)) -> np.ndarray:
        # One chunk per dimension (see catalog.plan.structure_for): block (0, ..., 0) is the array.
        if any(b not in (0, builtins.slice(None)) for b in block):
            raise HTTPException(status_code=400, detail=f"{self.locator}: block {tuple(block)} does not exist")
        return self.read(slice)


__all__ = ["MIMETYPE", "SlicedHDF5Adapter", "Refused", "selection"]


class RefusedAdapter:
    """Every other data source a client can create through Tiled's API (HDF5, CSV, TIFF, Zarr ...): refused.
    Tiled's own readers check a path only as the string it was given (``..`` and symlinks pass) and follow
    HDF5 links and external storage anywhere; sweepcat's file rule covers only its own reader. A sweepcat
    server therefore reads no other kind of data source: a client's write never widens what it reads."""

    @classmethod
    def from_catalog(cls, data_source: Any, node: Any, /, **parameters: Any) -> Any:
        key = getattr(node, "key", "?")
        raise HTTPException(status_code=403, detail={
            "message": f"node {key!r}: its data source ({data_source.mimetype}) is not one this sweepcat server "
                       f"reads; it serves only its own arrays ({MIMETYPE}), under its file rule",
            "hint": "register the data with `sweepcat ingest`/`register`, or serve other data with a separate "
                    "Tiled server"})
