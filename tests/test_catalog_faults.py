"""The catalog under stress: equivalence with Tiled's own writes, SIGKILL, live servers, delete, config, auth.

Every test runs against real catalogs (SQLite files and a real PostgreSQL) and
real Tiled servers started in subprocesses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest
import yaml
from tiled.client import from_uri

from sweepcat.catalog.db import connect
from sweepcat.catalog.ingest import ingest
from sweepcat.catalog.schema import parse_catalog
from sweepcat.cli import app
from sweepcat.contract import read_manifests
from sweepcat.demodata import Scale, write_batched
from sweepcat.errors import ContractError
from tests.support import paused
from tests.support.servers import API_KEY, clean_env, free_port, stop, sweepcat_server, wait_ready
from tests.test_catalog import expected_array, manifests_of

MIMETYPE = "application/x-sliced-hdf5"
BIG = "BigSweep"  # 8 files x 2,000 rows: 16,000 Hamiltonians, 32,000 artifacts
BIG_HAM, BIG_ART = 16_000, 32_000


# --------------------------------------------------------------------------- helpers


def sql(path: str | Path, query: str, *args: Any) -> list[tuple]:
    con = sqlite3.connect(str(path))
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def sqlite_snapshot(path: str | Path) -> dict[str, Any]:
    """Row counts of every table (FTS shadow tables included), the triggers, and the top-level keys."""
    con = sqlite3.connect(str(path))
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {
            "counts": {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables},
            "triggers": sorted(con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()),
            "top": sorted(r[0] for r in con.execute("SELECT key FROM nodes WHERE parent = 0")),
        }
    finally:
        con.close()


def pg_snapshot(uri: str) -> dict[str, Any]:
    with connect(parse_catalog(uri)) as db:
        tables = [r[0] for r in db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {
            "counts": {t: int(db.fetch(f'SELECT count(*) FROM "{t}"')[0][0]) for t in tables},
            "triggers": sorted(db.fetch("SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal")),
            "top": sorted(r[0] for r in db.fetch("SELECT key FROM nodes WHERE parent = 0")),
        }


def snapshot(uri: str) -> dict[str, Any]:
    return pg_snapshot(uri) if uri.startswith("postgresql") else sqlite_snapshot(uri)


def orphans(path: str | Path) -> dict[str, int]:
    """Rows that point at nodes/data sources that are gone, and FTS entries without a node."""
    checks = {
        "nodes without parent": "SELECT count(*) FROM nodes WHERE parent IS NOT NULL "
                                "AND parent NOT IN (SELECT id FROM nodes)",
        "closure": "SELECT count(*) FROM nodes_closure WHERE ancestor NOT IN (SELECT id FROM nodes) "
                   "OR descendant NOT IN (SELECT id FROM nodes)",
        "closure self rows missing": "SELECT count(*) FROM nodes WHERE id NOT IN "
                                     "(SELECT descendant FROM nodes_closure WHERE depth = 0)",
        "data_sources": "SELECT count(*) FROM data_sources WHERE node_id NOT IN (SELECT id FROM nodes)",
        "associations": "SELECT count(*) FROM data_source_asset_association "
                        "WHERE data_source_id NOT IN (SELECT id FROM data_sources)",
        "fts without node": "SELECT count(*) FROM metadata_fts5_docsize WHERE id NOT IN (SELECT id FROM nodes)",
        "node without fts": "SELECT count(*) FROM nodes WHERE id NOT IN (SELECT id FROM metadata_fts5_docsize)",
    }
    return {name: sql(path, q)[0][0] for name, q in checks.items()}


def fts_integrity(path: str | Path) -> None:
    """FTS5's own check of its index against the nodes table (raises on mismatch)."""
    con = sqlite3.connect(str(path))
    try:
        con.execute("INSERT INTO metadata_fts5(metadata_fts5) VALUES ('integrity-check')")
        con.commit()
    finally:
        con.close()


def fts_match(path: str | Path, phrase: str) -> set[int]:
    return {r[0] for r in sql(path, "SELECT rowid FROM metadata_fts5 WHERE metadata_fts5 MATCH ?", f'"{phrase}"')}


def subtree_size(path: str | Path, node_id: int) -> int:
    """Nodes in a subtree, counted by walking parent links (independent of the closure table)."""
    total, frontier = 0, [node_id]
    while frontier:
        total += len(frontier)
        marks = ",".join("?" * len(frontier))
        frontier = [r[0] for r in sql(path, f"SELECT id FROM nodes WHERE parent IN ({marks})", *frontier)]
    return total


def node_id(path: str | Path, *segments: str) -> int | None:
    nid = 0
    for s in segments:
        row = sql(path, "SELECT id FROM nodes WHERE parent = ? AND key = ?", nid, s)
        if not row:
            return None
        nid = row[0][0]
    return nid


def file_states(*roots: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def ds_without_ids(data_sources: list) -> list[dict]:
    out = []
    for d in data_sources:
        as_dict = dataclasses.asdict(d)
        as_dict.pop("id")
        out.append(as_dict)
    return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def big_manifests(tmp_path_factory: pytest.TempPathFactory, runner) -> Path:
    """A larger batched dataset (unfilled chunks: tiny on disk) and its manifests, written through the CLI."""
    base = tmp_path_factory.mktemp("big")
    root = base / BIG
    write_batched(root, Scale(batched_files=8, rows_per_file=2000, filled_files=0,
                              per_artifact_entities=0, per_entity_entities=0))
    spec = base / "big.yml"
    r = runner.invoke(app, ["inspect", str(root), "-o", str(spec)])
    assert r.exit_code == 0, r.output
    out = base / "manifests"
    r = runner.invoke(app, ["manifest", str(spec), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert f"{BIG_HAM} Hamiltonians" in r.output
    return out


@pytest.fixture
def small_catalog(tmp_path: Path, demo_manifests: Path) -> Path:
    """A SQLite catalog holding the per-entity and per-artifact demo datasets."""
    catalog = tmp_path / "small.db"
    for name in ("NiPS3_per_entity", "NiPS3_per_artifact"):
        ingest(manifests_of(demo_manifests, name), str(catalog))
    return catalog


# --------------------------------------------------------------------------- 1. same rows as Tiled's HTTP API
# (tests/test_integrity.py: every column of every table, on both backends)


# --------------------------------------------------------------------------- 4. sweepcat delete


def test_cli_delete_dry_run_prompt_and_each_level(runner, small_catalog: Path, demo_root: Path):
    cat = str(small_catalog)
    files_before = file_states(demo_root / "NiPS3_per_entity", demo_root / "NiPS3_per_artifact")
    ds_id = node_id(cat, "NiPS3_per_entity")
    n_dataset = subtree_size(cat, ds_id)
    assert n_dataset == 1 + 24 * (1 + 4)  # dataset, 24 Hamiltonians with 4 arrays (axes live in /_axes)
    other_before = subtree_size(cat, node_id(cat, "NiPS3_per_artifact"))
    before = sqlite_snapshot(cat)

    # --dry-run: says what and how much, deletes nothing.
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "--catalog", cat, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert f"would delete NiPS3_per_entity ({n_dataset} node(s))" in r.output
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "H_sim_00003", "--catalog", cat, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would delete NiPS3_per_entity/H_sim_00003 (5 node(s))" in r.output
    assert sqlite_snapshot(cat) == before

    # Without --yes, answering "n": nothing deleted, non-zero exit.
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "--catalog", cat], input="n\n")
    assert r.exit_code != 0
    assert "nothing deleted" in r.output
    assert sqlite_snapshot(cat) == before

    # Unknown keys: non-zero, naming the path, nothing deleted.
    for args, named in ((["NiPS3_per_entity", "H_nope"], "NiPS3_per_entity/H_nope"),
                        (["NiPS3_per_entity", "H_sim_00003", "nope"], "NiPS3_per_entity/H_sim_00003/nope"),
                        (["NoSuchDataset"], "NoSuchDataset")):
        r = runner.invoke(app, ["delete", *args, "--catalog", cat, "--yes"])
        assert r.exit_code != 0 and named in r.output, r.output
    assert sqlite_snapshot(cat) == before

    # One artifact.
    rixs = node_id(cat, "NiPS3_per_entity", "H_sim_00003", "rixs")
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "H_sim_00003", "rixs", "--catalog", cat, "--yes"])
    assert r.exit_code == 0, r.output
    assert "deleted NiPS3_per_entity/H_sim_00003/rixs (1 node(s))" in r.output
    assert node_id(cat, "NiPS3_per_entity", "H_sim_00003", "rixs") is None
    assert sorted(k for (k,) in sql(cat, "SELECT key FROM nodes WHERE parent = ?",
                                     node_id(cat, "NiPS3_per_entity", "H_sim_00003"))) == ["gf", "mh", "xps"]
    assert subtree_size(cat, ds_id) == n_dataset - 1
    assert sql(cat, "SELECT count(*) FROM data_sources WHERE node_id = ?", rixs) == [(0,)]
    assert sql(cat, "SELECT count(*) FROM nodes_closure WHERE descendant = ? OR ancestor = ?", rixs, rixs) == [(0,)]
    assert set(orphans(cat).values()) == {0}, orphans(cat)

    # One Hamiltonian (with its arrays).
    ham = node_id(cat, "NiPS3_per_entity", "H_sim_00004")
    gone = [ham] + [i for (i,) in sql(cat, "SELECT id FROM nodes WHERE parent = ?", ham)]
    assert len(gone) == 5
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "H_sim_00004", "--catalog", cat, "--yes"])
    assert r.exit_code == 0, r.output
    assert node_id(cat, "NiPS3_per_entity", "H_sim_00004") is None
    assert subtree_size(cat, ds_id) == n_dataset - 6
    marks = ",".join("?" * len(gone))
    assert sql(cat, f"SELECT count(*) FROM nodes WHERE id IN ({marks})", *gone) == [(0,)]
    assert sql(cat, f"SELECT count(*) FROM data_sources WHERE node_id IN ({marks})", *gone) == [(0,)]
    assert sql(cat, f"SELECT count(*) FROM nodes_closure WHERE descendant IN ({marks}) OR ancestor IN ({marks})",
               *gone, *gone) == [(0,)]
    assert fts_match(cat, "sim_00004") == set()
    assert fts_match(cat, "sim_00005") != set()
    assert sql(cat, f"SELECT count(*) FROM sweepcat_p_{ds_id} WHERE node_id = ?", ham) == [(0,)]
    assert sql(cat, f"SELECT count(*) FROM sweepcat_p_{ds_id}") == [(23,)]
    assert set(orphans(cat).values()) == {0}, orphans(cat)
    fts_integrity(cat)

    # The whole dataset; the other dataset stays as it was.
    gone = [i for (i,) in sql(cat, "SELECT descendant FROM nodes_closure WHERE ancestor = ?", ds_id)]
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "--catalog", cat, "--yes"])
    assert r.exit_code == 0, r.output
    assert sqlite_snapshot(cat)["top"] == ["NiPS3_per_artifact", "_axes"]
    assert sql(cat, "SELECT d.key FROM nodes d JOIN nodes r ON d.parent = r.id WHERE r.parent = 0 AND "
                    "r.key = '_axes'") == [("NiPS3_per_artifact",)]  # the deleted dataset's axes went with it
    assert f"sweepcat_p_{ds_id}" not in sqlite_snapshot(cat)["counts"]
    assert sql(cat, "SELECT count(*) FROM sweepcat_datasets WHERE dataset_id = ?", ds_id) == [(0,)]
    marks = ",".join("?" * len(gone))
    for table, column in (("nodes", "id"), ("data_sources", "node_id"), ("nodes_closure", "descendant"),
                          ("nodes_closure", "ancestor"), ("metadata_fts5_docsize", "id")):
        assert sql(cat, f"SELECT count(*) FROM {table} WHERE {column} IN ({marks})", *gone) == [(0,)], table
    assert set(orphans(cat).values()) == {0}, orphans(cat)
    fts_integrity(cat)
    assert subtree_size(cat, node_id(cat, "NiPS3_per_artifact")) == other_before
    assert sql(cat, "PRAGMA integrity_check") == [("ok",)]
    assert sql(cat, "PRAGMA foreign_key_check") == []

    # HDF5 files are never touched.
    assert file_states(demo_root / "NiPS3_per_entity", demo_root / "NiPS3_per_artifact") == files_before


def test_cli_delete_via_url_of_a_running_server(runner, small_catalog: Path, demo_root: Path):
    cat = str(small_catalog)
    files_before = file_states(demo_root / "NiPS3_per_artifact")
    ds_id = node_id(cat, "NiPS3_per_artifact")
    key = sql(cat, "SELECT key FROM nodes WHERE parent = ? AND key != '_axes' ORDER BY id LIMIT 1", ds_id)[0][0]
    n_before = subtree_size(cat, ds_id)
    n_ham = subtree_size(cat, node_id(cat, "NiPS3_per_artifact", key))
    with sweepcat_server(cat) as url:
        r = runner.invoke(app, ["delete", "NiPS3_per_artifact", key, "--url", url, "--api-key", API_KEY, "--dry-run"])
        assert r.exit_code == 0, r.output
        assert f"would delete NiPS3_per_artifact/{key}" in r.output
        assert node_id(cat, "NiPS3_per_artifact", key) is not None
        r = runner.invoke(app, ["delete", "NiPS3_per_artifact", "H_nope", "--url", url, "--api-key", API_KEY, "--yes"])
        assert r.exit_code != 0 and "NiPS3_per_artifact/H_nope" in r.output, r.output
        r = runner.invoke(app, ["delete", "NiPS3_per_artifact", key, "--url", url, "--api-key", "wrongKey1", "--yes"])
        assert r.exit_code != 0
        assert node_id(cat, "NiPS3_per_artifact", key) is not None
        r = runner.invoke(app, ["delete", "NiPS3_per_artifact", key, "--url", url, "--api-key", API_KEY, "--yes"])
        assert r.exit_code == 0, r.output
        assert f"deleted NiPS3_per_artifact/{key}" in r.output
        client = from_uri(url, api_key=API_KEY)
        assert key not in client["NiPS3_per_artifact"]
        assert len([k for k in client["NiPS3_per_artifact"] if k != "_axes"]) == 23
    assert node_id(cat, "NiPS3_per_artifact", key) is None
    assert subtree_size(cat, ds_id) == n_before - n_ham
    assert set(orphans(cat).values()) == {0}, orphans(cat)
    assert file_states(demo_root / "NiPS3_per_artifact") == files_before


def test_cli_delete_leaves_the_catalog_as_tiled_delete_does(runner, small_catalog: Path, tmp_path: Path):
    """Deleting a dataset with --catalog and through Tiled's HTTP API gives the same tables.

    Tiled deletes the asset rows that no remaining data source references."""
    via_http = tmp_path / "via_http.db"
    shutil.copy(small_catalog, via_http)
    r = runner.invoke(app, ["delete", "NiPS3_per_entity", "--catalog", str(small_catalog), "--yes"])
    assert r.exit_code == 0, r.output
    with sweepcat_server(str(via_http)) as url:
        r = runner.invoke(app, ["delete", "NiPS3_per_entity", "--url", url, "--api-key", API_KEY, "--yes"])
        assert r.exit_code == 0, r.output
    unreferenced = "SELECT count(*) FROM assets WHERE id NOT IN (SELECT asset_id FROM data_source_asset_association)"
    assert sql(via_http, unreferenced) == [(0,)]
    tiled_tables = {t: n for t, n in sqlite_snapshot(via_http)["counts"].items() if not t.startswith("sweepcat_")}
    assert {t: sqlite_snapshot(small_catalog)["counts"][t] for t in tiled_tables} == tiled_tables
    assert sql(small_catalog, unreferenced) == [(0,)]


# --------------------------------------------------------------------------- 7. paths escaping the root


def test_ingest_refuses_a_symlink_leading_outside_the_root(tmp_path: Path, demo_root: Path, demo_manifests: Path,
                                                           runner):
    root = tmp_path / "NiPS3_per_entity"
    shutil.copytree(demo_root / "NiPS3_per_entity", root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = root / "sim_00007.h5"
    shutil.move(victim, outside / "sim_00007.h5")
    victim.symlink_to(outside / "sim_00007.h5")  # a valid HDF5 file, but outside the root
    m = manifests_of(demo_manifests, "NiPS3_per_entity")
    m.description.root = str(root)

    # Into a catalog that holds another dataset: refused, nothing written.
    catalog = tmp_path / "cat.db"
    ingest(manifests_of(demo_manifests, "NiPS3_per_artifact"), str(catalog))
    before = sqlite_snapshot(catalog)
    with pytest.raises(ContractError) as err:
        ingest(m, str(catalog))
    text = str(err.value)
    assert "sim_00007.h5" in text and "outside the dataset root" in text
    assert "nothing was written" in text
    assert [p.where for p in err.value.problems if "sim_00007.h5" in p.what] != []
    assert sqlite_snapshot(catalog) == before

    # Into a new catalog: refused before the catalog is even created.
    fresh = tmp_path / "fresh.db"
    with pytest.raises(ContractError):
        ingest(m, str(fresh))
    assert not fresh.exists()

    # The CLI says the same, without a traceback, with --base-dir pointing at the copy.
    r = runner.invoke(app, ["ingest", str(demo_manifests / "NiPS3_per_entity_hamiltonians.parquet"),
                            str(demo_manifests / "NiPS3_per_entity_artifacts.parquet"),
                            "--base-dir", str(root), "--catalog", str(catalog)])
    assert r.exit_code == 2, r.output
    assert "sim_00007.h5" in r.output and "outside the dataset root" in r.output
    assert "Traceback" not in r.output
    assert sqlite_snapshot(catalog) == before


@pytest.mark.parametrize("how", ["symlink", "dotdot"])
def test_ingest_refuses_a_shared_axis_file_outside_the_root(how: str, tmp_path: Path, demo_root: Path,
                                                          demo_manifests: Path):
    """Shared axes become assets the server reads like any artifact: they must stay inside the root too."""
    root = tmp_path / "NiPS3_per_entity"
    shutil.copytree(demo_root / "NiPS3_per_entity", root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(root / "sim_00000.h5", outside / "axes.h5")
    if how == "symlink":
        (root / "axes.h5").symlink_to(outside / "axes.h5")
        rel = "axes.h5"
    else:
        rel = "../elsewhere/axes.h5"
    m = manifests_of(demo_manifests, "NiPS3_per_entity")
    m.description.root = str(root)
    m.description.shared_axes = {name: {**ax, "file": rel} for name, ax in m.description.shared_axes.items()}
    catalog = tmp_path / "cat.db"
    ingest(manifests_of(demo_manifests, "NiPS3_per_artifact"), str(catalog))
    before = sqlite_snapshot(catalog)
    with pytest.raises(ContractError) as err:
        ingest(m, str(catalog))
    assert rel in str(err.value)
    assert sqlite_snapshot(catalog) == before
    assert sql(catalog, "SELECT count(*) FROM assets WHERE data_uri LIKE '%axes.h5'") == [(0,)]


# --------------------------------------------------------------------------- 5. sweepcat config -> tiled serve config


def _read_lines_until(proc: subprocess.Popen, pattern: str, timeout: float) -> tuple[re.Match | None, list[str]]:
    """Read proc.stdout line by line in a thread; stop at the first line matching pattern."""
    lines: list[str] = []
    found: dict[str, re.Match] = {}
    done = threading.Event()

    def reader() -> None:
        for line in proc.stdout:
            lines.append(line)
            hit = re.search(pattern, line)
            if hit and "m" not in found:
                found["m"] = hit
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout)
    return found.get("m"), lines


def test_config_yaml_runs_under_tiled_serve_config(runner, small_catalog: Path, demo_manifests: Path,
                                                    demo_root: Path, tmp_path: Path):
    r = runner.invoke(app, ["config", "--catalog", str(small_catalog)], env={"SWEEPCAT_API_KEY": None})
    assert r.exit_code == 0, r.output
    config = yaml.safe_load(r.stdout)
    key = config["authentication"]["single_user_api_key"]
    assert key.isalnum() and len(key) >= 16
    assert config["authentication"]["allow_anonymous_access"] is False
    (tree,) = config["trees"]
    assert tree["args"]["readable_storage"] == sorted(
        str((demo_root / n).resolve()) for n in ("NiPS3_per_artifact", "NiPS3_per_entity"))
    mapping = tree["args"]["adapters_by_mimetype"]
    assert mapping.pop(MIMETYPE) == "sweepcat.server.adapter:SlicedHDF5Adapter"
    assert "application/x-hdf5" in mapping and set(mapping.values()) == {"sweepcat.server.adapter:RefusedAdapter"}
    # With SWEEPCAT_API_KEY set, that key goes into the config.
    r2 = runner.invoke(app, ["config", "--catalog", str(small_catalog)], env={"SWEEPCAT_API_KEY": API_KEY})
    assert yaml.safe_load(r2.stdout)["authentication"]["single_user_api_key"] == API_KEY

    config_file = tmp_path / "tiled.yml"
    config_file.write_text(r.stdout)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tiled", "serve", "config", str(config_file), "--port", str(port)],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        client = from_uri(url, api_key=key)
        assert sorted(client) == ["NiPS3_per_artifact", "NiPS3_per_entity", "_axes"]
        m = manifests_of(demo_manifests, "NiPS3_per_entity")
        ham = m.ham.to_pandas()
        huid, hkey = ham.huid.iloc[5], ham.key.iloc[5]
        got = client["NiPS3_per_entity"][hkey]["rixs"].read()
        art = m.art.to_pandas()
        row = art[(art.huid == huid) & (art.type == "rixs")].iloc[0]
        with h5py.File(Path(m.description.root) / row["file"], "r") as f:
            want = f[row["dataset"]][()]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        assert httpx.get(f"{url}/api/v1/array/full/NiPS3_per_entity/{hkey}/rixs").status_code == 401
    finally:
        stop(proc)


# --------------------------------------------------------------------------- 6. authentication


def _array_url(url: str, path: str) -> str:
    return f"{url}/api/v1/array/full/{path}"


def _xps_of(demo_root: Path, huid: str) -> np.ndarray:
    with h5py.File(demo_root / "NiPS3_per_entity" / f"{huid}.h5", "r") as f:
        return f["XPS"][()]


def test_api_key_is_required_to_read_arrays(small_catalog: Path, demo_root: Path):
    path = "NiPS3_per_entity/H_sim_00002/xps"
    want = _xps_of(demo_root, "sim_00002")
    with sweepcat_server(str(small_catalog)) as url:
        # Both ways of answering /array/full: sweepcat's fast path (raw bytes) and Tiled's route (JSON).
        for accept in ("application/octet-stream", "application/json"):
            def get(accept=accept, **kw):
                headers = {"Accept": accept, **kw.pop("headers", {})}
                return httpx.get(_array_url(url, path), headers=headers, **kw)

            assert get().status_code == 401, accept
            assert get(headers={"Authorization": "Apikey wrongKey123"}).status_code == 401, accept
            assert get(params={"api_key": "wrongKey123"}).status_code == 401, accept
            assert get(params={"api_key": API_KEY.lower()}).status_code == 401, accept
            for ok in (get(headers={"Authorization": f"Apikey {API_KEY}"}), get(params={"api_key": API_KEY})):
                assert ok.status_code == 200, accept
                got = np.asarray(ok.json()) if accept == "application/json" else np.frombuffer(ok.content, "<f8")
                np.testing.assert_array_equal(got, want)
        # Listing and metadata need the key too.
        assert httpx.get(f"{url}/api/v1/search/").status_code == 401
        assert httpx.get(f"{url}/api/v1/metadata/NiPS3_per_entity").status_code == 401


def test_public_server_reads_anonymously_but_refuses_anonymous_writes(small_catalog: Path, demo_root: Path):
    path = "NiPS3_per_entity/H_sim_00002/xps"
    want = _xps_of(demo_root, "sim_00002")
    with sweepcat_server(str(small_catalog), public=True) as url:
        r = httpx.get(_array_url(url, path), headers={"Accept": "application/json"})
        assert r.status_code == 200
        np.testing.assert_array_equal(np.asarray(r.json()), want)
        r = httpx.get(_array_url(url, path), headers={"Accept": "application/octet-stream"})
        assert r.status_code == 200
        np.testing.assert_array_equal(np.frombuffer(r.content, "<f8"), want)
        body = {"id": "anon", "structure_family": "container", "metadata": {}, "specs": [], "data_sources": []}
        r = httpx.post(f"{url}/api/v1/metadata/", json=body)
        assert r.status_code in (401, 403), r.text
        r = httpx.post(f"{url}/api/v1/metadata/", json=body, headers={"Authorization": "Apikey wrongKey123"})
        assert r.status_code in (401, 403), r.text
        r = httpx.delete(f"{url}/api/v1/metadata/NiPS3_per_entity/H_sim_00002", params={"recursive": True})
        assert r.status_code in (401, 403), r.text
        r = httpx.put(f"{url}/api/v1/metadata/NiPS3_per_entity/H_sim_00002", json={"metadata": {"huid": "x"}})
        assert r.status_code in (401, 403), r.text
        assert node_id(small_catalog, "anon") is None
        # The key still writes.
        r = httpx.post(f"{url}/api/v1/metadata/", json=body, headers={"Authorization": f"Apikey {API_KEY}"})
        assert r.status_code == 200, r.text
    assert node_id(small_catalog, "anon") is not None
    assert node_id(small_catalog, "NiPS3_per_entity", "H_sim_00002") is not None
    md = sql(small_catalog, "SELECT metadata FROM nodes WHERE id = ?", node_id(small_catalog, "NiPS3_per_entity",
                                                                                "H_sim_00002"))[0][0]
    assert json.loads(md)["huid"] == "sim_00002"


def test_serve_without_api_key_prints_a_generated_key_that_works(small_catalog: Path):
    port = free_port()
    env = clean_env()
    env.pop("SWEEPCAT_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "sweepcat.cli", "serve", "--catalog", str(small_catalog),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        hit, lines = _read_lines_until(proc, r"API key:\s+(\w+)", timeout=60)
        assert hit is not None, "".join(lines)
        key = hit.group(1)
        assert "generated" in hit.string
        assert key != API_KEY and key.isalnum() and len(key) >= 16
        wait_ready(url, proc)
        path = "NiPS3_per_entity/H_sim_00002/xps"
        assert httpx.get(_array_url(url, path)).status_code == 401
        assert httpx.get(_array_url(url, path), params={"api_key": key[::-1]}).status_code == 401
        assert httpx.get(_array_url(url, path), params={"api_key": key}).status_code == 200
        assert from_uri(url, api_key=key)["NiPS3_per_entity"]["H_sim_00002"]["xps"].shape == (5000,)
    finally:
        stop(proc)


# --------------------------------------------------------------------------- 2. SIGKILL during ingest


def _in_transaction_sqlite(catalog: str, since_ns: int) -> bool:
    """A write transaction begun after ``since_ns`` is open.

    In rollback-journal mode (what Tiled creates) the journal is written from the first change until
    COMMIT deletes it. A SIGKILLed writer can leave a cold journal behind (harmless, ignored by
    readers), so only a journal written to after ``since_ns`` counts."""
    try:
        return Path(catalog + "-journal").stat().st_mtime_ns >= since_ns
    except FileNotFoundError:
        return False


JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # a synced ("hot") rollback journal starts with it


def _journal_is_hot(catalog: str) -> bool:
    """COMMIT has begun: the journal is synced and the database file is being written."""
    try:
        with open(catalog + "-journal", "rb") as f:
            return f.read(8) == JOURNAL_MAGIC
    except FileNotFoundError:
        return False


def _kill_at(manifests: Path, catalog: str, log: Path, phase: str, done: int = 0) -> bool:
    """SIGKILL an ingest stopped at ``phase``; True when the kill landed inside the write transaction."""
    started = time.time_ns()
    proc = paused.start("ingest", str(manifests), catalog, phase, str(done), log=log)
    try:
        paused.stopped(proc, log)
        inside = _in_transaction_sqlite(catalog, started) if catalog.endswith(".db") else bool(
            _pg_write_lock_holders(catalog))
    finally:
        paused.kill(proc)
    assert proc.returncode == -signal.SIGKILL
    return inside


def _probe(catalog: str, where: Path) -> tuple[dict[str, Any], list, list]:
    """Snapshot, integrity and FK check of a copy of the catalog as the killed process left it.

    The copy (with its journal) is opened read-write, so SQLite rolls a hot journal back there;
    the catalog itself is left untouched for the next ingest to find."""
    where.mkdir()
    copy = where / Path(catalog).name
    shutil.copy(catalog, copy)
    if Path(catalog + "-journal").exists():
        shutil.copy(catalog + "-journal", str(copy) + "-journal")
    shot = sqlite_snapshot(copy)
    fts_integrity(copy)
    return shot, sql(copy, "PRAGMA integrity_check"), sql(copy, "PRAGMA foreign_key_check")


def _assert_big_complete(uri: str, result=None) -> None:
    if result is not None:
        assert (result.added_hamiltonians, result.added_artifacts) == (BIG_HAM, BIG_ART)
    with connect(parse_catalog(uri)) as db:
        (ds,) = db.fetch("SELECT id FROM nodes WHERE parent = 0 AND key = ?", BIG)[0]
        n = db.fetch("SELECT count(*) FROM nodes_closure WHERE ancestor = ?", ds)[0][0]
        n_ds = db.fetch("SELECT count(*) FROM data_sources d JOIN nodes_closure c ON c.descendant = d.node_id "
                        "WHERE c.ancestor = ?", ds)[0][0]
        axes = db.fetch("SELECT count(*) FROM nodes a JOIN nodes d ON a.parent = d.id JOIN nodes r ON d.parent = r.id "
                        "WHERE r.parent = 0 AND r.key = '_axes' AND d.key = ?", BIG)[0][0]
    assert n == 1 + BIG_HAM + BIG_ART  # dataset, Hamiltonians, artifacts
    assert n_ds == BIG_ART
    assert axes == 3  # /_axes/<BIG>/<3 axes>


KILL_POINTS = [("checking", 0), ("verifying files", 0), ("hamiltonians", 1000), ("artifacts", 1000),
               ("indexing", 0), ("committing", 0)]


def test_sigkill_during_ingest_leaves_sqlite_catalog_as_it_was(tmp_path: Path, demo_manifests: Path,
                                                               big_manifests: Path):
    catalog = str(tmp_path / "kill.db")
    ingest(manifests_of(demo_manifests, "NiPS3_per_entity"), catalog)
    before = sqlite_snapshot(catalog)
    assert before["top"] == ["NiPS3_per_entity", "_axes"]
    inside = []
    for n, (phase, done) in enumerate(KILL_POINTS):
        # Each run starts from what the previous kill left behind.
        inside.append(_kill_at(big_manifests, catalog, tmp_path / f"kill{n}.log", phase, done))
        shot, integrity, fk = _probe(catalog, tmp_path / f"probe{n}")
        assert shot == before, f"after a kill at {phase}"
        assert integrity == [("ok",)] and fk == []
    assert inside == [False, False, True, True, True, True], inside  # the last four: inside the transaction

    result = ingest(read_manifests(big_manifests / f"{BIG}_hamiltonians.parquet",
                                   big_manifests / f"{BIG}_artifacts.parquet"), catalog)
    _assert_big_complete(catalog, result)
    after = sqlite_snapshot(catalog)
    assert after["top"] == sorted(["NiPS3_per_entity", BIG, "_axes"])
    assert set(before["triggers"]) <= set(after["triggers"])  # Tiled's triggers are back, unchanged
    assert set(orphans(catalog).values()) == {0}
    fts_integrity(catalog)


def test_sigkill_during_commit_then_ingest_again(runner, tmp_path: Path, demo_manifests: Path,
                                                 big_manifests: Path):
    """Killed while COMMIT writes the database file: a hot journal is left; the next ingest must recover it.

    The ingest stops itself just before COMMIT, is let go, and is killed as soon as its journal turns hot
    (synced, database pages being written): a state seen, not a delay guessed. A COMMIT too quick to be
    seen hot is tried again, from the same catalog."""
    catalog = str(tmp_path / "commit.db")
    ingest(manifests_of(demo_manifests, "NiPS3_per_entity"), catalog)
    before = sqlite_snapshot(catalog)
    for attempt in range(5):
        log = tmp_path / f"kill{attempt}.log"
        proc = paused.start("ingest", str(big_manifests), catalog, "committing", "0", log=log)
        paused.stopped(proc, log)
        paused.resume(proc)
        while proc.poll() is None and not _journal_is_hot(catalog):
            pass
        caught = proc.poll() is None and _journal_is_hot(catalog)
        if caught:
            paused.kill(proc)
            break
        proc.wait()
        assert proc.returncode == 0, log.read_text()
        from sweepcat.catalog.delete import execute_delete, plan_delete  # the commit won: undo it, try again

        execute_delete(parse_catalog(catalog), plan_delete(parse_catalog(catalog), BIG))
    assert caught, "COMMIT was never seen in progress in 5 tries"
    assert _journal_is_hot(catalog)
    shot, integrity, fk = _probe(catalog, tmp_path / "probe")
    assert shot["top"] == before["top"] and shot["counts"]["nodes"] == before["counts"]["nodes"]
    assert integrity == [("ok",)] and fk == []
    # The next ingest, straight away: as after any other kill, it completes.
    r = runner.invoke(app, ["ingest", str(big_manifests), "--catalog", catalog])
    assert r.exit_code == 0, r.output
    assert f"{BIG_HAM} Hamiltonians and {BIG_ART} artifacts added" in r.output
    _assert_big_complete(catalog)
    assert sqlite_snapshot(catalog)["top"] == sorted(["NiPS3_per_entity", BIG, "_axes"])
    assert sql(catalog, "PRAGMA integrity_check") == [("ok",)]


def _pg_write_lock_holders(uri: str) -> list[int]:
    with connect(parse_catalog(uri)) as db:
        return [r[0] for r in db.fetch(
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'nodes' AND l.mode = 'ExclusiveLock' AND l.granted AND l.pid <> pg_backend_pid()")]


def _pg_backends(uri: str) -> int:
    with connect(parse_catalog(uri)) as db:
        return int(db.fetch("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()")[0][0])


def test_sigkill_during_ingest_leaves_postgres_catalog_as_it_was(postgres, tmp_path: Path, demo_manifests: Path,
                                                                 big_manifests: Path):
    uri = postgres.create_database("faults_sigkill")
    ingest(manifests_of(demo_manifests, "NiPS3_per_entity"), uri)
    before = pg_snapshot(uri)
    for n, (phase, done) in enumerate(KILL_POINTS):
        inside = _kill_at(big_manifests, uri, tmp_path / f"kill{n}.log", phase, done)
        assert inside == (phase not in ("checking", "verifying files")), phase  # the write lock, held
        deadline = time.monotonic() + 30
        while _pg_backends(uri) and time.monotonic() < deadline:  # the server notices the dead client
            time.sleep(0.01)
        assert _pg_backends(uri) == 0
        assert pg_snapshot(uri) == before, f"after a kill at {phase}"

    result = ingest(read_manifests(big_manifests / f"{BIG}_hamiltonians.parquet",
                                   big_manifests / f"{BIG}_artifacts.parquet"), uri)
    _assert_big_complete(uri, result)
    after = pg_snapshot(uri)
    assert after["top"] == sorted(["NiPS3_per_entity", BIG, "_axes"])
    assert set(before["triggers"]) <= set(after["triggers"])  # Tiled's triggers are back, unchanged
    # Ids handed out later by Tiled itself (sequences) do not collide with the bulk-written ones.
    with connect(parse_catalog(uri)) as db:
        for table in ("nodes", "data_sources", "assets"):
            sequence = db.fetch("SELECT pg_get_serial_sequence(?, 'id')", table)[0][0]
            (last,) = db.fetch(f"SELECT last_value FROM {sequence}")[0]
            assert last >= db.fetch(f"SELECT max(id) FROM {table}")[0][0], table


# --------------------------------------------------------------------------- 3. a live server during an ingest


def test_running_server_answers_during_ingest_and_sees_the_commit(tmp_path: Path, demo_manifests: Path,
                                                                 big_manifests: Path):
    catalog = str(tmp_path / "live.db")
    m = manifests_of(demo_manifests, "NiPS3_per_entity")
    ingest(m, catalog)
    huid, key = m.ham.column("huid")[2].as_py(), m.ham.column("key")[2].as_py()
    want = expected_array(m, huid, "rixs")
    big = read_manifests(big_manifests / f"{BIG}_hamiltonians.parquet", big_manifests / f"{BIG}_artifacts.parquet")
    # B's root is not in the catalog yet when the server starts: --readable lets the server read it.
    with sweepcat_server(catalog, extra_args=["--readable", big.description.root]) as url:
        client = from_uri(url, api_key=API_KEY)
        assert BIG not in client
        log = tmp_path / "ingest.log"
        started = time.time_ns()
        proc = paused.start("ingest", str(big_manifests), catalog, "artifacts", "1000", log=log)
        try:
            paused.stopped(proc, log)  # in the middle of its transaction, holding the write lock
            assert _in_transaction_sqlite(catalog, started)
            for _ in range(5):
                node = client["NiPS3_per_entity"][key]
                assert node.metadata["huid"] == huid
                np.testing.assert_array_equal(node["rixs"].read(), want)
            assert BIG not in client  # nothing of the open transaction shows
            paused.resume(proc)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                paused.kill(proc)
        assert proc.returncode == 0, log.read_text()
        # The same client sees the new dataset once committed.
        assert BIG in client
        ds = client[BIG]
        assert len(ds) == BIG_HAM  # Hamiltonians only
        ham = big.ham.to_pandas()
        hkey = ham.key.iloc[1234]
        assert ds[hkey].metadata["huid"] == ham.huid.iloc[1234]
        assert ds[hkey]["rixs"].shape == (151, 40)
        # Reading the new data: plain HTTP with a timeout (the client retries a 500 for a minute).
        for path, want_b in ((f"{BIG}/{hkey}/rixs", np.zeros((151, 40))),  # unfilled chunks: fill value
                             (f"_axes/{BIG}/eloss_RIXS", np.linspace(-1.0, 14.0, 151))):
            r = httpx.get(_array_url(url, path), params={"api_key": API_KEY}, headers={"Accept": "application/json"},
                          timeout=30)
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
            np.testing.assert_array_equal(np.array(r.json()), want_b)
        # and A still reads the same.
        np.testing.assert_array_equal(client["NiPS3_per_entity"][key]["rixs"].read(), want)


def test_running_server_reads_a_dataset_ingested_after_it_started(catalog_uri: str, demo_manifests: Path,
                                                                  demo_root: Path):
    """README: "A running server keeps answering and sees the new data after the commit". For a
    dataset under a root the server did not know at start, sweepcat's paths (the octet-stream fast
    path, /read) serve it at once: its root is recorded in sweepcat's registry by the operator's
    ingest. Tiled's own readable storage is never edited at run time, so Tiled's generic
    serializers (JSON here) serve it after a restart, which reads the registry into the config."""
    catalog = catalog_uri
    ingest(manifests_of(demo_manifests, "NiPS3_per_entity"), catalog)
    m = manifests_of(demo_manifests, "NiPS3_per_artifact")
    ham = m.ham.to_pandas()
    huid, hkey = ham.huid.iloc[0], ham.key.iloc[0]
    want = expected_array(m, huid, "xps")
    path = f"NiPS3_per_artifact/{hkey}/xps"

    def fetch(url: str, accept: str) -> httpx.Response:
        return httpx.get(_array_url(url, path), params={"api_key": API_KEY}, headers={"Accept": accept}, timeout=30)

    with sweepcat_server(catalog) as url:
        client = from_uri(url, api_key=API_KEY)
        assert "NiPS3_per_artifact" not in client
        ingest(m, catalog)
        assert "NiPS3_per_artifact" in client
        assert client["NiPS3_per_artifact"][hkey]["xps"].shape == want.shape
        np.testing.assert_array_equal(client["NiPS3_per_artifact"][hkey]["xps"].read(), want)
        r = fetch(url, "application/octet-stream")
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.frombuffer(r.content, want.dtype), want)
        r = httpx.get(f"{url}/api/v1/sweepcat/read/NiPS3_per_artifact", params={"type": "xps", "q": f'key == "{hkey}"'},
                      headers={"Authorization": f"Apikey {API_KEY}"}, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(np.frombuffer(r.content, want.dtype), want)
        r = fetch(url, "application/json")
        assert r.status_code == 500, (r.status_code, r.text[:300])  # Tiled: "outside the readable storage area"
    with sweepcat_server(catalog) as url:  # the restart: the recorded root is in Tiled's configuration now
        r = fetch(url, "application/json")
        assert r.status_code == 200, r.text[:300]
        np.testing.assert_array_equal(np.asarray(r.json(), dtype=want.dtype), want)
