"""Issue 5 figures: parameter search (SQLite, PostgreSQL, 1M Hamiltonians) and batch access.

Same run, for comparison: Tiled's own Key queries on the same catalog, and
reading artifacts one by one through Tiled's client.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from .bench_catalog import _manifests
from .common import Figure, Run, seed_data, timeit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import API_KEY, PostgresCluster, sweepcat_server  # noqa: E402

QUERY = "tenDq > 1 and F2_dd < 3"


def _lat(fn, n: int = 50, warm: int = 3) -> list[float]:
    """Latencies in milliseconds."""
    return [x * 1000 for x in timeit(fn, repeat=n, warmup=warm)]


def search_figures(url: str, label: str, dataset: str, tiled_too: bool = True) -> list[Figure]:
    import httpx
    from tiled.client import from_uri
    from tiled.queries import Key

    http = httpx.Client(headers={"Authorization": f"Apikey {API_KEY}"}, timeout=300)
    base = f"{url}/api/v1/sweepcat/search/{dataset}"
    figs = [
        Figure(f"{label}: 2-parameter search, count + first 100 keys (one request)", "ms",
               _lat(lambda: http.get(base, params={"q": QUERY, "limit": 100}).raise_for_status()),
               target="p50 <= 10 ms (1M: <= 50 ms)"),
        Figure(f"{label}: count only", "ms", _lat(lambda: http.get(base, params={"q": QUERY, "limit": 0})
                                                  .raise_for_status()), target="p50 <= 5 ms"),
    ]
    if tiled_too:
        node = from_uri(url, api_key=API_KEY)[dataset]

        def tiled_search() -> None:
            hits = node.search(Key("tenDq") > 1).search(Key("F2_dd") < 3)
            len(hits)
            hits.keys()[:100]

        def tiled_count() -> None:
            len(node.search(Key("tenDq") > 1).search(Key("F2_dd") < 3))

        figs.append(Figure(f"{label}: same search through Tiled's Key queries (count + 100 keys)", "ms",
                           _lat(tiled_search, n=10, warm=1), baseline="anchor: 415 ms"))
        figs.append(Figure(f"{label}: count through Tiled", "ms", _lat(tiled_count, n=10, warm=1),
                           baseline="anchor: 121-143 ms"))
    return figs


def million(work: Path) -> Path:
    """A 1,000,000-Hamiltonian dataset (parameters only), ingested for real."""
    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import DatasetDescription, Manifests
    from sweepcat.demodata import PARAM_RANGES

    rng = np.random.default_rng(7)
    n = 1_000_000
    huid = pa.array([f"M{i:07d}" for i in range(n)], pa.string())
    cols = {"huid": huid, "key": pa.array([f"H_M{i:07d}" for i in range(n)], pa.string())}
    cols.update({k: pa.array(rng.uniform(lo, hi, n)) for k, (lo, hi) in PARAM_RANGES.items()})
    ham = pa.table(cols)
    art = pa.table({"huid": pa.array([], pa.string()), "type": pa.array([], pa.string()),
                    "file": pa.array([], pa.string()), "dataset": pa.array([], pa.string()),
                    "index": pa.array([], pa.int64()), "shape": pa.array([], pa.list_(pa.int64())),
                    "dtype": pa.array([], pa.string())})
    m = Manifests(ham, art, DatasetDescription(label="million", key="million", root=str(seed_data())))
    db = work / "million.db"
    ingest(m, str(db))
    return db


def run(repeat: int = 1) -> Run:

    from sweepcat.catalog.ingest import ingest

    result = Run("search")
    m = _manifests()
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-search-"))
    try:
        db = work / "seed.db"
        ingest(m, str(db))
        with sweepcat_server(str(db)) as url:
            result.figures += search_figures(url, "SQLite 100k", m.description.key)
            # read figures: bench_reads.py (written data, rows chosen by queries, the limit beside them)
        pg = PostgresCluster(durable=True).start()
        try:
            dsn = pg.create_database("search")
            ingest(m, dsn)
            with sweepcat_server(dsn) as url:
                result.figures += search_figures(url, "PostgreSQL 100k", m.description.key)
        finally:
            pg.stop()
        t0 = time.perf_counter()
        big = million(work)
        built = time.perf_counter() - t0
        with sweepcat_server(str(big)) as url:
            figs = search_figures(url, "SQLite 1M", "million", tiled_too=False)
            figs[0].notes = f"1M-row dataset ingested in {built:.0f} s"
            result.figures += figs
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
