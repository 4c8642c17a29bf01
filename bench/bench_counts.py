"""Issue 12 figure: what exact child counts cost (Tiled's `exact_count_limit`).

Tiled counts a listing's children exactly only up to `exact_count_limit` (100 by default) and
reports "at least 101" beyond it on SQLite ("1-10 of 101" in its UI, `len(ds)` 101 after
`repr(ds)`). sweepcat's server config raises the limit to 10^7. Same run, same catalog, same
server command (`tiled serve config`, the listing never takes sweepcat's fast path), the only
difference the limit: the time a user waits for

    ds = client["NiPS3_batched"]; len(ds)          # and repr(ds): the first page of keys

from the client's root, lookups included, at 10^5 and 10^6 Hamiltonians on SQLite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from .bench_catalog import seed_manifests
from .bench_ingest import manifests_1m
from .common import Figure, Run, timeit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import API_KEY, clean_env, free_port, stop, wait_ready  # noqa: E402


def _serve(catalog: str, limit: int, work: Path) -> tuple[subprocess.Popen, str]:
    text = subprocess.run([sys.executable, "-m", "sweepcat.cli", "config", "--catalog", catalog],
                          check=True, capture_output=True, text=True, env=clean_env(SWEEPCAT_API_KEY=API_KEY)).stdout
    config = yaml.safe_load(text)
    config["exact_count_limit"] = limit
    path = work / f"tiled-{limit}.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("tiled")), "serve", "config", str(path), "--port",
                             str(port)], env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def run(repeat: int = 5) -> Run:
    from tiled.client import from_uri

    from sweepcat.catalog.ingest import ingest
    from sweepcat.contract import read_manifests
    from sweepcat.server.config import EXACT_COUNT_LIMIT

    result = Run("counts")
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-counts-"))
    try:
        for label, manifests in (("10^5", seed_manifests()), ("10^6", manifests_1m())):
            catalog = str(work / f"{label}.db")
            ingest(read_manifests(manifests, dataset="NiPS3_batched"), catalog)
            for limit, what in ((100, "Tiled's default exact_count_limit=100"),
                                (EXACT_COUNT_LIMIT, f"sweepcat's exact_count_limit={EXACT_COUNT_LIMIT:,}")):
                proc, url = _serve(catalog, limit, work)
                try:
                    client = from_uri(url, api_key=API_KEY)
                    counted: list[int] = []

                    def look(client: object = client, counted: list[int] = counted) -> None:
                        ds = client["NiPS3_batched"]  # type: ignore[index]
                        counted.append(len(ds))
                        repr(ds)

                    samples = [s * 1000 for s in timeit(look, repeat=max(repeat, 10), warmup=2)]
                    result.figures.append(Figure(
                        f"{label} Hamiltonians: client['NiPS3_batched'], len, repr ({what}): len = {counted[-1]:,}",
                        "ms", samples))
                finally:
                    stop(proc)
            Path(catalog).unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
