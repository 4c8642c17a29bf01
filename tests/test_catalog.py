"""Bulk ingest into a real catalog (SQLite and PostgreSQL), read back through a real Tiled server."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiled.client import from_uri
from tiled.client.utils import ClientError
from tiled.queries import Key

from sweepcat.catalog.ingest import ingest
from sweepcat.cli import app
from sweepcat.contract import read_manifests
from sweepcat.errors import ContractError, SweepcatError
from tests.support.servers import API_KEY, sweepcat_server

DATASETS = ("NiPS3_batched", "NiPS3_per_artifact", "NiPS3_per_entity")


def manifests_of(directory: Path, name: str):
    return read_manifests(directory / f"{name}_hamiltonians.parquet", directory / f"{name}_artifacts.parquet")


def expected_array(m, huid: str, type_: str) -> np.ndarray:
    art = m.art.to_pandas()
    row = art[(art.huid == huid) & (art.type == type_)].iloc[0]
    with h5py.File(Path(m.description.root) / row["file"], "r") as f:
        ds = f[row["dataset"]]
        return ds[int(row["index"])] if row["index"] == row["index"] and row["index"] is not None else ds[()]


@pytest.fixture
def ingested(catalog_uri: str, demo_manifests: Path) -> str:
    for name in DATASETS:
        result = ingest(manifests_of(demo_manifests, name), catalog_uri)
        assert result.added_hamiltonians > 0
    return catalog_uri


def test_values_over_http_equal_h5py_for_every_layout_and_dtype(ingested: str, demo_manifests: Path):
    with sweepcat_server(ingested) as url:
        client = from_uri(url, api_key=API_KEY)
        assert set(DATASETS) <= set(client)
        seen_dtypes = set()
        for name in DATASETS:
            m = manifests_of(demo_manifests, name)
            ds = client[name]
            ham = m.ham.to_pandas()
            for pos in (0, len(ham) // 2, len(ham) - 1):
                key, huid = ham.key.iloc[pos], ham.huid.iloc[pos]
                node = ds[key]
                assert node.metadata["huid"] == huid
                assert node.metadata["tenDq"] == pytest.approx(ham.tenDq.iloc[pos], rel=0, abs=0)
                for type_ in node:
                    got = node[type_].read()
                    want = expected_array(m, huid, type_)
                    assert got.dtype == want.dtype, (name, type_)
                    assert got.shape == want.shape
                    np.testing.assert_array_equal(got, want)
                    seen_dtypes.add(got.dtype.name)
        assert {"float32", "float64", "int32", "complex128"} <= seen_dtypes


def test_server_side_slicing_reads_only_the_row(ingested: str, demo_manifests: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    with sweepcat_server(ingested) as url:
        ds = from_uri(url, api_key=API_KEY)["NiPS3_batched"]
        key = "H_NiPS3_random_rank0002_0017"
        rixs = ds[key]["rixs"]
        assert rixs.shape == (151, 40)
        assert rixs.dims == ("eloss_RIXS", "ein_RIXS")
        with h5py.File(Path(m.description.root) / "NiPS3_random_rank0002.h5", "r") as f:
            row = f["RIXS"][17]
            xps = f["XPS"][17]
        np.testing.assert_array_equal(rixs[:], row)
        np.testing.assert_array_equal(rixs[10:20, 5], row[10:20, 5])
        np.testing.assert_array_equal(rixs[-3:, ::7], row[-3:, ::7])
        np.testing.assert_array_equal(ds[key]["xps"][::-5], xps[::-5])
        assert "_axes" not in ds  # a dataset's children are its Hamiltonians only
        axes = from_uri(url, api_key=API_KEY)["_axes"]["NiPS3_batched"]
        np.testing.assert_array_equal(axes["eloss_RIXS"].read(), np.linspace(-1.0, 14.0, 151))


def test_layout_metadata_and_tiled_queries(ingested: str, demo_manifests: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    ham = m.ham.to_pandas()
    with sweepcat_server(ingested) as url:
        ds = from_uri(url, api_key=API_KEY)["NiPS3_batched"]
        md = ds.metadata["sweepcat"]
        assert md["parameters"]["tenDq"]["min"] == pytest.approx(ham.tenDq.min())
        assert md["parameters"]["tenDq"]["max"] == pytest.approx(ham.tenDq.max())
        assert md["artifacts"]["rixs"] == {"dataset": "/RIXS", "shape": [151, 40], "dtype": "float64",
                                          "axes": ["eloss_RIXS", "ein_RIXS"], "mimetype": "application/x-sliced-hdf5"}
        assert md["provenance"]["counts"] == {"hamiltonians": 256, "artifacts": 512}
        assert len(md["provenance"]["manifests"]["hamiltonians"]["sha256"]) == 64
        # Tiled's own search keeps working on the catalog sweepcat wrote.
        hits = ds.search(Key("tenDq") > 2).search(Key("F2_dd") < 8)
        expected = ham[(ham.tenDq > 2) & (ham.F2_dd < 8)].key
        assert sorted(hits) == sorted(expected)
        assert ds.keys()[:3] == list(ham.key[:3])


def test_ingest_is_idempotent_and_incremental(catalog_uri: str, demo_manifests: Path, tmp_path: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    first_half = read_manifests(demo_manifests / "NiPS3_batched_hamiltonians.parquet",
                                demo_manifests / "NiPS3_batched_artifacts.parquet")
    keep = pa.array(m.ham.column("huid").to_pylist()[:100])
    first_half.ham = m.ham.filter(pa.compute.is_in(m.ham.column("huid"), value_set=keep))
    first_half.art = m.art.filter(pa.compute.is_in(m.art.column("huid"), value_set=keep))
    r1 = ingest(first_half, catalog_uri)
    assert (r1.added_hamiltonians, r1.added_artifacts) == (100, 200)
    r2 = ingest(m, catalog_uri)
    assert (r2.added_hamiltonians, r2.added_artifacts, r2.existing_hamiltonians) == (156, 312, 100)
    r3 = ingest(m, catalog_uri)
    assert (r3.added_hamiltonians, r3.added_artifacts, r3.updated) == (0, 0, 0)
    # --update refreshes changed metadata only; --prune removes what left the manifest.
    changed = m.ham.set_column(m.ham.column_names.index("tenDq"), "tenDq",
                               pa.array(np.r_[[9.5], m.ham.column("tenDq").to_numpy()[1:]]))
    m.ham = changed
    assert ingest(m, catalog_uri, update=True).updated == 1
    r5 = ingest(first_half, catalog_uri, prune=True)
    assert r5.pruned == 156
    with sweepcat_server(catalog_uri) as url:
        ds = from_uri(url, api_key=API_KEY)["NiPS3_batched"]
        assert len(ds) == 100 and "_axes" not in ds
        assert ds[first_half.ham.column("key")[0].as_py()].metadata["tenDq"] == 9.5
        assert ds.metadata["sweepcat"]["provenance"]["catalog_counts"] == {"hamiltonians": 100, "artifacts": 200}


def _catalog_snapshot(catalog_uri: str) -> list:
    if not catalog_uri.endswith(".db"):
        from sweepcat.catalog.db import connect
        from sweepcat.catalog.schema import parse_catalog

        with connect(parse_catalog(catalog_uri)) as db:
            return [db.fetch(f"SELECT count(*) FROM {t}")[0][0]
                    for t in ("nodes", "nodes_closure", "data_sources", "assets", "structures")]
    con = sqlite3.connect(catalog_uri)
    try:
        return [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("nodes", "nodes_closure", "data_sources", "assets", "structures", "metadata_fts5")]
    finally:
        con.close()


def _break(demo_manifests: Path, demo_root: Path, tmp_path: Path, how: str):
    """A copy of the batched dataset with one defect; returns manifests pointing at it."""
    root = tmp_path / "NiPS3_batched"
    shutil.copytree(demo_root / "NiPS3_batched", root)
    m = manifests_of(demo_manifests, "NiPS3_batched")
    m.description.root = str(root)
    art = m.art
    if how == "missing file":
        (root / "NiPS3_random_rank0003.h5").unlink()
    elif how == "missing dataset":
        with h5py.File(root / "NiPS3_random_rank0001.h5", "a") as f:
            del f["XPS"]
    elif how == "index out of range":
        idx = art.column("index").to_numpy().copy()
        idx[5] = 64
        m.art = art.set_column(art.column_names.index("index"), "index", pa.array(idx))
    elif how == "shape disagrees":
        with h5py.File(root / "NiPS3_random_rank0002.h5", "a") as f:
            del f["XPS"]
            f["XPS"] = np.zeros((64, 4999))
    return m


@pytest.mark.parametrize("how, culprit", [
    ("missing file", "NiPS3_random_rank0003.h5"),
    ("missing dataset", "NiPS3_random_rank0001.h5#/XPS"),
    ("index out of range", "NiPS3_random_rank0000.h5#/XPS[64]"),
    ("shape disagrees", "NiPS3_random_rank0002.h5#/XPS"),
])
def test_bad_manifest_fails_before_writing(how, culprit, ingested: str, demo_manifests: Path, demo_root: Path,
                                           tmp_path: Path):
    before = _catalog_snapshot(ingested)
    m = _break(demo_manifests, demo_root, tmp_path, how)
    m.description.key = "Broken"
    with pytest.raises(ContractError) as err:
        ingest(m, ingested)
    assert culprit in str(err.value)
    assert _catalog_snapshot(ingested) == before


def test_wrong_schema_revision_is_refused(tmp_path: Path, demo_manifests: Path):
    catalog = tmp_path / "old.db"
    ingest(manifests_of(demo_manifests, "NiPS3_per_entity"), str(catalog))
    con = sqlite3.connect(catalog)
    con.execute("UPDATE alembic_version SET version_num = '3e87cbeb195b'")
    con.commit()
    con.close()
    before = _catalog_snapshot(str(catalog))
    with pytest.raises(SweepcatError) as err:
        ingest(manifests_of(demo_manifests, "NiPS3_batched"), str(catalog))
    text = str(err.value)
    assert "3e87cbeb195b" in text and "917dbbcfc4b1" in text and "0.2.20" in text
    assert _catalog_snapshot(str(catalog)) == before


def test_not_a_catalog_is_refused(tmp_path: Path, demo_manifests: Path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are my notes, not a database")
    with pytest.raises(SweepcatError) as err:
        ingest(manifests_of(demo_manifests, "NiPS3_batched"), str(bogus))
    assert "notes.db" in str(err.value)
    assert bogus.read_text() == "these are my notes, not a database"


def test_adapter_errors_name_the_locator(ingested: str, demo_manifests: Path, tmp_path: Path):
    """A file that vanished after ingest: a clean 404 naming the locator, not a traceback."""
    root = Path(manifests_of(demo_manifests, "NiPS3_per_entity").description.root)
    victim = root / "sim_00003.h5"
    backup = tmp_path / "backup.h5"
    shutil.copy(victim, backup)
    victim.unlink()
    try:
        with sweepcat_server(ingested) as url:
            ds = from_uri(url, api_key=API_KEY)["NiPS3_per_entity"]
            with pytest.raises(ClientError) as err:
                ds["H_sim_00003"]["rixs"].read()
            assert "404" in str(err.value) and "sim_00003.h5#/RIXS" in str(err.value)
    finally:
        shutil.copy(backup, victim)


def test_cli_ingest_and_guide_options(runner, tmp_path: Path, demo_manifests: Path, demo_root: Path):
    catalog = tmp_path / "cli.db"
    r = runner.invoke(app, ["ingest", str(demo_manifests), "--catalog", str(catalog)])
    assert r.exit_code == 0, r.output
    assert "256 Hamiltonians and 512 artifacts added" in r.output
    # The guide's spelling, with manifests that carry no sweepcat description.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for kind in ("hamiltonians", "artifacts"):
        t = pq.read_table(demo_manifests / f"NiPS3_per_entity_{kind}.parquet")
        pq.write_table(t.replace_schema_metadata({}), legacy / f"spinwave_{kind}.parquet")
    r = runner.invoke(app, ["ingest", "--ham-manifest", str(legacy / "spinwave_hamiltonians.parquet"),
                            "--art-manifest", str(legacy / "spinwave_artifacts.parquet"),
                            "--base-dir", str(demo_root / "NiPS3_per_entity"), "--catalog", str(catalog)])
    assert r.exit_code == 0, r.output
    assert "dataset 'spinwave'" in r.output
    r = runner.invoke(app, ["ingest", "--ham-manifest", str(legacy / "spinwave_hamiltonians.parquet"),
                            "--art-manifest", str(legacy / "spinwave_artifacts.parquet"), "--catalog", str(catalog)])
    assert r.exit_code == 2 and "--base-dir" in r.output


def test_fast_path_serves_locators_and_leaves_the_rest_to_tiled(ingested: str, demo_manifests: Path):
    import httpx

    m = manifests_of(demo_manifests, "NiPS3_batched")
    with h5py.File(Path(m.description.root) / "NiPS3_random_rank0001.h5", "r") as f:
        row = f["RIXS"][17]
    with sweepcat_server(ingested) as url:
        full = f"{url}/api/v1/array/full/NiPS3_batched/H_NiPS3_random_rank0001_0017/rixs"
        fast = httpx.get(full, params={"slice": "10:20,5"}, headers={"Authorization": f"Apikey {API_KEY}"})
        assert fast.status_code == 200 and fast.headers.get("x-sweepcat-fast-path") == "1"
        np.testing.assert_array_equal(np.frombuffer(fast.content, "<f8"), row[10:20, 5])
        # Other formats, missing or wrong keys: Tiled answers, as it would without sweepcat.
        as_json = httpx.get(full, params={"format": "application/json", "slice": "10:20,5"},
                            headers={"Authorization": f"Apikey {API_KEY}"})
        assert as_json.status_code == 200 and "x-sweepcat-fast-path" not in as_json.headers
        np.testing.assert_array_equal(np.asarray(as_json.json()), row[10:20, 5])
        for headers in ({}, {"Authorization": "Apikey wrong"}):
            refused = httpx.get(full, headers=headers)
            assert refused.status_code == 401 and "x-sweepcat-fast-path" not in refused.headers
        # Reading through Tiled's own route (fast path bypassed by Accept) gives the same bytes.
        stock = httpx.get(full, headers={"Authorization": f"Apikey {API_KEY}",
                                         "Accept": "application/octet-stream, */*;q=0.1"})
        assert "x-sweepcat-fast-path" not in stock.headers
        assert stock.content == httpx.get(full, headers={"Authorization": f"Apikey {API_KEY}"}).content
