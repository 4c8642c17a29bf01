"""Stacked reads: positional reads where the bytes are stored as read, h5py elsewhere, the same answer always.

The property test writes random datasets (dtypes, byte orders, shapes, chunkings, compression, unwritten
chunks, contiguous storage) and compares ``read_stacked`` with h5py's own reading of the same rows, in any
order and with repeats.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sweepcat.client
from sweepcat import h5read
from sweepcat.client.progress import ReadProgress
from sweepcat.errors import DatasetChanged, SweepcatError
from sweepcat.h5open import session
from sweepcat.h5read import SourceChanged, Stack, read_direct, read_stacked, row_layout
from tests.conftest import demo_catalog
from tests.support.servers import API_KEY, sweepcat_server
from tests.test_catalog import manifests_of

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
    # one entity at a time (the server's single-array route): a positional read, or False for h5py
    opener = session([tmp_path])
    for f, r in zip(file_idx[:3], indices[:3], strict=True):
        with opener.located(paths[f], "A") as (node, handle):
            one = np.empty(tuple(entity), np.dtype(dtype))
            if read_direct(node, handle, "A", int(r), one):
                np.testing.assert_array_equal(one, truth[f][r])
            else:
                assert row_layout(node, batched=True) is None or (row_layout(node, True).chunk_offsets < 0).any()


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


def test_a_file_rewritten_in_place_to_the_same_size_and_mtime_is_read_anew(tmp_path: Path) -> None:
    """Found by a red-team round: a file overwritten in place (same inode and size, its mtime put back as
    `cp -p` or `rsync -t` do) was read at the row offsets remembered for the old file: wrong bytes, no
    error. The file's version now includes its ctime, which no one can set back."""
    from sweepcat.h5open import FileCache, FileRule

    old, new, target = tmp_path / "old.h5", tmp_path / "new.h5", tmp_path / "data.h5"
    rng = np.random.default_rng(3)
    with h5py.File(old, "w") as f:
        f.create_dataset("A", data=rng.standard_normal((40, 30)), chunks=(1, 30))
    with h5py.File(new, "w") as f:  # other values, another layout (contiguous)
        f.create_dataset("A", data=(want := rng.standard_normal((40, 30))))
    size = max(old.stat().st_size, new.stat().st_size)
    for p in (old, new):
        os.truncate(p, size)
    target.write_bytes(old.read_bytes())
    rows = np.array([3, 17, 39, 0], np.int64)
    stack = Stack([str(target)], np.zeros(len(rows), np.int64), np.array(["A"] * len(rows), dtype=object), rows,
                  (30,), np.dtype("<f8"))
    openers = [session([tmp_path]), FileCache().opener(FileRule.under(tmp_path))]
    for opener in openers:
        read_stacked(stack, opener)  # the old file's layout is now known
    mtime = target.stat().st_mtime_ns
    with open(target, "r+b") as f:  # in place: same inode, same size
        f.write(new.read_bytes())
    os.utime(target, ns=(mtime, mtime))
    for opener in openers:
        np.testing.assert_array_equal(read_stacked(stack, opener), want[rows])


def test_a_known_file_swapped_for_a_link_outside_is_refused(tmp_path: Path) -> None:
    """The positional path opens only what the file rule allows, every read: a source known from an earlier
    read and then replaced by a symlink leaving the root is refused by name, never read."""
    from sweepcat.h5open import FileRefused

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    with h5py.File(root / "a.h5", "w") as f:
        f.create_dataset("A", data=np.zeros((4, 3)), chunks=(1, 3))
    with h5py.File(outside / "secret.h5", "w") as f:
        f.create_dataset("A", data=np.full((4, 3), 7.0), chunks=(1, 3))
    stack = Stack([str(root / "a.h5")], np.zeros(2, np.int64), np.array(["A", "A"], dtype=object),
                  np.array([0, 3], np.int64), (3,), np.dtype("<f8"))
    opener = session([root])
    assert not read_stacked(stack, opener).any()  # known now
    (root / "a.h5").unlink()
    (root / "a.h5").symlink_to(outside / "secret.h5")
    with pytest.raises(FileRefused, match="a.h5"):
        read_stacked(stack, opener)


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


# --------------------------------------------------------------------------- through a real server

ROW = 151 * 40 * 8  # one RIXS map


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_manifests: Path):
    """(url, catalog): the demo datasets on each backend, served with one RIXS map per streamed chunk."""
    catalog = demo_catalog(request, tmp_path_factory, demo_manifests, "reads")
    with sweepcat_server(catalog, extra_env={"SWEEPCAT_STREAM_CHUNK_BYTES": str(ROW)}) as url:
        yield url, catalog


def _h5py_truth(res, type_: str) -> np.ndarray:
    loc = res.locators
    loc = loc[loc.type == type_].set_index("key").loc[res.keys()]
    out = []
    for file, dataset, index in zip(loc.file, loc.dataset, loc["index"], strict=True):
        with h5py.File(file, "r") as f:
            out.append(f[dataset][()] if pd.isna(index) else f[dataset][int(index)])
    return np.stack(out)


def test_mode_b_sends_every_row_it_read_in_order(served):
    """Found by the issue's benchmark: the stream reused one buffer per response, and uvloop still held the
    chunk it had been given (queued without a copy) when the next rows were read into it: rows of a later
    chunk arrived in place of earlier ones. Many one-map chunks, rows scattered by a shuffle."""
    url, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].all().shuffle(seed=5)
    truth = _h5py_truth(res, "rixs")
    for _ in range(3):
        np.testing.assert_array_equal(res.read("rixs"), truth)
    np.testing.assert_array_equal(res.read("rixs", mode="direct"), truth)


def _expected(base: list[str], frame: pd.DataFrame, cut: str) -> list[str]:
    """What each cut means, written with pandas and Python lists (not with sweepcat's code)."""
    keys = list(base)
    if cut == "head":
        return keys[:7]
    if cut == "tail":
        return keys[-5:]
    if cut == "every third":
        return keys[1::3]
    if cut == "reversed":
        return keys[::-1]
    if cut == "sort":
        return list(frame.loc[keys].sort_values("F2_dd", kind="stable").index)
    if cut == "sort descending":
        return list(frame.loc[keys].sort_values("F2_dd", ascending=False, kind="stable").index)
    if cut == "sample":
        return [keys[i] for i in np.random.default_rng(11).permutation(len(keys))[:9]]
    raise AssertionError(cut)


CUTS = {"head": lambda r: r.head(7), "tail": lambda r: r[-5:], "every third": lambda r: r[1::3],
        "reversed": lambda r: r[::-1], "sort": lambda r: r.sort_by("F2_dd"),
        "sort descending": lambda r: r.sort_by("F2_dd", ascending=False), "sample": lambda r: r.sample(9, seed=11)}


@pytest.mark.parametrize("cut", list(CUTS))
def test_cuts_give_the_same_rows_over_http_and_from_the_catalog(served, demo_manifests: Path, cut: str):
    url, catalog = served
    frame = manifests_of(demo_manifests, "NiPS3_batched").ham.to_pandas().set_index("key")
    for target in (url, catalog):
        res = sweepcat.client.open(target, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 1.2")
        base = res.keys()
        assert base == sorted(base), "listing order is key order on every backend"
        part = CUTS[cut](res)
        want = _expected(base, frame, cut)
        assert part.keys() == want
        assert len(part) == len(want)
        assert list(part.params.index) == want
        loc = part.locators
        assert list(loc[loc.type == "rixs"].key) == want
        np.testing.assert_array_equal(part.read("rixs"), _h5py_truth(part, "rixs"))
        np.testing.assert_array_equal(part.read("rixs", mode="direct"), _h5py_truth(part, "rixs"))


def test_split_is_disjoint_covers_everything_and_repeats_with_its_seed(served):
    url, catalog = served
    parts = {}
    for target in (url, catalog):
        res = sweepcat.client.open(target, api_key=API_KEY)["NiPS3_batched"].all()
        train, val, test = res.split([0.8, 0.1, 0.1], seed=3)
        keys = [p.keys() for p in (train, val, test)]
        assert [len(k) for k in keys] == [int(0.8 * len(res)), int(0.9 * len(res)) - int(0.8 * len(res)),
                                          len(res) - int(0.9 * len(res))]
        assert sorted(sum(keys, [])) == sorted(res.keys())
        assert keys == [p.keys() for p in res.split([0.8, 0.1, 0.1], seed=3)]
        assert keys != [p.keys() for p in res.split([0.8, 0.1, 0.1], seed=4)]
        parts[target] = keys
    assert parts[url] == parts[catalog]


def test_a_cut_is_read_on_the_version_it_was_cut_from(served):
    """A cut's rows depend on its parent's matches: after the dataset changes it refuses, never reads others."""
    from tiled.client import from_uri

    url, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_per_artifact"].all()
    head = res.head(3)
    assert len(head) == 3
    first = head.keys()[0]
    node = from_uri(url, api_key=API_KEY)["NiPS3_per_artifact"][first]
    node.update_metadata({**dict(node.metadata), "note": "touched"})  # through Tiled's API: a new version
    with pytest.raises(DatasetChanged):
        head.keys()
    with pytest.raises(DatasetChanged):
        head.read("xps")
    assert head.refresh().keys() == res.refresh().keys()[:3]


@pytest.mark.parametrize("cuts, says", [("slice:a:b", "not an integer"), ("shuffle:-1", "seed"),
                                        ("sort:nope", "no such parameter"), ("frobnicate:1", "not understood"),
                                        ("slice:0:5:0", "step"), ("take:999999", "past the result"),
                                        # found by a red-team round: these were 500s
                                        ("take:1,,2", "none empty"), ("take:,", "none empty"),
                                        ("take:99999999999999999999", "none empty")])
def test_bad_cuts_get_400_naming_the_cut(served, cuts: str, says: str):
    url, _ = served
    r = httpx.get(f"{url}/api/v1/sweepcat/search/NiPS3_batched", params={"cuts": cuts},
                  headers={"Authorization": f"Apikey {API_KEY}"})
    assert r.status_code == 400, r.text
    assert says in r.text


def test_cut_arguments_are_checked_before_any_request(served):
    url, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].all()
    with pytest.raises(SweepcatError, match="cannot sample"):
        res.sample(len(res) + 1, seed=0)
    with pytest.raises(ValueError, match="fractions"):
        res.split([0.8, 0.3])
    with pytest.raises(SweepcatError, match="no such parameter"):
        res.sort_by("tendq")
    with pytest.raises(TypeError, match="slices"):
        res[3]
    assert "[:7]" in repr(res.head(7)) and "shuffle(seed=2)" in repr(res.sample(2, seed=2))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("mode", ["direct", "server"])
def test_training_batches_are_float32_one_read_each_and_cover_every_row(served, mode: str,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import torch

    url, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 1")
    data = res.to_torch("rixs", target=["tenDq", "F2_dd"], mode=mode)
    assert "float64 -> float32" in repr(data) and f"mode {mode!r}" in repr(data)
    truth = res.read("rixs", mode="direct").astype(np.float32)
    params = res.params[["tenDq", "F2_dd"]].to_numpy(np.float32)

    reads = []
    if mode == "direct":
        real = torch_module().read_stacked
        monkeypatch.setattr(torch_module(), "read_stacked", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    else:
        real_read = type(res.backend).read
        monkeypatch.setattr(type(res.backend), "read", lambda *a, **k: (reads.append(1), real_read(*a, **k))[1])
    batches = list(data.loader(batch_size=16, shuffle=True, seed=1))
    assert len(reads) == len(batches) == -(-len(res) // 16)  # one read per batch
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (16, 151, 40) and y.shape == (16, 2)
    # every row exactly once; each x belongs with its y
    xs = torch.cat([b[0] for b in batches]).numpy()
    ys = torch.cat([b[1] for b in batches]).numpy()
    order = np.lexsort(ys.T[::-1])
    want = np.lexsort(params.T[::-1])
    np.testing.assert_array_equal(xs[order], truth[want])
    np.testing.assert_array_equal(ys[order], params[want])


def torch_module():
    from sweepcat.client import torch as module

    return module


@pytest.mark.parametrize("mode", ["direct", "server"])
def test_training_with_worker_processes(served, mode: str):
    import torch
    from torch.utils.data import DataLoader

    url, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 2.5")
    data = res.to_torch("rixs", target=["tenDq"], mode=mode, dtype=torch.float64)
    xs = torch.cat([x for x, _ in data.loader(batch_size=8, num_workers=2)]).numpy()
    np.testing.assert_array_equal(xs, res.read("rixs", mode="direct"))
    # torch's own DataLoader with automatic batching: one stacked read per batch through __getitems__
    xs = torch.cat([x for x, _ in DataLoader(data, batch_size=8, num_workers=2)]).numpy()
    np.testing.assert_array_equal(xs, res.read("rixs", mode="direct"))


def test_transform_and_dtype_apply_to_each_sample(served):
    import torch

    url, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 2.5")

    def log1p_first_row(x):
        return torch.log1p(x[0])

    data = res.to_torch("rixs", dtype="float16", transform=log1p_first_row)
    x, y = data[[0, 1]]
    assert x.dtype == torch.float16 and x.shape == (2, 40) and y.shape == (2, 0)
    want = torch.log1p(torch.from_numpy(res[:2].read("rixs")[:, 0]).to(torch.float16))
    torch.testing.assert_close(x, want)
    assert "transform log1p_first_row" in repr(data)
    with pytest.raises(SweepcatError, match="not a torch dtype"):
        res.to_torch("rixs", dtype="float33")


def test_progress_appears_only_for_long_reads(served):
    url, _ = served
    quick = ReadProgress(100, "x")
    quick(50)
    assert quick._bar is None  # under a second: nothing drawn
    slow = ReadProgress(100, "x", show_after=0.0)
    slow(10)
    assert slow._bar is not None
    slow(90)
    slow.close()
    assert slow._bar is None and slow.done == 100
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].all()
    assert res.read("rixs", progress=False).shape == (len(res), 151, 40)


def test_locator_fields_keep_only_the_columns_asked_for(served):
    url, catalog = served
    h = {"Authorization": f"Apikey {API_KEY}"}
    import io

    import pyarrow as pa

    r = httpx.get(f"{url}/api/v1/sweepcat/locators/NiPS3_batched", headers=h,
                  params={"type": "rixs", "fields": "file,dataset,index", "q": "tenDq > 1"})
    assert r.status_code == 200
    part = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    assert part.column_names == ["file", "dataset", "index"]
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 1")
    whole = res.locators
    whole = whole[whole.type == "rixs"]
    assert part.column("file").to_pylist() == list(whole.file)
    assert part.column("index").to_pylist() == [int(i) for i in whole["index"]]
    bad = httpx.get(f"{url}/api/v1/sweepcat/locators/NiPS3_batched", headers=h, params={"fields": "file,nope"})
    assert bad.status_code == 400 and "nope" in bad.text and "fields are" in bad.text
