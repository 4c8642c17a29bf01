"""`sweepcat register` against real Tiled servers: bulk route, stock fallback, security and faults."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from tiled.client import from_uri

from sweepcat.catalog.ingest import ingest
from sweepcat.client.register import register
from sweepcat.contract import encode_batch
from sweepcat.errors import SweepcatError
from tests.support import paused
from tests.support.servers import API_KEY, clean_env, free_port, plain_tiled_server, stop, sweepcat_server, wait_ready
from tests.test_catalog import manifests_of


def seed_catalog(path: Path, demo_manifests: Path) -> str:
    """A catalog holding the per-entity dataset, so that the server has something to serve."""
    ingest(manifests_of(demo_manifests, "NiPS3_per_entity"), str(path))
    return str(path)


def snapshot(catalog: str, dataset: str) -> dict:
    """What must be equal between two ways of registering: keys, metadata, data sources."""
    con = sqlite3.connect(catalog)
    try:
        ds_id = con.execute("SELECT id FROM nodes WHERE parent = 0 AND key = ?", (dataset,)).fetchone()[0]
        hams = {k: json.loads(md) for k, md in con.execute(
            "SELECT key, metadata FROM nodes WHERE parent = ? AND key != '_axes'", (ds_id,))}
        arrays = sorted(con.execute(
            "SELECT p.key, n.key, n.metadata, d.mimetype, d.parameters, d.structure_id, a.data_uri "
            "FROM nodes n JOIN nodes p ON n.parent = p.id JOIN data_sources d ON d.node_id = n.id "
            "JOIN data_source_asset_association x ON x.data_source_id = d.id JOIN assets a ON a.id = x.asset_id "
            "WHERE p.parent = ? AND p.key != '_axes'", (ds_id,)).fetchall())
        closure = con.execute("SELECT count(*) FROM nodes_closure c JOIN nodes n ON n.id = c.descendant "
                              "JOIN nodes p ON p.id = n.parent WHERE p.parent = ? OR n.parent = ?",
                              (ds_id, ds_id)).fetchone()[0]
        return {"hams": hams, "arrays": arrays, "closure": closure}
    finally:
        con.close()


def test_bulk_register_equals_ingest(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    reference = tmp_path / "reference.db"
    ingest(m, str(reference))
    catalog = seed_catalog(tmp_path / "served.db", demo_manifests)
    with sweepcat_server(catalog, extra_args=["--readable", str(demo_root)]) as url:
        result = register(m, url, API_KEY, batch_size=40)
        assert result.path == "bulk" and result.requests == 7
        assert (result.added_hamiltonians, result.added_artifacts) == (256, 512)
        again = register(m, url, API_KEY, batch_size=40)
        assert (again.added_hamiltonians, again.added_artifacts, again.existing_hamiltonians) == (0, 0, 256)
        client = from_uri(url, api_key=API_KEY)
        assert client["NiPS3_batched"]["H_NiPS3_random_rank0003_0063"]["rixs"].read().shape == (151, 40)
    assert snapshot(catalog, "NiPS3_batched") == snapshot(str(reference), "NiPS3_batched")


def test_register_refuses_without_the_right_key_and_writes_nothing(tmp_path: Path, demo_manifests: Path,
                                                                   demo_root: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    before = snapshot(catalog, "NiPS3_per_entity")
    body = encode_batch(m)
    with sweepcat_server(catalog, public=True, extra_args=["--readable", str(demo_root)]) as url:
        endpoint = f"{url}/api/v1/sweepcat/register"
        assert httpx.post(endpoint, content=body).status_code in (401, 403)  # anonymous: read scopes only
        assert httpx.post(endpoint, content=body, headers={"Authorization": "Apikey wrong"}).status_code == 401
        with pytest.raises(SweepcatError, match="refused the API key"):
            register(m, url, "wrongkey")
        # anonymous reads are allowed on a --public server, writes are not
        assert httpx.get(f"{url}/api/v1/metadata/NiPS3_per_entity").status_code == 200
    con = sqlite3.connect(catalog)
    assert con.execute("SELECT count(*) FROM nodes WHERE key = 'NiPS3_batched'").fetchone()[0] == 0
    con.close()
    assert snapshot(catalog, "NiPS3_per_entity") == before


def test_oversized_batch_is_refused_with_the_limit(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    with sweepcat_server(catalog, extra_args=["--readable", str(demo_root)],
                         extra_env={"SWEEPCAT_MAX_BATCH_BYTES": "20000"}) as url:
        r = httpx.post(f"{url}/api/v1/sweepcat/register", content=encode_batch(m),
                       headers={"Authorization": f"Apikey {API_KEY}"})
        assert r.status_code == 413 and "20000 bytes" in r.text and "--batch-size" in r.text
        with pytest.raises(SweepcatError, match="20000 bytes"):
            register(m, url, API_KEY, batch_size=1000)
        assert "NiPS3_batched" not in from_uri(url, api_key=API_KEY)


def test_root_outside_readable_storage_is_refused(tmp_path: Path, demo_manifests: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    with sweepcat_server(catalog) as url:
        with pytest.raises(SweepcatError, match="outside this server's readable storage"):
            register(m, url, API_KEY)


def test_bad_rows_are_refused_before_writing(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    m = manifests_of(demo_manifests, "NiPS3_batched")
    idx = m.art.column("index").to_pylist()
    idx[7] = 999
    import pyarrow as pa

    m.art = m.art.set_column(m.art.column_names.index("index"), "index", pa.array(idx))
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    with sweepcat_server(catalog, extra_args=["--readable", str(demo_root)]) as url:
        with pytest.raises(SweepcatError) as err:
            register(m, url, API_KEY, batch_size=1000)
        assert "NiPS3_random_rank0000.h5#/XPS[999]" in str(err.value) and "index out of range" in str(err.value)
        assert "NiPS3_batched" not in from_uri(url, api_key=API_KEY)


def _cli_register(url: str, manifest_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweepcat.cli", "register", str(manifest_dir), "--url", url,
                             "--batch-size", "8", *extra], env=clean_env(SWEEPCAT_API_KEY=API_KEY),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _only(demo_manifests: Path, tmp_path: Path, name: str) -> Path:
    one = tmp_path / f"only_{name}"
    one.mkdir()
    for kind in ("hamiltonians", "artifacts"):
        (one / f"{name}_{kind}.parquet").write_bytes((demo_manifests / f"{name}_{kind}.parquet").read_bytes())
    return one


def test_killed_client_resumes_to_the_one_shot_result(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    reference = tmp_path / "reference.db"
    ingest(manifests_of(demo_manifests, "NiPS3_batched"), str(reference))
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    only_b = _only(demo_manifests, tmp_path, "NiPS3_batched")
    with sweepcat_server(catalog, extra_args=["--readable", str(demo_root)]) as url:
        log = tmp_path / "register.log"
        proc = paused.start("register", str(only_b), url, API_KEY, "2", log=log)  # stops after 2 of 32 batches
        paused.stopped(proc, log)
        paused.kill(proc)
        partial = snapshot(catalog, "NiPS3_batched")["hams"]
        assert len(partial) == 16
        done = _cli_register(url, only_b)
        out, _ = done.communicate(timeout=120)
        assert done.returncode == 0, out
        assert "16 already present" in out
    assert snapshot(catalog, "NiPS3_batched") == snapshot(str(reference), "NiPS3_batched")


def test_client_rides_out_a_server_restart(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    """The server stops after the first batch and comes back only after the client has failed to reach it:
    the client retries and ends with the one-shot result. Every step waits on an event, none on a delay."""
    reference = tmp_path / "reference.db"
    ingest(manifests_of(demo_manifests, "NiPS3_batched"), str(reference))
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    port = free_port()
    cmd = [sys.executable, "-m", "sweepcat.cli", "serve", "--catalog", catalog, "--port", str(port),
           "--readable", str(demo_root)]
    env = clean_env(SWEEPCAT_API_KEY=API_KEY)
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_batch, server_down, retried = threading.Event(), threading.Event(), threading.Event()

    def progress(hams: int, nodes: int) -> None:
        if not first_batch.is_set():
            first_batch.set()
            assert server_down.wait(60), "the server never went down"

    def on_retry(attempt: int, wait: float, what: str) -> None:
        retried.set()

    try:
        wait_ready(url, server)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["result"] = register(manifests_of(demo_manifests, "NiPS3_batched"), url, API_KEY,
                                             batch_size=8, progress=progress, on_retry=on_retry)
            except Exception as exc:  # surfaced by the assertion below
                outcome["error"] = exc

        worker = threading.Thread(target=run)
        worker.start()
        assert first_batch.wait(60), "no batch went in"
        stop(server)
        server_down.set()
        assert retried.wait(60), "the client never retried"
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        worker.join(timeout=180)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["result"].retries >= 1
    finally:
        stop(server)
    assert snapshot(catalog, "NiPS3_batched") == snapshot(str(reference), "NiPS3_batched")


def test_retry_policy_backs_off_and_gives_up_with_a_sentence():
    """The retry policy without a server: which answers are retried, how long it waits, when it stops."""
    import random

    import httpx

    from sweepcat.client.register import RetryPolicy, _Http

    answers = iter([httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(502), httpx.Response(200)])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept, told = [], []
    http = _Http("http://sweepcat.invalid", "k", retry=RetryPolicy(attempts=5, first_delay=0.5, max_delay=1.0),
                 transport=httpx.MockTransport(handler), sleep=slept.append, rng=random.Random(0),
                 on_retry=lambda n, wait, what: told.append((n, what)))
    assert http.request("GET", "/x").status_code == 200
    assert [n for n, _ in told] == [1, 2, 3] and "ConnectError" in told[0][1] and told[1][1] == "HTTP 503"
    assert len(slept) == 3 and 0.5 <= slept[0] <= 0.75 and 1.0 <= slept[1] <= 1.5 and 1.0 <= slept[2] <= 1.5
    assert http.retries == 3

    http = _Http("http://sweepcat.invalid", "k", retry=RetryPolicy(attempts=3),
                 transport=httpx.MockTransport(lambda r: httpx.Response(503)), sleep=lambda s: None)
    with pytest.raises(SweepcatError, match="did not answer after 3 attempts") as info:
        http.request("GET", "/x")
    assert "run the same command again" in str(info.value)
    for status in (400, 401, 404, 413, 500):  # answers a retry would not change
        http = _Http("http://sweepcat.invalid", "k",
                     transport=httpx.MockTransport(lambda r, s=status: httpx.Response(s)),
                     sleep=lambda s: pytest.fail("slept"))
        assert http.request("GET", "/x").status_code == status


def test_two_clients_at_once(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    only_b = _only(demo_manifests, tmp_path, "NiPS3_batched")
    only_a = _only(demo_manifests, tmp_path, "NiPS3_per_artifact")
    with sweepcat_server(catalog, extra_args=["--readable", str(demo_root)]) as url:
        # different datasets at once: both complete
        procs = [_cli_register(url, only_b), _cli_register(url, only_a)]
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0, out
        # the same dataset at once, twice over: no duplicates
        procs = [_cli_register(url, only_b), _cli_register(url, only_b)]
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert p.returncode == 0, out
        client = from_uri(url, api_key=API_KEY)
        assert len([k for k in client["NiPS3_batched"] if k != "_axes"]) == 256
        assert len([k for k in client["NiPS3_per_artifact"] if k != "_axes"]) == 24
    con = sqlite3.connect(catalog)
    dups = con.execute("SELECT count(*) FROM (SELECT parent, key FROM nodes GROUP BY parent, key HAVING count(*) > 1)")
    assert dups.fetchone()[0] == 0
    con.close()


def test_stock_fallback_against_a_plain_tiled_server(tmp_path: Path, demo_manifests: Path, demo_root: Path):
    """A Tiled server without sweepcat's router (its own config, adapter mapped): the stock path."""
    catalog = seed_catalog(tmp_path / "c.db", demo_manifests)
    adapter = {"application/x-sliced-hdf5": "sweepcat.server.adapter:SlicedHDF5Adapter"}
    with plain_tiled_server(Path(catalog), [demo_root], tmp_path, adapters=adapter) as url:
        m = manifests_of(demo_manifests, "NiPS3_per_artifact")
        first = register(m, url, API_KEY)
        assert first.path == "stock" and (first.added_hamiltonians, first.added_artifacts) == (24, 48)
        second = register(m, url, API_KEY)
        assert (second.added_hamiltonians, second.existing_hamiltonians) == (0, 24)
        ds = from_uri(url, api_key=API_KEY)["NiPS3_per_artifact"]
        node = ds["H_NiPS3_00005"]
        expected = m.ham.to_pandas().set_index("key").loc["H_NiPS3_00005"].to_dict()
        assert dict(node.metadata) == expected
        import h5py
        import numpy as np

        with h5py.File(demo_root / "NiPS3_per_artifact" / "NiPS3_00005_rixs.h5", "r") as f:
            np.testing.assert_array_equal(node["rixs"].read(), f["RIXS"][()])
        # an interruption between a Hamiltonian and its arrays: the next run completes it
        node["xps"].delete()
        third = register(m, url, API_KEY)
        assert (third.added_hamiltonians, third.added_artifacts) == (0, 1)
        assert sorted(ds["H_NiPS3_00005"]) == ["rixs", "xps"]
