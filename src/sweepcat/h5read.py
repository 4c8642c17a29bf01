"""Reading many artifacts at once from HDF5: grouped by file, rows in index order, each file opened once.

Shared by the server's batch route and the client's direct (Mode A) reads.
Files and datasets are opened through an ``h5open.Opener``, so the file rule
holds for every read; a source whose dtype or entity shape no longer matches
the catalog is refused (``SourceChanged``), never cast.

Rows stored as they are read (no filters, native byte order, contiguous or
chunked in whole rows) are copied with positional reads (``os.preadv``) on the
descriptor the rule checked, straight into the output array, in parallel:
HDF5's per-row selection machinery costs ~50x the copy itself. Where each row
lies comes from the dataset's chunk index, read once per file version and
cached (``RowLayout``). Anything else (compressed or unusual layouts,
unwritten chunks) is read by h5py, with identical results.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from .errors import SourceInvalid, SweepcatError
from .h5open import DatasetMissing, FileRefused, H5Handle, Opener
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

    def take(self, positions: np.ndarray) -> "Stack":
        """The rows at ``positions``, in that order (a training batch)."""
        return Stack(self.paths, self.file_idx[positions], self.datasets[positions], self.indices[positions],
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


def check_source(node: h5py.Dataset | "_Known", path: str, dataset: str, stack: Stack, rows: np.ndarray) -> None:
    """The dataset still matches the catalog: dtype, entity shape, enough rows."""
    if dtype_name(node.dtype) != dtype_name(stack.dtype):
        raise SourceChanged(f"{_where(path, dataset)}: the file holds {dtype_name(node.dtype)}, the catalog says "
                            f"{dtype_name(stack.dtype)}", "re-ingest the dataset (its files changed after ingest)")
    batched = rows.min() >= 0
    entity = tuple(node.shape[1:] if batched else node.shape)
    if entity != tuple(stack.shape):
        raise SourceChanged(f"{_where(path, dataset)}: the file's entity shape is {entity}, the catalog says "
                            f"{tuple(stack.shape)}", "re-ingest the dataset (its files changed after ingest)")
    if batched and rows.max() >= node.shape[0]:
        raise SourceChanged(f"{_where(path, dataset, int(rows.max()))}: index out of range ({node.shape[0]} rows)",
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
    flat = memoryview(out.reshape(-1).view(np.uint8)) if out.flags.c_contiguous and out.size else None
    groups = list(stack.groups())
    # Sources are held open a few dozen at a time (layout A opens a file per row): their positional
    # reads run together, in parallel, then the files go back.
    for start in range(0, len(groups), OPEN_AT_ONCE):
        with ExitStack() as held:
            reads: list[_Reads] = []
            for path, dataset, positions in groups[start:start + OPEN_AT_ONCE]:
                rows = stack.indices[positions]
                try:
                    known = _known_reads(opener, path, dataset, stack, rows, positions, out.dtype, held) \
                        if flat is not None else None
                    if known is not None:
                        reads.append(known)
                        continue
                    node, handle = held.enter_context(opener.located(path, dataset))
                    check_source(node, path, dataset, stack, rows)
                    planned = _planned(node, handle, path, dataset, rows, positions, out.dtype) \
                        if flat is not None else None
                    if planned is None:
                        _copy(node, rows, positions, out)
                    else:
                        reads.append(planned)
                except (FileRefused, FileNotFoundError, DatasetMissing, OSError) as exc:
                    raise _open_error(path, dataset, exc) from None
            if reads:
                _pread_all(reads, flat, stack.row_bytes)
    return out


OPEN_AT_ONCE = 64  # sources held open together for one round of positional reads


@dataclass(frozen=True)
class RowLayout:
    """Where the rows of a dataset start in its file: ``chunk_offsets[r // rows_per_chunk] +
    (r % rows_per_chunk) * row_bytes`` (-1: the chunk was never written). A whole dataset (layouts A, C)
    is one row."""

    chunk_offsets: np.ndarray
    rows_per_chunk: int
    row_bytes: int


@dataclass(frozen=True)
class _Known:
    """A dataset as found in one version of its file (``h5open.stamp_of``): what a read checks
    (dtype, shape) and where its rows lie (None: h5py reads them). A later read of the same version
    opens only the file's descriptor under the rule, not HDF5."""

    dtype: np.dtype
    shape: tuple[int, ...]
    layout: RowLayout | None


_KNOWN: "OrderedDict[tuple, _Known]" = OrderedDict()  # (real path, stamp, dataset, batched) -> _Known
_KNOWN_LOCK = threading.Lock()
KNOWN_ENTRIES = 4096  # ~25 KB each for 3,125-row files


def _stored_as_read(node: h5py.Dataset, batched: bool) -> tuple[int, int] | None:
    """(rows per chunk, 0 for contiguous storage; bytes per row) when ``node``'s rows lie in its file as
    they are read (no filter, this machine's byte order, whole rows per chunk); else None."""
    dtype = node.dtype
    if dtype.kind not in "biufc" or not dtype.isnative or node.size == 0:
        return None
    dcpl = node.id.get_create_plist()
    if dcpl.get_nfilters() or dcpl.get_external_count():
        return None
    entity = node.shape[1:] if batched else node.shape
    row_bytes = int(np.prod(entity, dtype=np.int64)) * dtype.itemsize
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        return 0, row_bytes
    if layout != h5py.h5d.CHUNKED or node.chunks is None:
        return None
    chunks = tuple(node.chunks)
    if (chunks[1:] if batched else chunks) != tuple(entity):
        return None  # a row spans several chunks: h5py assembles it
    return (chunks[0] if batched else 1), row_bytes


def row_layout(node: h5py.Dataset, batched: bool) -> RowLayout | None:
    """The byte layout of ``node``'s rows when they can be read as stored, else None (h5py reads them)."""
    stored = _stored_as_read(node, batched)
    if stored is None:
        return None
    per, row_bytes = stored
    if per == 0:
        offset = node.id.get_offset()
        if offset is None:
            return None
        return RowLayout(np.array([offset], np.int64), node.shape[0] if batched else 1, row_bytes)
    offsets = np.full(-(-node.shape[0] // per) if batched else 1, -1, np.int64)

    def seen(info: h5py.h5d.StoreInfo) -> None:
        if info.size == per * row_bytes:
            offsets[info.chunk_offset[0] // per if batched else 0] = info.byte_offset

    node.id.chunk_iter(seen)
    return RowLayout(offsets, per, row_bytes)


def _row_offset(node: h5py.Dataset, row: int | None) -> int | None:
    """Where one row (or the whole dataset, for None) starts in the file, from one lookup in the chunk
    index (not the whole index: for single reads); None when h5py must read it."""
    stored = _stored_as_read(node, row is not None)
    if stored is None:
        return None
    per, row_bytes = stored
    if per == 0:
        offset = node.id.get_offset()
        return None if offset is None else offset + (row or 0) * row_bytes
    first = (row // per) * per if row is not None else 0
    info = node.id.get_chunk_info_by_coord((first,) + (0,) * (node.ndim - 1))
    if info.byte_offset is None or info.size != per * row_bytes:
        return None  # never written (HDF5's fill value), or not stored whole
    return info.byte_offset + ((row - first) if row is not None else 0) * row_bytes


def _remember(node: h5py.Dataset, handle: H5Handle, dataset: str, batched: bool) -> _Known:
    """``node`` as found in its file's version (read once per version: the chunk index is walked here)."""
    key = (handle.real, handle.stamp, dataset, batched)
    with _KNOWN_LOCK:
        known = _KNOWN.get(key)
        if known is not None:
            _KNOWN.move_to_end(key)
            return known
    known = _Known(node.dtype, tuple(node.shape), row_layout(node, batched))
    with _KNOWN_LOCK:
        _KNOWN[key] = known
        while len(_KNOWN) > KNOWN_ENTRIES:
            _KNOWN.popitem(last=False)
    return known


def _offsets(layout: RowLayout, rows: np.ndarray, batched: bool) -> np.ndarray | None:
    if not batched:
        return np.full(len(rows), layout.chunk_offsets[0], np.int64)
    chunk_start = layout.chunk_offsets[rows // layout.rows_per_chunk]
    if (chunk_start < 0).any():
        return None  # never-written chunks read as HDF5's fill value: h5py knows it
    return chunk_start + (rows % layout.rows_per_chunk) * layout.row_bytes


def _known_reads(opener: Opener, path: str, dataset: str, stack: Stack, rows: np.ndarray, targets: np.ndarray,
                 dtype: np.dtype, held: ExitStack) -> "_Reads | None":
    """The positional reads of a source already known in this version of its file: the file is opened
    under the rule (checked on the descriptor) and its stamp looked up; None when it is not known (or
    not readable as stored), so the caller opens it with HDF5."""
    batched = bool(rows[0] >= 0)
    try:
        fd, real, stamp = opener.rule.open_fd(path)
    except (FileRefused, OSError):
        return None  # the HDF5 open names the problem the usual way
    with _KNOWN_LOCK:
        known = _KNOWN.get((real, stamp, dataset, batched))
    if known is None or known.layout is None or known.dtype != dtype:
        os.close(fd)
        return None
    held.callback(os.close, fd)
    check_source(known, path, dataset, stack, rows)
    offsets = _offsets(known.layout, rows, batched)
    if offsets is None:
        return None
    return _Reads(fd, offsets, np.asarray(targets, np.int64), _where(path, dataset))


@dataclass(frozen=True)
class _Reads:
    """Positional reads of one source: rows at file ``offsets`` into output ``targets``."""

    fd: int
    offsets: np.ndarray
    targets: np.ndarray
    where: str


def _planned(node: h5py.Dataset, handle: H5Handle, path: str, dataset: str, rows: np.ndarray, targets: np.ndarray,
             dtype: np.dtype) -> _Reads | None:
    """The positional reads of one source's rows, or None when h5py must read them (the bytes in the file
    are not the output's: another byte order, a filter, an unwritten chunk ...)."""
    if handle.fd < 0 or node.dtype != dtype:
        return None
    batched = bool(rows[0] >= 0)
    if handle.path != path:  # reached through an external link: read here, never remembered for ``path``
        layout = row_layout(node, batched)
    else:
        layout = _remember(node, handle, dataset, batched).layout
    if layout is None:
        return None
    offsets = _offsets(layout, rows, batched)
    if offsets is None:
        return None
    return _Reads(handle.fd, offsets, np.asarray(targets, np.int64), _where(handle.path, dataset))


def read_direct(node: h5py.Dataset, handle: H5Handle, dataset: str, row: int | None, out: np.ndarray) -> bool:
    """One entity (row ``row`` of a batched dataset, or the whole dataset for None) into ``out`` by a
    positional read, when its bytes are stored as read; False when h5py must read it. The caller has
    checked the source (dtype, shape, row in range)."""
    if handle.fd < 0 or not out.flags.c_contiguous or not out.size or node.dtype != out.dtype:
        return False
    offset = _row_offset(node, row)
    if offset is None:
        return False
    reads = _Reads(handle.fd, np.array([offset], np.int64), np.zeros(1, np.int64), _where(handle.path, dataset))
    _pread_all([reads], memoryview(out.reshape(-1).view(np.uint8)), out.nbytes)
    return True


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()
READ_THREADS = max(2, min(8, os.cpu_count() or 2))
MIN_PARALLEL_BYTES = 4 << 20  # below this, one thread copies faster than two start


def _pool() -> ThreadPoolExecutor:
    """The process's read threads (made again in a forked child, e.g. a DataLoader worker)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(READ_THREADS, thread_name_prefix="sweepcat-read"))
        return _POOL[1]


def _pread_all(reads: list[_Reads], flat: memoryview, row_bytes: int) -> None:
    """Every planned row into ``flat``: adjacent rows merged into one read, runs spread over threads."""
    fds = np.concatenate([np.full(len(r.offsets), r.fd, np.int64) for r in reads])
    offsets = np.concatenate([r.offsets for r in reads])
    targets = np.concatenate([r.targets for r in reads])
    names = [r.where for r in reads]
    which = np.concatenate([np.full(len(r.offsets), i, np.int64) for i, r in enumerate(reads)])
    order = np.lexsort((offsets, fds))
    fds, offsets, targets, which = fds[order], offsets[order], targets[order], which[order]
    # a run: the next row follows in the file and in the output
    cut = np.flatnonzero((fds[1:] != fds[:-1]) | (offsets[1:] != offsets[:-1] + row_bytes)
                         | (targets[1:] != targets[:-1] + 1)) + 1
    starts = np.r_[0, cut]
    lengths = np.diff(np.r_[starts, len(offsets)])
    runs = (fds[starts], offsets[starts], targets[starts] * row_bytes, lengths * row_bytes, which[starts])

    def copy(lo: int, hi: int) -> None:
        for fd, offset, target, size, w in zip(*(a[lo:hi].tolist() for a in runs), strict=True):
            view = flat[target:target + size]
            done = 0
            while done < size:
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise SourceChanged(f"{names[w]}: the file ends before the rows the catalog records",
                                        "re-ingest the dataset (its files changed after ingest)")
                done += got

    total = int(lengths.sum()) * row_bytes
    parts = min(READ_THREADS, len(starts)) if total >= MIN_PARALLEL_BYTES else 1
    if parts <= 1:
        copy(0, len(starts))
        return
    bounds = np.linspace(0, len(starts), parts + 1).astype(int).tolist()
    for f in [_pool().submit(copy, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]:
        f.result()


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
    """The stacked bytes in order, ``chunk_bytes`` at most at a time, each chunk in a buffer of its own.

    Never one reused buffer: an ASGI server may still hold a chunk it was given (uvloop queues the
    object itself, without a copy, until the socket takes it), and a buffer refilled under it would
    send the next rows' bytes in place of these. The server's flow control keeps about two chunks
    alive at a time."""
    per_chunk = max(1, chunk_bytes // max(1, stack.row_bytes))
    for start in range(0, len(stack), per_chunk):
        stop = min(len(stack), start + per_chunk)
        part = np.empty((stop - start, *stack.shape), dtype=stack.dtype)
        read_stacked(stack.rows(start, stop), opener, out=part)
        yield memoryview(part.reshape(-1).view(np.uint8))


__all__ = ["Stack", "SourceChanged", "SourceMissing", "SourceInvalid", "check_stack", "read_stacked",
           "stream_stacked", "filtered_chunk_bytes", "read_direct", "row_layout"]
