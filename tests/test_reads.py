"""Stacked reads: positional reads where the bytes are stored as read, h5py elsewhere, the same answer always.

The property test writes random datasets (dtypes, byte orders, shapes, chunkings, compression, unwritten
chunks, contiguous storage) and compares ``read_stacked`` with h5py's own reading of the same rows, in any
order and with repeats.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sweepcat import h5read
from sweepcat.h5open import session
from sweepcat.h5read import SourceChanged, Stack, read_stacked, row_layout

DTYPES = ["<f8", "<f4", "<i4", "<u2", "|i1", "<c16", ">f8", ">i4", "|b1"]


@st.composite
def sources(draw: st.DrawFn) -> dict:
    dtype = draw(st.sampled_from(DTYPES))
    entity = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    n = draw(st.integers(1, 30))
    storage = draw(st.sampled_from(["contiguous", "row-chunks", "k-row-chunks", "partial-chunks", "gzip",
                                    "shuffle-gzip", "sparse"]))
    k = draw(st.integers(1, 5))
    rows = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=40))
    return {"dtype": dtype, "entity": entity, "n": n, "storage": storage, "k": k, "rows": rows,
            "seed": draw(st.integers(0, 2**16))}


def _write(path: Path, spec: dict) -> np.ndarray:
    rng = np.random.default_rng(spec["seed"])
    shape = (spec["n"], *spec["entity"])
    data = (rng.standard_normal(shape) * 100).astype(spec["dtype"])
    if np.dtype(spec["dtype"]).kind == "c":
        data = data + 1j * rng.standard_normal(shape)
    kwargs: dict = {}
    storage, k = spec["storage"], spec["k"]
    if storage == "row-chunks":
        kwargs["chunks"] = (1, *spec["entity"])
    elif storage in ("k-row-chunks", "sparse"):
        kwargs["chunks"] = (k, *spec["entity"])
    elif storage == "partial-chunks" and spec["entity"]:
        kwargs["chunks"] = (1, *[max(1, d - 1) for d in spec["entity"]])
    elif storage in ("gzip", "shuffle-gzip"):
        kwargs.update(chunks=(k, *spec["entity"]), compression="gzip", shuffle=storage == "shuffle-gzip")
    if "chunks" in kwargs:  # extendible along rows: a chunk may hold more rows than the dataset has
        kwargs["maxshape"] = (None, *spec["entity"])
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("A", shape=shape, dtype=spec["dtype"], **kwargs)
        if storage == "sparse":  # every other chunk written; the rest read as the fill value
            for start in range(0, spec["n"], 2 * k):
                ds[start:start + k] = data[start:start + k]
            expected = ds[()]
        else:
            ds[()] = data
            expected = data
    return expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(sources(), min_size=1, max_size=3))
def test_stacked_reads_equal_h5py_for_any_storage(tmp_path: Path, specs: list[dict]) -> None:
    # the same dtype and entity shape for every source of one stack (as a catalog's artifact type)
    dtype, entity = specs[0]["dtype"], specs[0]["entity"]
    paths, truth, file_idx, indices = [], [], [], []
    for i, spec in enumerate(specs):
        spec = {**spec, "dtype": dtype, "entity": entity, "rows": [r % spec["n"] for r in spec["rows"]]}
        path = tmp_path / f"f{i}_{os.getpid()}_{abs(hash(str(spec)))}.h5"
        truth.append(_write(path, spec))
        paths.append(str(path))
        file_idx += [i] * len(spec["rows"])
        indices += spec["rows"]
    order = np.random.default_rng(0).permutation(len(indices))  # rows of all files interleaved
    file_idx, indices = np.asarray(file_idx)[order], np.asarray(indices, np.int64)[order]
    stack = Stack(paths, file_idx, np.array(["A"] * len(indices), dtype=object), indices, tuple(entity),
                  np.dtype(dtype))
    got = read_stacked(stack, session([tmp_path]))
    want = np.stack([truth[f][r] for f, r in zip(file_idx, indices, strict=True)])
    assert got.dtype == np.dtype(dtype) and got.shape == (len(indices), *entity)
    np.testing.assert_array_equal(got, want)


def _dataset(path: Path, **kwargs) -> h5py.Dataset:
    f = h5py.File(path, "w")
    return f.create_dataset("A", **kwargs)


@pytest.mark.parametrize("kwargs, direct", [
    ({"shape": (8, 3, 2), "dtype": "<f8", "chunks": (1, 3, 2)}, True),
    ({"shape": (8, 3, 2), "dtype": "<f8", "chunks": (4, 3, 2)}, True),
    ({"shape": (8, 3, 2), "dtype": "<f8"}, True),  # contiguous
    ({"shape": (8, 3, 2), "dtype": "<f8", "chunks": (1, 3, 1)}, False),  # a row spans chunks
    ({"shape": (8, 3, 2), "dtype": "<f8", "chunks": (1, 3, 2), "compression": "gzip"}, False),
    ({"shape": (8, 3, 2), "dtype": ">f8", "chunks": (1, 3, 2)}, False),  # not this machine's byte order
])
def test_positional_reads_only_where_the_bytes_are_stored_as_read(tmp_path: Path, kwargs: dict,
                                                                  direct: bool) -> None:
    ds = _dataset(tmp_path / "a.h5", **kwargs)
    ds[()] = np.arange(ds.size, dtype=ds.dtype).reshape(ds.shape)
    ds.file.flush()
    assert (row_layout(ds, batched=True) is not None) is direct
    ds.file.close()


def test_the_direct_path_is_taken_for_uncompressed_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path really runs (not a silent fallback to h5py), and gives h5py's answer."""
    path = tmp_path / "b.h5"
    data = np.random.default_rng(1).standard_normal((50, 7, 3))
    with h5py.File(path, "w") as f:
        f.create_dataset("A", data=data, chunks=(1, 7, 3))
    used = []
    real = h5read._pread_all
    monkeypatch.setattr(h5read, "_pread_all", lambda reads, *a: (used.append(len(reads)), real(reads, *a)))
    rows = np.array([49, 3, 3, 17, 0, 25], np.int64)
    stack = Stack([str(path)], np.zeros(len(rows), np.int64), np.array(["A"] * len(rows), dtype=object), rows,
                  (7, 3), np.dtype("<f8"))
    np.testing.assert_array_equal(read_stacked(stack, session([tmp_path])), data[rows])
    assert used == [1]


def test_a_file_cut_short_during_a_read_is_refused_not_read_short(tmp_path: Path) -> None:
    """A file truncated while open (HDF5 already trusted its header) is refused naming it: no row is left
    holding what the output array held before."""
    from contextlib import contextmanager

    from sweepcat.h5open import FileRule, Opener

    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("A", data=np.ones((64, 100)), chunks=(1, 100))
        last = f["A"].id.get_chunk_info_by_coord((63, 0)).byte_offset

    class CutWhileOpen(Opener):
        @contextmanager
        def located(self, p: str, name: str):  # type: ignore[override]
            with super().located(p, name) as found:
                os.truncate(path, last + 10)  # the last row's chunk cut short, after the open
                yield found

    stack = Stack([str(path)], np.zeros(2, np.int64), np.array(["A", "A"], dtype=object),
                  np.array([0, 63], np.int64), (100,), np.dtype("<f8"))
    with pytest.raises(SourceChanged, match="c.h5"):
        read_stacked(stack, CutWhileOpen(FileRule.under(tmp_path)))
