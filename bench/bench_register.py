"""Issue 4 figures: HTTP registration into a running server, bulk route vs stock paths (same run)."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from .bench_catalog import _manifests, stock_http_creation
from .common import Figure, Run, seed_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import API_KEY, sweepcat_server  # noqa: E402


def run(repeat: int = 1) -> Run:
    from sweepcat.catalog.schema import ensure_catalog, parse_catalog
    from sweepcat.client.register import register

    m = _manifests()
    result = Run("register")
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-reg-"))
    try:
        rates, walls = [], []
        for i in range(repeat):
            db = work / f"reg{i}.db"
            ensure_catalog(parse_catalog(str(db)))
            with sweepcat_server(str(db), extra_args=["--readable", str(seed_data())]) as url:
                t0 = time.perf_counter()
                r = register(m, url, API_KEY, batch_size=5000)
                walls.append(time.perf_counter() - t0)
                assert r.path == "bulk" and r.nodes_written == 300_000, r
                rates.append(r.nodes_written / walls[-1])
                t0 = time.perf_counter()
                again = register(m, url, API_KEY, batch_size=5000)
                rerun = time.perf_counter() - t0
                assert again.nodes_written == 0
        result.figures.append(Figure("register 100k H / 300k nodes, bulk route (5,000 H per request)", "s", walls,
                                     target="<= 30 s"))
        result.figures.append(Figure("bulk route rate", "nodes/s", rates, target=">= 10,000 nodes/s"))
        result.figures.append(Figure("re-run of the same registration (all skipped)", "s", [rerun]))

        # stock fallback: a sample of Hamiltonians through Tiled's client, 8 threads
        db = work / "stock.db"
        ensure_catalog(parse_catalog(str(db)))
        sample = _manifests()
        sample.ham = sample.ham.slice(0, 60)
        import pyarrow.compute as pc

        sample.art = sample.art.filter(pc.is_in(sample.art.column("huid"), value_set=sample.ham.column("huid")))
        with sweepcat_server(str(db), extra_args=["--readable", str(seed_data())]) as url:
            t0 = time.perf_counter()
            r = register(sample, url, API_KEY, force_stock=True, workers=8)
            stock_rate = r.nodes_written / (time.perf_counter() - t0)
        result.figures.append(Figure("fallback (stock client API, 8 threads), 60 H / 180 nodes", "nodes/s",
                                     [stock_rate], target=">= 100 nodes/s"))
        result.figures.append(Figure("Tiled's own client, sequential, same run", "nodes/s", [stock_http_creation()],
                                     baseline="anchor: ~40 nodes/s"))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
