"""The server boundary (issue 8): one rule for who may read which bytes, tried as an attacker with a valid key.

A module-scoped "attacked" catalog is built once: a small ingested dataset, then,
through a running `sweepcat serve` and Tiled's stock client, array nodes whose
data sources point outside readable storage in every way found (an outside
file, ``..``, a symlink swapped in after ingest, HDF5 external storage, an
external link, a virtual dataset, a FIFO), and node-metadata edits that claim
``/`` as a dataset root. Each finding is then a test; the fast path is
compared with Tiled's own route in-process (ASGI, no subprocess), and every
route is tried under public access, a single key and access policies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import httpx
import numpy as np
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from tiled.client import from_uri

from sweepcat.catalog.schema import parse_catalog
from sweepcat.cli import app as cli_app
from sweepcat.server.app import build_app
from sweepcat.server.config import server_config
from tests.support.servers import API_KEY, clean_env, free_port, stop, sweepcat_server, wait_ready

pytestmark = pytest.mark.timeout(300)

SECRET = 7.25  # every value of the outside file's arrays
PASSWD = b"root:x:0:0:root:/root:/bin/bash\n"  # the outside text file's first 32 bytes
BATCH_FILES = ["NiPS3_random_rank0000.h5", "NiPS3_random_rank0001.h5"]
ATTACKS = ("outside", "dotdot", "swapped", "ext", "elink", "vds", "fifo")
BOMB_ROWS = 2**24  # float64: one 128 MiB chunk, gzip-compressed to about 130 kB


@dataclass
class World:
    base: Path
    root: Path
    outside: Path
    catalog: str
    dataset: str
    keys: list[str]  # the dataset's Hamiltonian keys, in listing order

    def path(self, type_: str, key: int = 0) -> str:
        return f"{self.dataset}/{self.keys[key]}/{type_}"

    def config(self, **kwargs: Any) -> dict:
        return server_config(parse_catalog(self.catalog).tiled_uri, [str(self.root)], api_key=API_KEY, **kwargs)


def _cli(runner: Any, *args: str) -> Any:
    result = runner.invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _data_source(uri: str, dataset: str, shape: tuple[int, ...], dtype: str, index: int | None) -> Any:
    from tiled.structures.array import ArrayStructure, BuiltinDtype
    from tiled.structures.data_source import Asset, DataSource, Management

    structure = ArrayStructure(data_type=BuiltinDtype.from_numpy_dtype(np.dtype(dtype)), shape=shape,
                               chunks=tuple((s,) for s in shape), dims=None)
    params = {"dataset": dataset} if index is None else {"dataset": dataset, "index": index}
    return DataSource(management=Management.external, mimetype="application/x-sliced-hdf5",
                      structure_family="array", structure=structure, parameters=params,
                      assets=[Asset(data_uri=uri, is_directory=False, parameter="data_uri")])


def _write_attack_files(root: Path, outside: Path) -> None:
    shutil.copy(root / BATCH_FILES[0], root / "swap.h5")
    with h5py.File(root / "ext.h5", "w") as f:  # raw data stored in an outside file
        f.create_dataset("RAW", shape=(1, 32), dtype="u1", external=[(str(outside / "passwd.txt"), 0, 32)])
    with h5py.File(root / "elink.h5", "w") as f:
        f["RIXS"] = h5py.ExternalLink(str(outside / "secret.h5"), "/RIXS")
    with h5py.File(root / "vds.h5", "w") as f:
        layout = h5py.VirtualLayout(shape=(4, 151, 40), dtype="f8")
        layout[:] = h5py.VirtualSource(str(outside / "secret.h5"), "RIXS", shape=(4, 151, 40))
        f.create_virtual_dataset("RIXS", layout)
    os.mkfifo(root / "fifo.h5")
    (root / "raw.bin").write_bytes(bytes(range(64)))
    with h5py.File(root / "extin.h5", "w") as f:  # raw data in a file inside the root: HDF5 opens it by path
        f.create_dataset("RAW", shape=(1, 64), dtype="u1", external=[("raw.bin", 0, 64)])
    with h5py.File(root / "bomb.h5", "w") as f:  # a tiny file whose one chunk decompresses to 128 MiB
        f.create_dataset("RAW", data=np.zeros(BOMB_ROWS), chunks=(BOMB_ROWS,), compression="gzip",
                         compression_opts=9)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, demo_root: Path, runner: Any) -> World:
    base = tmp_path_factory.mktemp("boundary")
    root, outside = base / "data", base / "outside"
    root.mkdir()
    outside.mkdir()
    for name in BATCH_FILES:
        shutil.copy(demo_root / "NiPS3_batched" / name, root / name)
    spec = base / "spec.yml"
    _cli(runner, "inspect", root, "-o", spec, "--no-tree")
    text = spec.read_text().replace("label: data", "label: sweep")
    spec.write_text(text)
    _cli(runner, "manifest", spec, "-o", base / "manifests")
    catalog = str(base / "catalog.db")
    _cli(runner, "ingest", base / "manifests", "--catalog", catalog)
    with h5py.File(outside / "secret.h5", "w") as f:
        f["RIXS"] = np.full((4, 151, 40), SECRET)
    (outside / "passwd.txt").write_bytes(PASSWD + b"x" * 64)
    _write_attack_files(root, outside)

    with sweepcat_server(catalog) as url:
        c = from_uri(url, api_key=API_KEY)
        ds = c["sweep"]
        keys = list(ds.keys())
        h = ds[keys[0]]
        rixs = ((151, 40), "float64", 0, "/RIXS")
        attacks = {
            "outside": (f"file://localhost{outside}/secret.h5", *rixs),
            "dotdot": (f"file://localhost{root}/../outside/secret.h5", *rixs),
            "swapped": (f"file://localhost{root}/swap.h5", *rixs),
            "ext": (f"file://localhost{root}/ext.h5", (32,), "uint8", 0, "/RAW"),
            "elink": (f"file://localhost{root}/elink.h5", *rixs),
            "vds": (f"file://localhost{root}/vds.h5", *rixs),
            "fifo": (f"file://localhost{root}/fifo.h5", *rixs),
        }
        for type_, (uri, shape, dtype, index, dataset) in attacks.items():
            h.new("array", [_data_source(uri, dataset, shape, dtype, index)], key=type_)
        h.new("array", [_data_source(f"file://localhost{root}/extin.h5", "/RAW", (64,), "uint8", 0)], key="extin")
        h.new("array", [_data_source(f"file://localhost{root}/bomb.h5", "/RAW", (BOMB_ROWS,), "float64", None)],
              key="bomb")
        odd = {"badindex": {"dataset": "/RIXS", "index": "abc"}, "listindex": {"dataset": "/RIXS", "index": [1, 2]},
               "nodataset": {"index": 0}, "intdataset": {"dataset": 7, "index": 0}}
        for type_, parameters in odd.items():
            source = _data_source(f"file://localhost{root}/{BATCH_FILES[0]}", "/RIXS", (151, 40), "float64", 0)
            source.parameters = parameters
            h.new("array", [source], key=type_)
        # Tiled's own readers, reached through nodes a key holder creates: '..' passes Tiled's string check.
        for type_, uri in (("tiled_dotdot", f"file://localhost{root}/../outside/secret.h5"),
                           ("tiled_inside", f"file://localhost{root}/{BATCH_FILES[0]}")):
            source = _data_source(uri, "RIXS", (4, 151, 40), "float64", None)
            source.mimetype = "application/x-hdf5"
            h.new("array", [source], key=type_)
        uris = {"relative": f"file:{BATCH_FILES[0]}",
                "doubleslash": f"file://localhost/{root}/{BATCH_FILES[0]}"}  # root is absolute: '//' + path
        for type_, uri in uris.items():
            h.new("array", [_data_source(uri, "/RIXS", (151, 40), "float64", 0)], key=type_)
        # Finding 2: readable roots claimed through node metadata, which any key holder can edit.
        md = dict(ds.metadata)
        md["sweepcat"] = {**md["sweepcat"], "root": "/"}
        ds.replace_metadata(md)
        c.create_container("x", metadata={"sweepcat": {"kind": "dataset", "root": "/"}})
        httpx.get(f"{url}/api/v1/array/full/{world_path('sweep', keys[0], 'outside')}",
                  headers={"Authorization": f"Apikey {API_KEY}"}, timeout=30)
    (root / "swap.h5").unlink()
    (root / "swap.h5").symlink_to(outside / "secret.h5")  # Finding 4: swapped after ingest
    return World(base, root, outside, catalog, "sweep", keys)


def world_path(*segments: str) -> str:
    return "/".join(segments)


@pytest.fixture
def inproc(world: World) -> Iterator[Any]:
    """Build in-process apps on the attacked catalog (no subprocess): yields a factory of TestClients."""
    clients: list[TestClient] = []

    def make(*, fast_path: bool = True, public: bool = False, policy: str | None = None,
             policy_args: dict | None = None, limit: int | None = None, tiled_only: bool = False,
             raw_assets: bool | None = None) -> TestClient:
        config = world.config(public=public)
        if raw_assets is not None:
            config["expose_raw_assets"] = raw_assets
        if policy:
            config["access_control"] = {"access_policy": f"tests.support.policies:{policy}",
                                        "args": policy_args or {}}
        if limit is not None:
            config["response_bytesize_limit"] = limit
        if tiled_only:  # what `tiled serve config` runs: Tiled's app with sweepcat's router mounted
            from tiled.server.app import build_app_from_config

            app = build_app_from_config(config)
        else:
            app = build_app(config, fast_path=fast_path)
        client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


KEY = {"Authorization": f"Apikey {API_KEY}"}


def _no_secret(response: httpx.Response) -> None:
    body = response.content
    assert PASSWD[:11] not in body, "outside text served"
    if len(body) >= 8 and len(body) % 8 == 0:
        assert not np.any(np.frombuffer(body, dtype="f8") == SECRET), "outside array served"


def _array(client: TestClient, world: World, type_: str, headers: dict | None = None, **params: str) -> httpx.Response:
    return client.get(f"/api/v1/array/full/{world.path(type_)}", params=params,
                      headers=KEY if headers is None else headers)


def _sweepcat(client: TestClient, route: str, world: World, headers: dict | None = None, **params: str) -> Any:
    return client.get(f"/api/v1/sweepcat/{route}/{world.dataset}", params=params,
                      headers=KEY if headers is None else headers)


# --------------------------------------------------------------------------- findings 1-7


@pytest.mark.parametrize("type_", ATTACKS)
def test_no_read_path_serves_a_file_outside_readable_storage(world: World, inproc: Any, type_: str) -> None:
    """Findings 1, 3, 4, 5, 6: Tiled's route (through the adapter), the fast path, /read and /locators."""
    q = f'key == "{world.keys[0]}"'
    for fast in (True, False):
        client = inproc(fast_path=fast)
        r = _array(client, world, type_)
        assert r.status_code in (403, 404, 500), (fast, r.status_code, r.text[:300])
        _no_secret(r)
        r = _sweepcat(client, "read", world, type=type_, q=q)
        assert r.status_code == 403, (fast, r.status_code, r.text[:300])
        _no_secret(r)
        assert f"{type_}" in r.text or "swap.h5" in r.text or "outside" in r.text
    r = _sweepcat(inproc(), "locators", world, type=type_, q=q)
    if type_ in ("outside", "dotdot", "swapped"):  # the file itself is outside: its locator is not served
        assert r.status_code == 403 and "outside readable storage" in r.text, r.text[:300]
    else:  # the file is inside; what it links to is refused when read
        assert r.status_code == 200


@pytest.mark.parametrize("type_", ["tiled_dotdot", "tiled_inside"])
def test_tiled_s_own_readers_never_open_files_for_a_sweepcat_server(world: World, inproc: Any, type_: str) -> None:
    """Found by trying it as an attacker (round 3): a node created through Tiled's API with Tiled's HDF5
    mimetype and a '..' path was read by Tiled's HDF5 adapter, outside the file rule. A sweepcat server
    reads no data source but its own: 403 naming the node, on every app sweepcat builds or configures."""
    for client in (inproc(fast_path=True), inproc(fast_path=False), inproc(tiled_only=True)):
        for accept in ("application/octet-stream", "application/json"):
            r = client.get(f"/api/v1/array/full/{world.path(type_)}",
                           headers={"Authorization": f"Apikey {API_KEY}", "Accept": accept})
            assert r.status_code == 403, (accept, r.status_code, r.text[:300])
            _no_secret(r)
            assert type_ in r.text and "application/x-hdf5" in r.text


def test_a_path_below_an_array_is_404(world: World, inproc: Any) -> None:
    for client in (inproc(fast_path=True), inproc(fast_path=False)):
        r = client.get(f"/api/v1/array/full/{world.path('rixs')}/extra", headers={"Authorization": f"Apikey {API_KEY}"})
        assert r.status_code == 404, r.text[:300]


def test_the_good_node_still_reads_on_every_path(world: World, inproc: Any, demo_root: Path) -> None:
    with h5py.File(world.root / BATCH_FILES[0], "r") as f:
        want = f["RIXS"][0]
    for fast in (True, False):
        client = inproc(fast_path=fast)
        r = _array(client, world, "rixs")
        assert r.status_code == 200, r.text[:300]
        assert (r.headers.get("x-sweepcat-fast-path") == "1") == fast
        np.testing.assert_array_equal(np.frombuffer(r.content, "f8").reshape(151, 40), want)
        r = _sweepcat(client, "read", world, type="rixs", q=f'key == "{world.keys[0]}"')
        assert r.status_code == 200
        np.testing.assert_array_equal(np.frombuffer(r.content, "f8").reshape(151, 40), want)


def test_readable_storage_is_never_taken_from_node_metadata(world: World, runner: Any, inproc: Any) -> None:
    """Finding 2: a dataset's metadata edited to claim root '/', a container claiming to be a dataset."""
    result = _cli(runner, "config", "--catalog", world.catalog)
    import yaml

    config = yaml.safe_load(result.stdout)
    assert config["trees"][0]["args"]["readable_storage"] == [str(world.root.resolve())]
    client = inproc()
    assert [d["key"] for d in _sweepcat_get(client, "/api/v1/sweepcat/datasets")] == ["sweep"]
    for _ in range(2):  # the second request is after any "refresh" of roots
        r = _array(client, world, "outside")
        assert r.status_code != 200
        _no_secret(r)


def _sweepcat_get(client: TestClient, path: str) -> Any:
    r = client.get(path, headers=KEY)
    assert r.status_code == 200, r.text
    return r.json()


def test_register_stock_refuses_a_manifest_the_bulk_path_refuses(world: World, runner: Any, tmp_path: Path) -> None:
    """Finding 3: `register --stock` with `file: ../../outside.h5` is refused before anything is sent."""
    import pyarrow as pa

    from sweepcat.contract import read_manifests

    m = read_manifests(world.base / "manifests")
    files = m.art.column("file").to_pylist()
    files[0] = "../outside/secret.h5"
    art = m.art.set_column(m.art.column_names.index("file"), "file", pa.array(files))
    out = tmp_path / "bad"
    out.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(m.ham.replace_schema_metadata(m.ham.schema.metadata), out / "sweep_hamiltonians.parquet")
    pq.write_table(art.replace_schema_metadata(m.art.schema.metadata), out / "sweep_artifacts.parquet")
    port = free_port()
    result = runner.invoke(cli_app, ["register", str(out), "--url", f"http://127.0.0.1:{port}", "--api-key",
                                     API_KEY, "--stock"])
    assert result.exit_code == 2, result.output
    assert "../outside/secret.h5" in result.output and "'..'" in result.output
    assert "Traceback" not in result.output


def test_a_symlink_swapped_in_after_ingest_is_refused_by_the_stock_client(world: World) -> None:
    """Finding 4, as a user of a real server would try it."""
    with sweepcat_server(world.catalog) as url:
        node = from_uri(url, api_key=API_KEY)[world.dataset][world.keys[0]]["swapped"]
        with pytest.raises(Exception) as info:
            node.read()
        assert "403" in str(info.value) or "refused" in str(info.value).lower()


def test_inspect_manifest_ingest_name_links_and_storage_that_leave_the_root(world: World, runner: Any,
                                                                          tmp_path: Path) -> None:
    """Finding 5: external storage, external links and virtual datasets leaving the root, by name."""
    root = tmp_path / "data"
    root.mkdir()
    for name in BATCH_FILES:
        shutil.copy(world.root / name, root / name)
    with h5py.File(root / BATCH_FILES[1], "a") as f:
        del f["XPS"]
        f.create_dataset("XPS", shape=(64, 5000), dtype="f8",
                         external=[(str(world.outside / "passwd.txt"), 0, 64 * 5000 * 8)])
    r = runner.invoke(cli_app, ["inspect", str(root), "--no-tree", "-o", str(tmp_path / "spec.yml")])
    assert r.exit_code == 1, r.output
    assert f"{BATCH_FILES[1]}#/XPS" in r.output and "external file" in r.output
    # manifest from a spec written before the change: refused by name, nothing written
    spec = tmp_path / "good.yml"
    text = (world.base / "spec.yml").read_text().replace(str(world.root), str(root))
    spec.write_text(text)
    r = runner.invoke(cli_app, ["manifest", str(spec), "-o", str(tmp_path / "m")])
    assert r.exit_code == 2, r.output
    assert f"{BATCH_FILES[1]}#/XPS" in r.output and "external file" in r.output
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())
    # ingest of manifests made before the change: the verification opens the files under the rule
    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import read_manifests
    from sweepcat.errors import ContractError

    m = read_manifests(world.base / "manifests", base_dir=root)
    with pytest.raises(ContractError) as info:
        ingest(m, str(tmp_path / "c.db"), verify_sample=None)
    assert f"{BATCH_FILES[1]}#/XPS" in str(info.value) and "external file" in str(info.value)
    for link in ("elink.h5", "vds.h5"):
        d = tmp_path / link.removesuffix(".h5")
        d.mkdir()
        shutil.copy(world.root / link, d / link)
        r = runner.invoke(cli_app, ["inspect", str(d), "--no-tree"])
        why = "outside the dataset root" if link == "elink.h5" else "virtual dataset"
        assert f"{link}#/RIXS" in r.output and why in r.output, r.output


def test_a_fifo_never_blocks_the_server_or_inspect(world: World, tmp_path: Path) -> None:
    """Finding 6: the first read of a FIFO node froze every route; `inspect` on a directory with a FIFO hung."""
    with sweepcat_server(world.catalog) as url:
        r = httpx.get(f"{url}/api/v1/array/full/{world.path('fifo')}", headers=KEY, timeout=20)
        assert r.status_code == 403 and "FIFO" in r.text, r.text
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        r = httpx.get(f"{url}/api/v1/sweepcat/read/{world.dataset}", headers=KEY, timeout=20,
                      params={"type": "fifo", "q": f'key == "{world.keys[0]}"'})
        assert r.status_code == 403 and "FIFO" in r.text
    d = tmp_path / "withfifo"
    d.mkdir()
    shutil.copy(world.root / BATCH_FILES[0], d / BATCH_FILES[0])
    os.mkfifo(d / "pipe.h5")
    done = subprocess.run([sys.executable, "-m", "sweepcat.cli", "inspect", str(d), "--no-tree"],
                          capture_output=True, text=True, timeout=60, env=clean_env())
    assert done.returncode == 1 and "pipe.h5" in done.stdout and "FIFO" in done.stdout, done.stdout + done.stderr


def test_the_url_path_is_decoded_once(world: World) -> None:
    """Finding 7: `%2572ixs` (the key `%72ixs`) is not `rixs`. A real server: Starlette's test client
    decodes paths twice itself."""
    with sweepcat_server(world.catalog) as url:
        r = httpx.get(f"{url}/api/v1/array/full/{world.dataset}/{world.keys[0]}/%2572ixs", headers=KEY)
        assert r.status_code == 404, r.status_code
        r = httpx.get(f"{url}/api/v1/array/full/{world.dataset}/{world.keys[0]}/%72ixs", headers=KEY)
        assert r.status_code == 200, r.status_code  # decoded once, %72 is 'r', as for Tiled
        r = httpx.get(f"{url}/api/v1/sweepcat/search/%2573weep", headers=KEY)  # the dataset `%73weep`
        assert r.status_code == 404, r.status_code
        r = httpx.get(f"{url}/api/v1/sweepcat/read/%2573weep", params={"type": "rixs"}, headers=KEY)
        assert r.status_code == 404, r.status_code


# --------------------------------------------------------------------------- finding 8: access policies


def test_sweepcat_routes_enforce_the_access_policy(world: World, inproc: Any) -> None:
    """The caller sees a dataset as the policy shows it: the Hamiltonians Tiled lists for them, nothing more;
    a dataset hidden from them does not exist. Likewise with the routes mounted in a plain `tiled serve`."""
    q = f'key == "{world.keys[0]}"'
    routes = {"search": {}, "facets": {"param": "tenDq"}, "params": {}, "locators": {"type": "rixs"},
              "read": {"type": "rixs"}}
    for tiled_only in (False, True):  # sweepcat serve, and the routes mounted in a plain `tiled serve config`
        whole = inproc(policy="WholeDatasetPolicy", tiled_only=tiled_only)
        partial = inproc(policy="PartialPolicy", policy_args={"visible_key": world.keys[0]}, tiled_only=tiled_only)
        hidden = inproc(policy="HiddenPolicy", tiled_only=tiled_only)
        for route, params in routes.items():
            r = _sweepcat(whole, route, world, q=q, **params)
            assert r.status_code == 200, (route, r.text[:200])
            assert r.headers.get("x-sweepcat-fast-path") is None  # with a policy, Tiled's stack always decides
            r = _sweepcat(hidden, route, world, q=q, **params)
            assert r.status_code == 404, (route, r.status_code, r.text[:200])
        assert _sweepcat(whole, "search", world).json()["count"] == len(world.keys)
        seen = _sweepcat(partial, "search", world).json()
        assert (seen["count"], seen["keys"]) == (1, [world.keys[0]])
        assert _sweepcat(partial, "facets", world, param="tenDq").json()["count"] == 1
        import pyarrow as pa

        def table(r: httpx.Response) -> pa.Table:
            assert r.status_code == 200, r.text[:200]
            return pa.ipc.open_stream(r.content).read_all()

        assert table(_sweepcat(partial, "params", world)).column("key").to_pylist() == [world.keys[0]]
        assert table(_sweepcat(partial, "locators", world, type="rixs")).column("key").to_pylist() == [world.keys[0]]
        r = _sweepcat(partial, "read", world, type="rixs")
        assert r.status_code == 200 and r.headers["x-sweepcat-shape"] == "1,151,40", r.text[:200]
        assert _sweepcat(partial, "search", world, q=f'key == "{world.keys[1]}"').json()["count"] == 0
        assert [d["key"] for d in _sweepcat_get(whole, "/api/v1/sweepcat/datasets")] == ["sweep"]
        assert _sweepcat_get(hidden, "/api/v1/sweepcat/datasets") == []
        # Tiled's own route applies the policy node by node: the visible Hamiltonian reads, the others do not.
        assert _array(partial, world, "rixs").status_code == 200
        r = partial.get(f"/api/v1/array/full/{world.dataset}/{world.keys[1]}/rixs", headers=KEY)
        assert r.status_code == 404
        assert _array(hidden, world, "rixs").status_code == 404


# --------------------------------------------------------------------------- finding 9: memory


def test_size_is_checked_from_the_structure_before_any_read(world: World, inproc: Any) -> None:
    """A missing file answers "too large" (400, Tiled's message) when the response would be: nothing is read."""
    from sweepcat.catalog.db import connect

    limit = 1000
    for fast in (True, False):
        client = inproc(fast_path=fast, limit=limit)
        r = _array(client, world, "rixs")
        assert r.status_code == 400, r.text
        assert r.json()["detail"] == (f"Response would exceed {limit}. Use slicing ('?slice=...') to request "
                                      "smaller chunks.")
        assert _array(client, world, "rixs", slice="0,0:5").status_code == 200
    with connect(parse_catalog(world.catalog)) as db:  # the data source of xps, pointed at a missing file
        row = db.fetch("SELECT a.data_uri FROM nodes n JOIN nodes h ON n.parent = h.id JOIN data_sources d ON "
                       "d.node_id = n.id JOIN data_source_asset_association x ON x.data_source_id = d.id JOIN "
                       "assets a ON a.id = x.asset_id WHERE h.key = ? AND n.key = 'xps'", world.keys[0])
    real = Path(row[0][0].removeprefix("file://localhost"))
    moved = real.with_suffix(".moved")
    real.rename(moved)
    try:
        for fast in (True, False):
            client = inproc(fast_path=fast, limit=limit)
            r = _array(client, world, "xps")
            assert r.status_code == 400 and "Response would exceed" in r.text, (fast, r.status_code, r.text)
            r = _array(client, world, "xps", slice="0:10")
            assert r.status_code == 404 and "not found" in r.text, (fast, r.status_code, r.text)
    finally:
        moved.rename(real)


def test_bytes_in_flight_are_bounded_server_wide(world: World, inproc: Any) -> None:
    """Over the budget: 503 with Retry-After, on the fast path, Tiled's route and /read alike."""
    from sweepcat.server import policy as policy_mod

    client = inproc()
    tiled_client = inproc(fast_path=False)
    held = policy_mod.BUDGET.reserve(policy_mod.BUDGET.limit, "a test holding the whole budget")
    try:
        for c in (client, tiled_client):
            r = _array(c, world, "rixs")
            assert r.status_code == 503 and r.headers["retry-after"] == str(policy_mod.RETRY_AFTER_SECONDS), r.text
            assert "busy" in r.text
            r = _sweepcat(c, "read", world, type="rixs", q=f'key == "{world.keys[0]}"')
            assert r.status_code == 503 and "retry-after" in r.headers
    finally:
        held.release()
    assert _array(client, world, "rixs").status_code == 200
    assert policy_mod.BUDGET.in_flight == 0


def test_budget_unit() -> None:
    from sweepcat.server import policy as policy_mod

    budget = policy_mod.ByteBudget(100)
    big = budget.reserve(500, "alone")  # more than the budget may run when nothing else does
    with pytest.raises(HTTPException) as info:
        budget.reserve(1, "second")
    assert info.value.status_code == 503
    big.release()
    big.release()  # releasing twice is harmless
    a = budget.reserve(60, "a")
    with pytest.raises(HTTPException) as info:
        budget.reserve(50, "b")
    assert info.value.status_code == 503 and "b: the server is busy" in info.value.detail["message"]
    b = budget.reserve(40, "b")
    assert budget.in_flight == 100
    a.release()
    b.release()
    assert budget.in_flight == 0
    array = np.zeros(10)
    budget.reserve(80, "array").until_freed(array)
    assert budget.in_flight == 80
    del array
    assert budget.in_flight == 0


def test_text_facets_cost_rows_not_rows_times_longest_value(tmp_path: Path, demo_root: Path) -> None:
    """A 20 MB note in one of 64 rows: the facet answers at once, values truncated, memory bounded."""
    import pyarrow as pa

    from sweepcat.catalog.index import IndexCache
    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import DatasetDescription, Manifests

    n = 64
    notes = ["short"] * n
    notes[3] = "x" * (20 * 1024 * 1024)
    ham = pa.table({"huid": [f"h{i}" for i in range(n)], "key": [f"H_{i}" for i in range(n)],
                    "tenDq": np.linspace(0, 1, n), "note": notes})
    art = pa.table({"huid": [f"h{i}" for i in range(n)], "type": ["rixs"] * n, "file": [BATCH_FILES[0]] * n,
                    "dataset": ["/RIXS"] * n, "index": list(range(n)), "shape": [[151, 40]] * n,
                    "dtype": ["float64"] * n})
    m = Manifests(ham, art, DatasetDescription("notes", "notes", str(demo_root / "NiPS3_batched")))
    catalog = tmp_path / "notes.db"
    ingest(m, str(catalog))
    index = IndexCache(parse_catalog(str(catalog))).get("notes")
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = index.facets(index.select(None), "note")
    assert time.perf_counter() - t0 < 5
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200 * 1024, f"facets grew the process by {grown_kb} kB"
    assert out["count"] == n and out["distinct"]["short"] == n - 1 and out["distinct_total"] == 2
    assert max(len(k) for k in out["distinct"]) < 300


# --------------------------------------------------------------------------- finding 10: 400s, not 500s


BAD_QUERIES = {
    "huge integer": ("tenDq > " + "9" * 400, "out of range"),
    "deep parentheses": ("(" * 400 + "tenDq > 1" + ")" * 400, "nested"),
    "not repeated": ("not " * 1000 + "tenDq > 1", "nested"),
    "too long": ("tenDq > 1 or " * 1000 + "tenDq > 1", "too long"),
    "many tests": (" or ".join(["key<1"] * 1001), "comparisons"),
}


@pytest.mark.parametrize("name", BAD_QUERIES)
def test_query_limits_are_400s_that_name_the_limit(world: World, inproc: Any, name: str) -> None:
    text, said = BAD_QUERIES[name]
    client = inproc()
    for route, params in {"search": {}, "facets": {"param": "tenDq"}, "params": {}, "locators": {},
                          "read": {"type": "rixs"}}.items():
        r = _sweepcat(client, route, world, q=text, **params)
        assert r.status_code == 400, (route, r.status_code, r.text[:200])
        assert said in r.json()["detail"]["message"], (route, r.json())


@pytest.mark.parametrize("params,status", [
    ({"expected_shape": "abc"}, 422), ({"slice": "::0"}, 400), ({"slice": ":,:,:,:"}, 400),
    ({"slice": "999"}, 400), ({"expected_shape": "1,1"}, 500), ({"slice": "0,::-1"}, 200),
])
def test_bad_slices_and_shapes_answer_as_tiled(world: World, inproc: Any, params: dict, status: int) -> None:
    """The fast path and Tiled's route give the same status and body (500 only where Tiled itself says 500)."""
    fast, tiled = inproc(), inproc(fast_path=False)
    a, b = _array(fast, world, "rixs", **params), _array(tiled, world, "rixs", **params)
    assert a.status_code == b.status_code == status, (a.status_code, a.text[:200], b.status_code, b.text[:200])
    assert (a.json() == b.json()) if status != 200 else (a.content == b.content)


# --------------------------------------------------------------------------- finding 11


def test_serve_banner_masks_a_postgres_password(postgres: Any, tmp_path: Path, world: World) -> None:
    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import read_manifests

    dsn = postgres.create_database("bannerpw")
    ingest(read_manifests(world.base / "manifests"), dsn)
    with_password = dsn.replace("://postgres@", "://postgres:hunter2secret@")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sweepcat.cli", "serve", "--catalog", with_password, "--port",
                             str(port)], env=clean_env(SWEEPCAT_API_KEY=API_KEY), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
    finally:
        stop(proc)
    output = proc.stdout.read()
    assert "hunter2secret" not in output and "***" in output, output


def test_a_spec_key_cannot_write_manifests_outside_the_output(world: World, runner: Any, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yml"
    spec.write_text((world.base / "spec.yml").read_text() + "key: ../../escaped\n")
    out = tmp_path / "a" / "b" / "out"
    r = runner.invoke(cli_app, ["manifest", str(spec), "-o", str(out)])
    assert r.exit_code == 2, r.output
    assert "../../escaped" in r.output and "key" in r.output
    assert not list(tmp_path.rglob("escaped*"))


# --------------------------------------------------------------------------- dependency overrides


def test_dependency_overrides_added_after_start_up_take_effect(world: World, inproc: Any) -> None:
    """`_SettledOverrides` must never hide an override: one that raises makes Tiled's routes fail."""
    from tiled.server.dependencies import get_root_tree

    client = inproc(fast_path=False)
    assert client.get(f"/api/v1/metadata/{world.dataset}", headers=KEY).status_code == 200

    def broken() -> None:
        raise RuntimeError("override in effect")

    client.app.dependency_overrides[get_root_tree] = broken
    try:
        assert client.get(f"/api/v1/metadata/{world.dataset}", headers=KEY).status_code == 500
    finally:
        del client.app.dependency_overrides[get_root_tree]
    assert client.get(f"/api/v1/metadata/{world.dataset}", headers=KEY).status_code == 200


# --------------------------------------------------------------------------- fast path == Tiled


CREDENTIALS = {
    "header": {"headers": KEY},
    "query": {"headers": {}, "params": {"api_key": API_KEY}},
    "cookie": {"headers": {"Cookie": f"tiled_api_key={API_KEY}"}},
    "wrong key": {"headers": {"Authorization": "Apikey wrong"}},
    "no key": {"headers": {}},
    "bearer": {"headers": {"Authorization": "Bearer not-a-token"}},
    "odd scheme": {"headers": {"Authorization": "Token abc"}},
    "good header, wrong query": {"headers": KEY, "params": {"api_key": "wrong"}},
}


def _same(a: httpx.Response, b: httpx.Response, what: str) -> None:
    assert a.status_code == b.status_code, (what, a.status_code, a.text[:300], b.status_code, b.text[:300])
    if a.headers.get("content-type", "").startswith("application/json"):
        assert a.json() == b.json(), (what, a.text[:300], b.text[:300])
    else:
        assert a.content == b.content, what


@pytest.mark.parametrize("public", [False, True])
def test_the_fast_path_answers_exactly_as_tiled_does(world: World, inproc: Any, public: bool) -> None:
    """Same requests, fast path on and off: equal status codes and bodies, and never a wider grant."""
    on, off = inproc(public=public), inproc(public=public, fast_path=False)
    paths = [world.path(t) for t in ("rixs", "xps", *ATTACKS)]
    paths += [f"{world.dataset}/{world.keys[0]}/%2572ixs", f"{world.dataset}/{world.keys[0]}/%72ixs",
              f"{world.dataset}/{world.keys[0]}", f"{world.dataset}/nope/rixs", "nope"]
    for path in paths:
        for name, cred in CREDENTIALS.items():
            kwargs = {"headers": cred.get("headers", {}), "params": cred.get("params", {})}
            _same(on.get(f"/api/v1/array/full/{path}", **kwargs), off.get(f"/api/v1/array/full/{path}", **kwargs),
                  f"{path} with {name}")
    for params in ({"slice": "0"}, {"slice": "3:7,::-2"}, {"slice": "-1"}, {"expected_shape": "151,40"},
                   {"format": "application/json"}, {"slice": "0", "slice2": "x"}):
        _same(on.get(f"/api/v1/array/full/{world.path('rixs')}", params=params, headers=KEY),
              off.get(f"/api/v1/array/full/{world.path('rixs')}", params=params, headers=KEY), str(params))
    for route, params in (("search", {"q": "tenDq > 1"}), ("search", {"q": "tenDq >"}), ("search", {"limit": "-1"}),
                          ("locators", {"type": "rixs"}), ("locators", {}), ("locators", {"q": "tenDq >"}),
                          ("locators", {"type": "outside"}), ("locators", {"type": "rixs", "cuts": "slice:0:2"}),
                          ("read", {"type": "rixs", "q": f'key == "{world.keys[1]}"'}), ("read", {"type": "nope"}),
                          ("read", {"type": "outside"}), ("read", {"type": "rixs", "offset": "x"})):
        for name, cred in CREDENTIALS.items():
            kwargs = {"headers": cred.get("headers", {}), "params": {**params, **cred.get("params", {})}}
            _same(on.get(f"/api/v1/sweepcat/{route}/{world.dataset}", **kwargs),
                  off.get(f"/api/v1/sweepcat/{route}/{world.dataset}", **kwargs), f"{route} {params} with {name}")
    fresh = inproc(public=public)  # no cookies left by the requests above
    for route, params in (("search", {}), ("locators", {"type": "rixs"}), ("read", {"type": "rixs", "limit": "1"})):
        r = fresh.get(f"/api/v1/sweepcat/{route}/{world.dataset}", params=params, headers=KEY)
        assert r.status_code == 200 and r.headers.get("x-sweepcat-fast-path") == "1", route


@pytest.mark.parametrize("public", [False, True])
def test_the_metadata_fast_path_answers_field_by_field_as_tiled_does(world: World, inproc: Any,
                                                                     public: bool) -> None:
    """Tiled's /metadata for every kind of node, fast path on and off: the same status, the same decoded
    body field by field (JSON and msgpack), the same ETag; 304 for a matching If-None-Match."""
    import msgpack
    from tiled.client import from_uri

    on, off = inproc(public=public), inproc(public=public, fast_path=False)
    from_uri  # noqa: B018 - imported to be sure the stock client's version string is the one sent below
    paths = [world.dataset, f"{world.dataset}/{world.keys[0]}", f"{world.dataset}/{world.keys[-1]}",
             *(world.path(t) for t in ("rixs", "xps", *ATTACKS)), f"{world.dataset}/{world.keys[0]}/rixs/below",
             f"{world.dataset}/nope", "nope", "_axes", f"_axes/{world.dataset}", f"{world.dataset}/{world.keys[0]}/",
             f"{world.dataset}//{world.keys[0]}", f"{world.dataset}/{world.keys[0]}/%72ixs"]
    agents = {"curl": {}, "stock client": {"User-Agent": "python-tiled/0.2.20"},
              "old client": {"User-Agent": "python-tiled/0.2.3"}}
    answered_fast = 0
    for path in paths:
        for accept in ("application/json", "application/x-msgpack"):
            for agent, agent_headers in agents.items():
                for name, cred in CREDENTIALS.items():
                    if name not in ("header", "query", "no key", "wrong key"):
                        continue
                    kwargs = {"headers": {**cred.get("headers", {}), **agent_headers, "Accept": accept},
                              "params": cred.get("params", {})}
                    a = on.get(f"/api/v1/metadata/{path}", **kwargs)
                    b = off.get(f"/api/v1/metadata/{path}", **kwargs)
                    what = f"{path} {accept} {agent} {name}"
                    assert a.status_code == b.status_code, (what, a.text[:300], b.text[:300])
                    if a.status_code == 200:
                        decode = msgpack.unpackb if accept.endswith("msgpack") else json.loads
                        assert decode(a.content) == decode(b.content), what
                        assert a.headers["etag"] == b.headers["etag"], what
                        assert a.headers["content-type"] == b.headers["content-type"], what
                        answered_fast += a.headers.get("x-sweepcat-fast-path") == "1"
                    else:
                        assert a.json() == b.json(), what
    assert answered_fast >= 2 * 3 * 2 * 2  # containers and arrays of sweepcat's were answered by the fast path
    etag = off.get(f"/api/v1/metadata/{world.path('rixs')}", headers=KEY).headers["etag"]
    for client in (on, off):
        r = client.get(f"/api/v1/metadata/{world.path('rixs')}", headers={**KEY, "If-None-Match": etag})
        assert r.status_code == 304
    # anything but the plain form is Tiled's own answer
    r = on.get(f"/api/v1/metadata/{world.dataset}", headers=KEY, params={"fields": "metadata"})
    assert r.status_code == 200 and r.headers.get("x-sweepcat-fast-path") is None


# --------------------------------------------------------------------------- the matrix


MODES = {
    "public": {"public": True},
    "single key": {},
    "policy": {"policy": "WholeDatasetPolicy"},
}
CASES = {"inside": "rixs", "outside": "outside", "swapped": "swapped", "external": "ext", "external link": "elink",
         "virtual": "vds", "fifo": "fifo"}


@pytest.mark.parametrize("mode", MODES)
def test_matrix_of_access_modes_routes_and_files(world: World, inproc: Any, mode: str) -> None:
    """public / single key / access policy x every route that serves bytes x inside / outside / swapped /
    external / FIFO: the inside file reads everywhere, nothing else is ever served."""
    client = inproc(**MODES[mode])
    headers = {} if mode == "public" else KEY
    for case, type_ in CASES.items():
        q = f'key == "{world.keys[0]}"'
        responses = {
            "array/full": client.get(f"/api/v1/array/full/{world.path(type_)}", headers=headers),
            "array/full json": client.get(f"/api/v1/array/full/{world.path(type_)}", headers=headers,
                                          params={"format": "application/json"}),
            "array/block": client.get(f"/api/v1/array/block/{world.path(type_)}", headers=headers,
                                      params={"block": "0,0" if type_ != "ext" else "0"}),
            "sweepcat/read": client.get(f"/api/v1/sweepcat/read/{world.dataset}", headers=headers,
                                        params={"type": type_, "q": q}),
        }
        for route, r in responses.items():
            if case == "inside":
                assert r.status_code == 200, (mode, route, r.status_code, r.text[:200])
            else:
                assert r.status_code in (403, 404, 500), (mode, case, route, r.status_code, r.text[:200])
                _no_secret(r)
    if mode == "public":
        r = client.get(f"/api/v1/array/full/{world.path('rixs')}", headers={"Authorization": "Apikey wrong"})
        assert r.status_code == 401
        assert client.post("/api/v1/sweepcat/register", content=b"x").status_code == 401


# --------------------------------------------------------------------------- found by trying it as an attacker


def test_hdf5_external_raw_storage_is_refused_even_inside_the_root(world: World, inproc: Any, runner: Any,
                                                                   tmp_path: Path) -> None:
    """HDF5 opens external raw-data files itself, by path: swapped after a first read for a symlink to
    /etc/passwd or for a FIFO, they were served or froze the server. sweepcat serves no such dataset."""
    for fast in (True, False):
        client = inproc(fast_path=fast)
        r = _array(client, world, "extin")
        assert r.status_code == 403 and "external" in r.text, (fast, r.status_code, r.text[:200])
        r = _sweepcat(client, "read", world, type="extin", q=f'key == "{world.keys[0]}"')
        assert r.status_code == 403 and "external" in r.text
    (world.root / "raw.bin").unlink()
    (world.root / "raw.bin").symlink_to("/etc/passwd")
    try:
        for fast in (True, False):
            r = _array(inproc(fast_path=fast), world, "extin")
            assert r.status_code == 403
            _no_secret(r)
    finally:
        (world.root / "raw.bin").unlink()
        (world.root / "raw.bin").write_bytes(bytes(range(64)))
    d = tmp_path / "ext"
    d.mkdir()
    shutil.copy(world.root / "extin.h5", d)
    shutil.copy(world.root / "raw.bin", d)
    r = runner.invoke(cli_app, ["inspect", str(d), "--no-tree"])
    assert r.exit_code == 1 and "extin.h5#/RAW" in r.output and "external" in r.output, r.output


@pytest.fixture
def roots_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy looks at the registry's recorded roots on every request (no one-second cache), so a test
    sees the effect of a change at once instead of sleeping past the cache."""
    from sweepcat.server import policy as policy_mod

    monkeypatch.setattr(policy_mod, "ROOTS_TTL", 0.0)


def test_readable_storage_is_resolved_once_not_at_every_read(tmp_path: Path, demo_root: Path, runner: Any,
                                                             roots_every_request: None) -> None:
    """A root directory replaced by a symlink after ingest does not carry readable storage along."""
    base = tmp_path
    data = base / "data" / "sweep"
    data.mkdir(parents=True)
    shutil.copy(demo_root / "NiPS3_batched" / BATCH_FILES[0], data / BATCH_FILES[0])
    _cli(runner, "inspect", data, "-o", base / "spec.yml", "--no-tree")
    _cli(runner, "manifest", base / "spec.yml", "-o", base / "m")
    catalog = str(base / "c.db")
    _cli(runner, "ingest", base / "m", "--catalog", catalog)
    outside = base / "outside"
    outside.mkdir()
    with h5py.File(outside / BATCH_FILES[0], "w") as f:
        f["RIXS"] = np.full((64, 151, 40), SECRET)
    config = server_config(parse_catalog(catalog).tiled_uri, [str(data)], api_key=API_KEY)
    for fast in (True, False):
        with TestClient(build_app(config, fast_path=fast), base_url="http://127.0.0.1",
                        raise_server_exceptions=False) as client:
            key = client.get("/api/v1/sweepcat/search/sweep", headers=KEY).json()["keys"][0]
            path = f"/api/v1/array/full/sweep/{key}/rixs"
            assert client.get(path, headers=KEY).status_code == 200
            data.rename(data.with_name("sweep.real"))
            data.symlink_to(outside)
            try:
                # the policy's next look at the registry (this request) must not re-resolve
                r = client.get(path, headers=KEY)
                assert r.status_code in (403, 500), (fast, r.status_code)
                _no_secret(r)
                r = client.get("/api/v1/sweepcat/read/sweep", params={"type": "rixs", "q": f'key == "{key}"'},
                               headers=KEY)
                assert r.status_code == 403
                _no_secret(r)
            finally:
                data.unlink()
                data.with_name("sweep.real").rename(data)


def test_register_records_the_real_root_not_a_symlink(world: World, inproc: Any, tmp_path: Path,
                                                      roots_every_request: None) -> None:
    """A dataset registered through a symlinked root must not follow that link when it is re-pointed."""
    from sweepcat.catalog.db import connect
    from sweepcat.contract import encode_batch, read_manifests

    m = read_manifests(world.base / "manifests")
    link = world.root / "lnk"
    link.symlink_to(".")
    try:
        m.description.root = str(link)
        m.description.key = "evil"
        m.description.label = "evil"
        client = inproc()
        r = client.post("/api/v1/sweepcat/register", content=encode_batch(m), headers=KEY)
        assert r.status_code == 200, r.text
        with connect(parse_catalog(world.catalog)) as db:
            (root,) = db.fetch("SELECT root FROM sweepcat_datasets r JOIN nodes n ON n.id = r.dataset_id "
                               "WHERE n.key = 'evil'")[0]
        assert root == str(world.root.resolve())
        link.unlink()
        link.symlink_to(world.outside)
        r = client.get(f"/api/v1/array/full/{world.path('outside')}", headers=KEY)
        assert r.status_code != 200
        _no_secret(r)
    finally:
        link.unlink()
        from sweepcat.catalog.delete import execute_delete, plan_delete

        execute_delete(parse_catalog(world.catalog), plan_delete(parse_catalog(world.catalog), "evil"))


def test_access_policies_below_the_dataset_node_hold_on_the_bulk_routes(world: World, inproc: Any) -> None:
    """A policy hiding artifacts inside Hamiltonians, or withholding read:data on some arrays, is applied by
    /read and /locators row by row, as Tiled applies it node by node."""
    q = f'key == "{world.keys[0]}"'
    only_rixs = inproc(policy="OnlyRixsPolicy")
    assert _array(only_rixs, world, "xps").status_code == 404  # Tiled: the node does not exist for the caller
    r = _sweepcat(only_rixs, "read", world, type="xps", q=q)
    assert r.status_code == 404 and "xps" in r.text, r.text[:300]
    r = _sweepcat(only_rixs, "locators", world, type="xps", q=q)  # listings leave out what is hidden
    assert r.status_code == 200 and pa_rows(r) == 0, r.text[:300]
    assert _sweepcat(only_rixs, "read", world, type="rixs", q=q).status_code == 200
    no_data = inproc(policy="NoDataPolicy")
    assert _array(no_data, world, "xps").status_code == 403
    r = _sweepcat(no_data, "read", world, type="xps", q=q)
    assert r.status_code == 403 and "read:data" in r.text, r.text[:300]
    assert _sweepcat(no_data, "read", world, type="rixs", q=q).status_code == 200
    assert _sweepcat(no_data, "locators", world, type="xps", q=q).status_code == 200  # metadata: as Tiled


def pa_rows(r: httpx.Response) -> int:
    import pyarrow as pa

    return pa.ipc.open_stream(r.content).read_all().num_rows


def test_a_compressed_chunk_is_counted_as_what_it_decompresses_to(world: World, inproc: Any) -> None:
    """One gzip chunk of 128 MiB in a 130 kB file: refused before decompression when it exceeds the budget,
    and counted in the budget otherwise."""
    from sweepcat.server import policy as policy_mod

    limit = policy_mod.BUDGET.limit
    policy_mod.BUDGET.limit = 64 * 2**20
    try:
        for fast in (True, False):
            r = _array(inproc(fast_path=fast), world, "bomb", slice="0:1")
            assert r.status_code == 413 and "chunk" in r.text, (fast, r.status_code, r.text[:300])
    finally:
        policy_mod.BUDGET.limit = limit
    r = _array(inproc(), world, "bomb", slice="0:1")
    assert r.status_code == 200 and np.frombuffer(r.content, "f8").tolist() == [0.0]
    assert policy_mod.BUDGET.in_flight == 0


def test_register_bounds_a_body_without_content_length(world: World, inproc: Any, monkeypatch: Any) -> None:
    from sweepcat.server import routes

    monkeypatch.setattr(routes, "MAX_BATCH_BYTES", 1 << 20)

    def body() -> Iterator[bytes]:
        for _ in range(16):
            yield b"x" * (1 << 20)

    r = inproc().post("/api/v1/sweepcat/register", content=body(), headers=KEY)
    assert r.status_code == 413 and "limit" in r.text, r.text[:300]


@pytest.mark.parametrize("type_", ["badindex", "listindex", "nodataset", "intdataset", "relative"])
def test_odd_data_source_parameters_are_422s_that_name_the_node(world: World, inproc: Any, type_: str) -> None:
    """Nodes written through Tiled's API with parameters sweepcat never writes: a clear 4xx, never a 500,
    and the rest of the dataset keeps reading."""
    q = f'key == "{world.keys[0]}"'
    answers = {}
    for fast in (True, False):
        client = inproc(fast_path=fast)
        r = answers[fast] = _array(client, world, type_)
        if type_ == "relative":  # Tiled's own readable-storage check fails on a relative path, before the adapter
            assert r.status_code == 500
        else:
            assert r.status_code == 422 and type_ in r.text, (fast, r.status_code, r.text[:300])
        r = _sweepcat(client, "read", world, type=type_, q=q)
        assert r.status_code in (403, 422), (fast, r.status_code, r.text[:300])
        assert _sweepcat(client, "read", world, type="rixs", q=q).status_code == 200
        assert _sweepcat(client, "locators", world, type="rixs").status_code == 200
    _same(answers[True], answers[False], type_)


def test_a_percent_encoded_parameter_name_does_not_slip_past_the_fast_path(world: World, inproc: Any) -> None:
    on, off = inproc(), inproc(fast_path=False)
    url = f"/api/v1/array/full/{world.path('rixs')}?api%5Fkey=wrong"
    _same(on.get(url, headers=KEY), off.get(url, headers=KEY), "api%5Fkey")
    url = f"/api/v1/array/full/{world.path('doubleslash')}"
    _same(on.get(url, headers=KEY), off.get(url, headers=KEY), "double slash asset")


# --------------------------------------------------------------------------- round 2 (a second attacker)


def _asset_id(client: TestClient, world: World, type_: str) -> int:
    r = client.get(f"/api/v1/metadata/{world.path(type_)}", params={"include_data_sources": True}, headers=KEY)
    return r.json()["data"]["attributes"]["data_sources"][0]["assets"][0]["id"]


def test_tiled_raw_asset_routes_never_serve_bytes_past_the_file_rule(world: World, inproc: Any) -> None:
    """Tiled's raw-asset routes open a node's files by URI alone: sweepcat servers keep them off, refuse a
    config that turns them on, and its routes mounted in a Tiled server that has them on stay off."""
    for public in (False, True):
        client = inproc(public=public)
        for type_ in ("outside", "swapped", "xps"):
            asset = _asset_id(client, world, type_)
            for route in ("bytes", "manifest"):
                r = client.get(f"/api/v1/asset/{route}/{world.path(type_)}", params={"id": asset},
                               headers=KEY if not public else {})
                assert r.status_code in (401, 403), (public, type_, route, r.status_code)
                _no_secret(r)
    assert server_config("sqlite:///x.db", [], api_key=API_KEY)["expose_raw_assets"] is False
    from sweepcat.errors import SweepcatError

    with pytest.raises(SweepcatError, match="expose_raw_assets"):
        build_app({**world.config(), "expose_raw_assets": True})
    try:
        tiled = inproc(tiled_only=True, raw_assets=True)
        r = tiled.get(f"/api/v1/sweepcat/read/{world.dataset}", params={"type": "rixs"}, headers=KEY)
        assert r.status_code == 503 and "expose_raw_assets: false" in r.text
    finally:
        inproc(tiled_only=True, raw_assets=False)  # Tiled's settings are process-wide: put them back


def test_the_registered_root_is_the_one_that_was_checked(tmp_path: Path) -> None:
    """The root is resolved once: a symlink re-pointed between the check and the record changes nothing."""
    from sweepcat.catalog.db import connect
    from sweepcat.catalog.ingest import ingest
    from sweepcat.catalog.params import recorded_roots
    from sweepcat.h5open import FileRule
    from tests.support.sweeps import make_sweep

    allowed = tmp_path / "allowed"
    make_sweep(allowed / "real", 4)
    make_sweep(tmp_path / "outside", 4)
    link = allowed / "lnk"
    link.symlink_to(allowed / "real")
    m = make_sweep(allowed / "real", 4)
    m.description.root = str(link)

    def swap(phase: str, done: int, total: int) -> None:
        if phase == "locking":  # after every check, before anything is written
            link.unlink()
            link.symlink_to(tmp_path / "outside")

    catalog = str(tmp_path / "c.db")
    ingest(m, catalog, root_rule=FileRule.of([str(allowed.resolve())]), progress=swap)
    with connect(parse_catalog(catalog)) as db:
        assert recorded_roots(db) == [str((allowed / "real").resolve())]
    # A recorded root later swapped for a symlink is not resolved again: it leaves readable storage.
    (allowed / "real").rename(allowed / "real.moved")
    (allowed / "real").symlink_to(tmp_path / "outside")
    with connect(parse_catalog(catalog)) as db:
        assert recorded_roots(db) == []


def test_the_prune_body_is_bounded_and_counted(world: World, inproc: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sweepcat.server import routes

    client = inproc()
    before = client.get(f"/api/v1/sweepcat/search/{world.dataset}", headers=KEY).json()["count"]
    monkeypatch.setattr(routes, "MAX_BATCH_BYTES", 1000)
    body = json.dumps({"keys": [f"k{i:04d}" for i in range(200)]})
    for headers in (KEY, {**KEY, "Transfer-Encoding": "chunked"}):
        r = client.post(f"/api/v1/sweepcat/prune/{world.dataset}", content=body.encode(), headers=headers)
        assert r.status_code == 413 and "limit" in r.text
    assert client.get(f"/api/v1/sweepcat/search/{world.dataset}", headers=KEY).json()["count"] == before
