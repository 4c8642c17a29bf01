"""Issue 12 figure: what exact child counts cost (Tiled's `exact_count_limit`).

Tiled counts a listing's children exactly only up to `exact_count_limit` (100 by default) and
reports "at least 101" beyond it on SQLite ("1-10 of 101" in its UI, `len(ds)` 101 after
`repr(ds)`). sweepcat's server config raises the limit to 10^7. Same run, same catalog, same
server command (`tiled serve config`, the listing never takes sweepcat's fast path), the only
difference the limit: the time a user waits for

    ds = client["NiPS3_batched"]; repr(ds); len(ds)   # the first page of keys, then the count

from the client's root, lookups included, at 10^5 and 10^6 Hamiltonians on SQLite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .bench_catalog import seed_manifests
from .bench_ingest import manifests_1m
from .common import Figure, Run

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
            limits = ((100, "Tiled's default exact_count_limit=100"),
                      (EXACT_COUNT_LIMIT, f"sweepcat's exact_count_limit={EXACT_COUNT_LIMIT:,}"))
            servers = [_serve(catalog, limit, work) for limit, _ in limits]  # both up: rounds alternate
            try:
                clients = [from_uri(url, api_key=API_KEY) for _, url in servers]
                samples: list[list[float]] = [[] for _ in limits]
                counted: list[int] = [0 for _ in limits]
                for round_ in range(max(repeat, 10) + 2):
                    for i, client in enumerate(clients):
                        t0 = time.perf_counter()
                        ds = client["NiPS3_batched"]
                        repr(ds)  # the listing's first page, with Tiled's count of it
                        counted[i] = len(ds)  # what the user then sees (cached from that listing)
                        if round_ >= 2:  # two warm-up rounds
                            samples[i].append((time.perf_counter() - t0) * 1000)
                for (_, what), got, n in zip(limits, samples, counted, strict=True):
                    result.figures.append(Figure(
                        f"{label} Hamiltonians: client['NiPS3_batched'], repr, len ({what}): len = {n:,}", "ms", got))
            finally:
                for proc, _ in servers:
                    stop(proc)
            Path(catalog).unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result
