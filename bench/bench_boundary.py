"""Issue 8 figures: the fast path keeps its advantage behind the boundary; memory stays bounded under load.

    python -m bench.run boundary
    SWEEPCAT_BENCH_BASELINE_SRC=/path/to/older/checkout/src python -m bench.run boundary   # + the older code

Same run, for comparison: the stock Tiled path (`sweepcat config` served by
`tiled serve config`, no fast path) and, when given, an older sweepcat's
`serve` from another source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from .bench_catalog import _manifests
from .common import Figure, Run, timeit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import API_KEY, clean_env, free_port, stop, sweepcat_server, wait_ready  # noqa: E402

QUERY = "tenDq > 3.35"  # a real parameter query: rows scattered over every file


def _keys(url: str, dataset: str, n: int) -> list[str]:
    r = httpx.get(f"{url}/api/v1/sweepcat/search/{dataset}", params={"q": QUERY, "limit": n},
                  headers={"Authorization": f"Apikey {API_KEY}"}, timeout=60)
    r.raise_for_status()
    return r.json()["keys"]


def node_read_ms(url: str, dataset: str, keys: list[str]) -> list[float]:
    """`node.read()` with the node already fetched, as in ANCHORS (stock Tiled client), in ms."""
    from tiled.client import from_uri

    client = from_uri(url, api_key=API_KEY)[dataset]
    nodes = [client[k]["rixs"] for k in keys]
    samples: list[float] = []
    for node in nodes:
        samples += [x * 1000 for x in timeit(node.read, repeat=3, warmup=1)]
    return samples


def _tiled_serve(catalog: str, port: int, work: Path) -> subprocess.Popen:
    config = work / "tiled.yml"
    text = subprocess.run([sys.executable, "-m", "sweepcat.cli", "config", "--catalog", catalog, "--port", str(port)],
                          check=True, capture_output=True, text=True, env=clean_env(SWEEPCAT_API_KEY=API_KEY)).stdout
    config.write_text(text)
    tiled = Path(sys.executable).with_name("tiled")
    return subprocess.Popen([str(tiled), "serve", "config", str(config)], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if ":" in line}
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024


def _server_pid(port: int) -> int:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return int(out.split("pid=")[1].split(",")[0])


def concurrent_maximal_pages(url: str, port: int, dataset: str, clients: int = 8) -> tuple[float, float, float, int]:
    """(RSS before, peak RSS while reading, seconds, bytes) with ``clients`` maximal /read pages at once."""
    headers = {"Authorization": f"Apikey {API_KEY}"}
    info = httpx.get(f"{url}/api/v1/sweepcat/info", headers=headers).json()
    page = info["max_read_bytes"] // (151 * 40 * 8)
    pid = _server_pid(port)
    before, _ = _rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb(pid)[0])
            time.sleep(0.02)

    got: list[int] = []

    def one(i: int) -> None:
        with httpx.Client(headers=headers, timeout=600) as http:
            with http.stream("GET", f"{url}/api/v1/sweepcat/read/{dataset}",
                             params={"type": "rixs", "offset": i * 997, "limit": page}) as r:
                r.raise_for_status()
                got.append(sum(len(chunk) for chunk in r.iter_raw(1 << 20)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return before, peak[0], seconds, sum(got)


def run(repeat: int = 3) -> Run:
    from sweepcat.catalog.ingest import ingest

    result = Run("boundary")
    m = _manifests()
    ds = m.description.key
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-boundary-"))
    try:
        catalog = str(work / "seed.db")
        ingest(m, catalog)
        with sweepcat_server(catalog) as url:
            keys = _keys(url, ds, 40)
            port = int(url.rsplit(":", 1)[1])
            ours = node_read_ms(url, ds, keys)
            before, peak, seconds, nbytes = concurrent_maximal_pages(url, port, ds)
        tport = free_port()
        tiled = _tiled_serve(catalog, tport, work)
        try:
            wait_ready(f"http://127.0.0.1:{tport}", tiled)
            stock = node_read_ms(f"http://127.0.0.1:{tport}", ds, keys)
        finally:
            stop(tiled)
        baseline_note = f"stock Tiled path (tiled serve config), same run: p50 {np.median(stock):.1f} ms"
        older_src = os.environ.get("SWEEPCAT_BENCH_BASELINE_SRC")
        if older_src:
            with sweepcat_server(catalog, extra_env={"PYTHONPATH": older_src}) as url:
                older = node_read_ms(url, ds, keys)
            baseline_note += f"; before the boundary ({older_src}), same run: p50 {np.median(older):.1f} ms"
        result.figures.append(Figure("node.read() of a RIXS map, node already fetched (fast path behind the boundary)",
                                     "ms", ours, target="within 10 % of the pre-boundary fast path",
                                     baseline=baseline_note))
        result.figures.append(Figure("the same through the stock Tiled path (tiled serve config)", "ms", stock))
        if older_src:
            result.figures.append(Figure("the same on the pre-boundary sweepcat serve", "ms", older))
        result.figures.append(Figure(
            f"server RSS peak during 8 concurrent maximal /read pages ({nbytes / 1e9:.1f} GB in {seconds:.1f} s)",
            "MB", [peak], target="< 1,000 MB (in-flight budget 512 MiB)", baseline=f"RSS before: {before:.0f} MB"))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
