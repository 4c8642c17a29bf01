"""Issue 3 figures: bulk ingest (SQLite, PostgreSQL), catalog size, reads through the server.

Same run, for comparison: Tiled's own per-node HTTP creation (stock client),
and a read of the same row through Tiled's stock HDF5 adapter.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from .common import DATA, Figure, Run, seed_data, sweepcat_cmd, timeit, wall

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: real servers
from tests.support.servers import API_KEY, PostgresCluster, sweepcat_server  # noqa: E402


def seed_manifests() -> Path:
    """Manifests of the seed-scale batched dataset (written once)."""
    from sweepcat.contract import write_manifests
    from sweepcat.inspect import inspect_directory
    from sweepcat.manifest import build_manifests

    out = DATA / "manifests"
    if not (out / "NiPS3_batched_hamiltonians.parquet").exists():
        report = inspect_directory(seed_data() / "NiPS3_batched")
        write_manifests(out, build_manifests(report.spec))
    return out


def _manifests():
    from sweepcat.contract import read_manifests

    d = seed_manifests()
    return read_manifests(d / "NiPS3_batched_hamiltonians.parquet", d / "NiPS3_batched_artifacts.parquet")


def stock_http_creation(n_hams: int = 60) -> float:
    """Nodes/s through Tiled's own client: one container + two array nodes per Hamiltonian."""
    from tiled.client import from_uri
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import Asset, DataSource, Management

    from sweepcat.catalog.schema import ensure_catalog, parse_catalog
    from sweepcat.contract import asset_uri as file_uri

    m = _manifests()
    work = Path(tempfile.mkdtemp(prefix="sweepcat-stock-"))
    try:
        cat = parse_catalog(str(work / "stock.db"))
        ensure_catalog(cat)
        # An empty sweepcat dataset, so that `serve` lists the data root as readable.
        with sweepcat_server(str(work / "stock.db")) as url:
            client = from_uri(url, api_key=API_KEY)
            ds = client.create_container("stock")
            ham = m.ham.slice(0, n_hams).to_pylist()
            art = m.art.slice(0, 2 * n_hams).to_pylist()
            from tiled.structures.array import ArrayStructure

            from sweepcat.catalog.plan import structure_for

            t0 = time.perf_counter()
            for i, h in enumerate(ham):
                node = ds.create_container(h["key"], metadata={k: v for k, v in h.items() if k != "key"})
                for a in art[2 * i: 2 * i + 2]:
                    _, s = structure_for(a["shape"], a["dtype"], None)
                    node.new(StructureFamily.array, [DataSource(
                        management=Management.external, mimetype="application/x-sliced-hdf5",
                        structure_family=StructureFamily.array, structure=ArrayStructure.from_json(s),
                        parameters={"dataset": a["dataset"], "index": a["index"]},
                        assets=[Asset(data_uri=file_uri(f"{m.description.root}/{a['file']}"), is_directory=False,
                                      parameter="data_uri")])], key=a["type"])
            return 3 * n_hams / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_latencies(catalog: str, keys: list[str], dataset: str) -> tuple[list[float], list[float]]:
    """(first read after start, per server start) and (warm reads)."""
    from tiled.client import from_uri

    firsts, warm = [], []
    for start in range(3):
        with sweepcat_server(catalog) as url:
            client = from_uri(url, api_key=API_KEY)
            node = client[dataset][keys[start]]["rixs"]
            t0 = time.perf_counter()
            node.read()
            firsts.append(time.perf_counter() - t0)
            if start == 0:
                nodes = [client[dataset][k]["rixs"] for k in keys[3:53]]
                for n in nodes[:5]:
                    n.read()
                for _ in range(4):
                    for n in nodes:
                        t0 = time.perf_counter()
                        n.read()
                        warm.append(time.perf_counter() - t0)
    return firsts, warm


def stock_adapter_read(m, key_rows: list[dict]) -> list[float]:
    """The same rows through Tiled's stock HDF5 adapter (dataset= and slice=), registered over HTTP."""
    from tiled.client import from_uri
    from tiled.structures.array import ArrayStructure
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import Asset, DataSource, Management

    from sweepcat.catalog.plan import structure_for
    from sweepcat.contract import asset_uri as file_uri

    work = Path(tempfile.mkdtemp(prefix="sweepcat-stockread-"))
    try:
        from sweepcat.catalog.ingest import ingest

        small = _manifests()
        small.ham = small.ham.slice(0, 1)
        small.art = small.art.slice(0, 2)
        ingest(small, str(work / "c.db"))  # registers the data root as readable
        with sweepcat_server(str(work / "c.db")) as url:
            client = from_uri(url, api_key=API_KEY)
            ds = client.create_container("stockread")
            nodes = []
            for i, a in enumerate(key_rows):
                _, s = structure_for(a["shape"], a["dtype"], None)
                nodes.append(ds.new(StructureFamily.array, [DataSource(
                    management=Management.external, mimetype="application/x-hdf5",
                    structure_family=StructureFamily.array, structure=ArrayStructure.from_json(s),
                    parameters={"dataset": a["dataset"], "slice": str(a["index"])},
                    assets=[Asset(data_uri=file_uri(f"{m.description.root}/{a['file']}"), is_directory=False,
                                  parameter="data_uri")])], key=f"n{i}"))
            for n in nodes[:3]:
                n.read()
            out = []
            for n in nodes:
                t0 = time.perf_counter()
                n.read()
                out.append(time.perf_counter() - t0)
            return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(repeat: int = 3) -> Run:
    from sweepcat.catalog.ingest import ingest
    from sweepcat.catalog.schema import ensure_catalog, parse_catalog

    m = _manifests()
    result = Run("catalog")
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-cat-"))
    try:
        # --- SQLite: each sample into a new, empty catalog (created by Tiled's initializer, not timed)
        samples, sizes, last_db = [], [], None
        for i in range(repeat):
            db = work / f"seed{i}.db"
            ensure_catalog(parse_catalog(str(db)))
            t0 = time.perf_counter()
            r = ingest(m, str(db))
            samples.append(time.perf_counter() - t0)
            assert r.nodes_written == 300_000, r
            sizes.append(sum(p.stat().st_size for p in work.glob(f"seed{i}.db*")) / 1e6)
            last_db = db
        result.figures.append(Figure("ingest 100k H / 300k nodes into SQLite, in-process", "s", samples,
                                     target="<= 5 s", baseline="reference 243.7 s"))
        result.figures.append(Figure("SQLite catalog size after ingest (db + wal)", "MB", sizes,
                                     target="<= 200 MB", baseline="reference 392 MB"))
        cli_db = work / "cli.db"
        result.figures.append(Figure(
            "`sweepcat ingest` CLI wall into a new SQLite catalog (incl. catalog creation, imports)", "s",
            wall(sweepcat_cmd("ingest", str(seed_manifests()), "--catalog", str(cli_db)), repeat=1, warmup=0)))
        # re-run on the same catalog: idempotent, nothing added
        result.figures.append(Figure("re-ingest of the same manifests (no-op), in-process", "s",
                                     timeit(lambda: ingest(m, str(last_db)), repeat=repeat, warmup=0)))

        # --- PostgreSQL, real cluster
        pg = PostgresCluster(durable=True).start()
        try:
            pg_samples = []
            for i in range(repeat):
                dsn = pg.create_database(f"seed{i}")
                ensure_catalog(parse_catalog(dsn))
                t0 = time.perf_counter()
                r = ingest(m, dsn)
                pg_samples.append(time.perf_counter() - t0)
                assert r.nodes_written == 300_000
            result.figures.append(Figure("ingest 100k H / 300k nodes into PostgreSQL 15, in-process", "s",
                                         pg_samples, target="<= 15 s"))
        finally:
            pg.stop()

        # --- stock Tiled per-node HTTP creation, same machine, same run
        rate = stock_http_creation()
        result.figures.append(Figure("stock Tiled client: per-node HTTP creation", "nodes/s", [rate],
                                     notes=f"300k nodes would take {300_000 / rate / 3600:.1f} h"))

        # --- reads through the server (rows of the two files that hold data)
        keys = [f"H_NiPS3_random_rank{r:04d}_{i:04d}" for r in (0, 1) for i in random.Random(1).sample(range(3125), 30)]
        firsts, warm = read_latencies(str(last_db), keys, m.description.key)
        result.figures.append(Figure("rixs .read() first after server start", "ms", [x * 1000 for x in firsts],
                                     target="<= 100 ms", baseline="reference ~560 ms"))
        result.figures.append(Figure("rixs .read() warm", "ms", [x * 1000 for x in warm],
                                     target="p50 <= 20 ms", baseline="reference 46-50 ms"))
        art = m.art.filter(pc.equal(m.art.column("type"), "rixs")).slice(0, 20).to_pylist()
        stock = stock_adapter_read(m, art)
        result.figures.append(Figure("same rows via Tiled's stock HDF5 adapter (slice=), warm", "ms",
                                     [x * 1000 for x in stock]))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)

