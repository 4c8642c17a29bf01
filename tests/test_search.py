"""Search and access against a real server on SQLite and PostgreSQL, and on the catalog file directly."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import h5py
import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiled.client import from_uri
from tiled.queries import Comparison, In, Key

import sweepcat.client
from sweepcat.catalog.ingest import ingest
from sweepcat.cli import app
from sweepcat.errors import SweepcatError
from sweepcat.query import Between, BoolOp, Compare, Member, Not, QueryError, parse
from tests.conftest import demo_catalog
from tests.support.servers import API_KEY, sweepcat_server
from tests.test_catalog import manifests_of

PARAMS = ["F2_dd", "tenDq", "soc_c", "Gam_c", "xoffset"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_manifests: Path):
    """(url, catalog, manifests dir): the demo datasets ingested, a server running; one per backend."""
    catalog = demo_catalog(request, tmp_path_factory, demo_manifests, "search")
    with sweepcat_server(catalog, extra_env={"SWEEPCAT_MAX_READ_BYTES": str(48320 * 7)}) as url:
        yield url, catalog, demo_manifests


def frame(demo_manifests: Path, name: str = "NiPS3_batched") -> pd.DataFrame:
    return manifests_of(demo_manifests, name).ham.to_pandas()


conditions = st.one_of(
    st.tuples(st.sampled_from(PARAMS), st.sampled_from(["<", "<=", ">", ">=", "!="]),
              st.floats(-3, 16, allow_nan=False).map(lambda v: round(v, 3))),
    st.tuples(st.sampled_from(PARAMS), st.just("between"),
              st.tuples(st.floats(-3, 8).map(lambda v: round(v, 2)), st.floats(0, 16).map(lambda v: round(v, 2)))),
)


def as_text(conds: list, joiner: str) -> str:
    parts = []
    for name, op, value in conds:
        parts.append(f"{name} between {value[0]} and {value[1]}" if op == "between" else f"{name} {op} {value}")
    return f" {joiner} ".join(parts)


OPS = {"<": lambda c, v: c < v, "<=": lambda c, v: c <= v, ">": lambda c, v: c > v, ">=": lambda c, v: c >= v,
       "!=": lambda c, v: c != v, "between": lambda c, v: (c >= v[0]) & (c <= v[1])}


def pandas_mask(df: pd.DataFrame, conds: list, joiner: str) -> pd.Series:
    masks = [OPS[op](df[name], value) for name, op, value in conds]
    out = masks[0]
    for m in masks[1:]:
        out = (out & m) if joiner == "and" else (out | m)
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conds=st.lists(conditions, min_size=1, max_size=3), joiner=st.sampled_from(["and", "or"]))
def test_random_queries_equal_pandas_and_tiled(served, conds, joiner):
    url, catalog, manifests = served
    df = frame(manifests)
    text = as_text(conds, joiner)
    expected = df.key[pandas_mask(df, conds, joiner)].tolist()
    ds = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"]
    res = ds.find(text)
    assert len(res) == len(expected)
    assert res.keys() == expected  # listing (insertion) order, like Tiled's
    if joiner == "and" and all(op != "!=" for _, op, _ in conds):  # Tiled's own Key queries agree
        node = from_uri(url, api_key=API_KEY)["NiPS3_batched"]
        for name, op, value in conds:
            if op == "between":
                node = node.search(Key(name) >= value[0]).search(Key(name) <= value[1])
            else:
                node = node.search(Comparison({"<": "lt", "<=": "le", ">": "gt", ">=": "ge"}[op], name, value))
        assert sorted(node.keys()) == sorted(expected)


def test_membership_and_text_queries(served):
    url, catalog, manifests = served
    df = frame(manifests)
    ds = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"]
    some = df.huid.iloc[[3, 50, 200]].tolist()
    res = ds.find(f"huid in ({', '.join(repr(h) for h in some)})")
    assert sorted(res.keys()) == sorted(df.key.iloc[[3, 50, 200]])
    tiled = from_uri(url, api_key=API_KEY)["NiPS3_batched"].search(In("huid", some))
    assert sorted(tiled.keys()) == sorted(res.keys())
    assert len(ds.find("not (tenDq > 2) and huid != 'x'")) == int((~(df.tenDq > 2)).sum())
    kw = ds.find(tenDq=(1.0, 2.0), F2_dd=(None, 8))
    assert len(kw) == int(((df.tenDq >= 1) & (df.tenDq <= 2) & (df.F2_dd <= 8)).sum())


@pytest.mark.parametrize("bad", [
    "tenDq >", "tenDq > 1; DROP TABLE nodes", "tenDq > 1 and", "(tenDq > 1", "bogus > 1",
    "tenDq > 'x'", "tenDq >> 1", "1 > 2", "1 < tenDq < 2 < 3", "tenDq > 1) or (1=1", "tenDq > 1 -- comment",
])
def test_bad_queries_get_400_and_change_nothing(served, bad):
    url, catalog, manifests = served
    before = _counts(catalog)
    r = httpx.get(f"{url}/api/v1/sweepcat/search/NiPS3_batched", params={"q": bad},
                  headers={"Authorization": f"Apikey {API_KEY}"})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail["message"] and detail["hint"]
    if bad.startswith("bogus"):
        assert "bogus" in detail["message"] and "tenDq" in detail["hint"]  # lists the valid parameters
    assert _counts(catalog) == before
    with pytest.raises(SweepcatError) as info:  # in the client (syntax) or from the server (names), never a 500
        sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find(bad).keys()
    assert "HTTP 500" not in str(info.value) and str(info.value).strip()


def _counts(catalog: str) -> list[int]:
    if catalog.endswith(".db"):
        con = sqlite3.connect(catalog)
        try:
            return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("nodes", "data_sources")]
        finally:
            con.close()
    from sweepcat.catalog.db import connect
    from sweepcat.catalog.schema import parse_catalog

    with connect(parse_catalog(catalog)) as db:
        return [db.fetch(f"SELECT count(*) FROM {t}")[0][0] for t in ("nodes", "data_sources")]


def test_requests_without_the_right_key_are_refused(served):
    url, _, _ = served
    for path in ("/api/v1/sweepcat/search/NiPS3_batched", "/api/v1/sweepcat/read/NiPS3_batched?type=rixs",
                 "/api/v1/sweepcat/locators/NiPS3_batched", "/api/v1/sweepcat/params/NiPS3_batched"):
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Apikey nope"}).status_code == 401
    with pytest.raises(SweepcatError, match="refused the API key"):
        sweepcat.client.open(url, api_key="nope").keys()


@pytest.mark.parametrize("name, type_", [("NiPS3_batched", "rixs"), ("NiPS3_per_artifact", "xps"),
                                         ("NiPS3_per_entity", "gf"), ("NiPS3_per_entity", "mh")])
def test_batch_reads_equal_h5py_in_both_modes(served, name, type_):
    url, catalog, manifests = served
    m = manifests_of(manifests, name)
    for target in (url, catalog):
        ds = sweepcat.client.open(target, api_key=API_KEY)[name]
        res = ds.find("tenDq > 1.5")
        server = res.read(type_)  # paged: the server's response limit is 7 RIXS maps in this fixture
        direct = res.read(type_, mode="direct")
        assert server.dtype == direct.dtype and server.shape == direct.shape
        np.testing.assert_array_equal(server, direct)
        loc = res.locators
        loc = loc[loc.type == type_].set_index("key").loc[res.keys()]
        for i in (0, len(loc) // 2, len(loc) - 1):
            row = loc.iloc[i]
            assert row.file.startswith(m.description.root)
            with h5py.File(row.file, "r") as f:
                want = f[row.dataset][int(row["index"])] if not pd.isna(row["index"]) else f[row.dataset][()]
            np.testing.assert_array_equal(server[i], want)
            assert row.url.startswith("file://") and row.dataset in row.url


def test_oversized_read_says_how_to_page(served):
    url, _, _ = served
    r = httpx.get(f"{url}/api/v1/sweepcat/read/NiPS3_batched", params={"type": "rixs"},
                  headers={"Authorization": f"Apikey {API_KEY}"})
    assert r.status_code == 413
    assert "limit=7" in r.text and "offset" in r.text


def test_params_locators_facets_and_xarray(served):
    url, catalog, manifests = served
    df = frame(manifests).set_index("key")
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 2")
    params = res.params
    pd.testing.assert_frame_equal(params, df[df.tenDq > 2], check_dtype=False)
    loc = res.locators
    assert set(loc.columns) == {"key", "huid", "type", "file", "dataset", "index", "url"}
    assert len(loc) == 2 * len(res)
    facet = res.facets("F2_dd", bins=5)
    sub = df[df.tenDq > 2].F2_dd
    assert facet["min"] == pytest.approx(sub.min()) and facet["max"] == pytest.approx(sub.max())
    assert sum(facet["histogram"]["counts"]) == len(sub)
    x = res.to_xarray("rixs")
    assert x.dims == ("hamiltonian", "eloss_RIXS", "ein_RIXS")
    np.testing.assert_allclose(x.eloss_RIXS.values, np.linspace(-1.0, 14.0, 151))
    np.testing.assert_allclose(x.tenDq.values, params.tenDq.values)
    assert list(x.key.values) == res.keys()


@pytest.mark.parametrize("mode", ["direct", "server"])
def test_torch_dataset_with_workers(served, mode):
    import torch
    from torch.utils.data import DataLoader

    url, _, _ = served
    res = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"].find("tenDq > 2.5")
    data = res.to_torch("rixs", target=["tenDq", "F2_dd"], mode=mode)
    assert len(data) == len(res)
    xs, ys = [], []
    for xb, yb in DataLoader(data, batch_size=8, num_workers=2):
        xs.append(xb)
        ys.append(yb)
    stacked = torch.cat(xs).numpy()
    assert stacked.dtype == np.float32  # what a float32 model takes, by default
    np.testing.assert_array_equal(stacked, res.read("rixs", mode="direct").astype(np.float32))
    np.testing.assert_allclose(torch.cat(ys).numpy(), res.params[["tenDq", "F2_dd"]].to_numpy(), rtol=1e-6)


def test_index_follows_ingest_and_deletes(tmp_path: Path, demo_manifests: Path, runner):
    catalog = str(tmp_path / "c.db")
    m = manifests_of(demo_manifests, "NiPS3_batched")
    half = manifests_of(demo_manifests, "NiPS3_batched")
    half.ham = m.ham.slice(0, 128)
    import pyarrow.compute as pc

    half.art = m.art.filter(pc.is_in(m.art.column("huid"), value_set=half.ham.column("huid")))
    ingest(half, catalog)
    with sweepcat_server(catalog) as url:
        ds = sweepcat.client.open(url, api_key=API_KEY)["NiPS3_batched"]
        assert len(ds.all()) == 128
        ingest(m, catalog)  # a running server sees the commit
        assert len(ds.all()) == 256
        # Tiled's own delete: the parameter row goes by cascade, the index notices
        from_uri(url, api_key=API_KEY)["NiPS3_batched"]["H_NiPS3_random_rank0000_0005"].delete(recursive=True)
        assert len(ds.all()) == 255 and "H_NiPS3_random_rank0000_0005" not in ds.all().keys()
        r = runner.invoke(app, ["delete", "NiPS3_batched", "H_NiPS3_random_rank0000_0006", "--catalog", catalog,
                                "--yes"])
        assert r.exit_code == 0, r.output
        assert len(ds.all()) == 254
        r = runner.invoke(app, ["reindex", "NiPS3_batched", "--catalog", catalog])
        assert r.exit_code == 0 and "254" in r.output
        assert len(ds.all()) == 254


def test_query_language_unit():
    assert parse("a > 1 and (b < 2 or c in (1, 'x'))") == BoolOp("and", (
        Compare("a", ">", 1), BoolOp("or", (Compare("b", "<", 2), Member("c", (1, "x"))))))
    assert parse("a between -1e3 and 2.5") == Between("a", -1000.0, 2.5)
    assert parse("not x == true") == Not(Compare("x", "==", True))
    for bad in ("a >", "a in ()", "and a > 1", "a between 1", "a > 1 b < 2", "a ~ 1"):
        with pytest.raises(QueryError):
            parse(bad)


def test_reprs_summarize_without_loading_arrays(served):
    url, _, _ = served
    cat = sweepcat.client.open(url, api_key=API_KEY)
    html = cat._repr_html_()
    assert "NiPS3_batched" in html and "256" in html and "rixs" in html and "tenDq" in html
    assert "NiPS3_per_entity: 24 Hamiltonians" in repr(cat)
    ds = cat["NiPS3_batched"]
    assert "rixs(151, 40)" in repr(ds) and "tenDq [" in repr(ds)
    assert "eloss_RIXS" in ds._repr_html_()
    res = ds.find("tenDq > 2")
    table = res._repr_html_()
    assert table.count("<tr>") == 11 and "tenDq &gt; 2" in table  # header + first 10 rows
    assert f"{len(res)} of NiPS3_batched" in repr(res)
    with pytest.raises(KeyError, match="NiPS3_batched"):
        cat["nope"]


def test_cli_help_teaches(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for command in ("demo-data", "inspect", "manifest", "ingest", "register", "serve", "config", "delete", "reindex"):
        assert command in r.output
    for command in ("ingest", "register", "serve", "delete"):
        r = runner.invoke(app, [command, "--help"])
        assert r.exit_code == 0 and "Example" in r.output, command
