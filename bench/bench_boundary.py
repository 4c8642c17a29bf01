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


def _tiled_serve(catalog: str, port: int, work: Path) -> subprocess.Popen:
    config = work / "tiled.yml"
    text = subprocess.run([sys.executable, "-m", "sweepcat.cli", "config", "--catalog", catalog, "--port", str(port)],
                          check=True, capture_output=True, text=True, env=clean_env(SWEEPCAT_API_KEY=API_KEY)).stdout
    config.write_text(text)
    tiled = Path(sys.executable).with_name("tiled")
    return subprocess.Popen([str(tiled), "serve", "config", str(config)], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


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


def interleaved_reads(urls: dict[str, str], dataset: str, keys: list[str], rounds: int) -> dict[str, list[float]]:
    """node.read() latencies (ms) on several servers, alternating in rounds so that drift hits all alike."""
    from tiled.client import from_uri

    nodes = {name: [from_uri(url, api_key=API_KEY)[dataset][k]["rixs"] for k in keys] for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in urls}
    for _ in range(rounds):
        for name, group in nodes.items():
            for node in group:
                samples[name] += [x * 1000 for x in timeit(node.read, repeat=1, warmup=1)]
    return samples


def run(repeat: int = 3) -> Run:
    import contextlib

    from sweepcat.catalog.ingest import ingest

    result = Run("boundary")
    m = _manifests()
    ds = m.description.key
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-boundary-"))
    try:
        catalog = str(work / "seed.db")
        ingest(m, catalog)
        older_src = os.environ.get("SWEEPCAT_BENCH_BASELINE_SRC")
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(sweepcat_server(catalog))
            urls = {"sweepcat": url}
            tport = free_port()
            tiled = _tiled_serve(catalog, tport, work)
            stack.callback(stop, tiled)
            wait_ready(f"http://127.0.0.1:{tport}", tiled)
            urls["stock Tiled"] = f"http://127.0.0.1:{tport}"
            if older_src:
                urls["pre-boundary"] = stack.enter_context(sweepcat_server(catalog,
                                                                           extra_env={"PYTHONPATH": older_src}))
            keys = _keys(url, ds, 30)
            lat = interleaved_reads(urls, ds, keys, rounds=max(3, repeat))
            port = int(url.rsplit(":", 1)[1])
            before, peak, seconds, nbytes = concurrent_maximal_pages(url, port, ds)
            old_rss = None
            if older_src:
                old_url = urls["pre-boundary"]
                old_rss = concurrent_maximal_pages(old_url, int(old_url.rsplit(":", 1)[1]), ds)
        p50 = {name: float(np.median(v)) for name, v in lat.items()}
        note = f"stock Tiled path, same run: p50 {p50['stock Tiled']:.1f} ms"
        if older_src:
            note += f"; pre-boundary sweepcat, same run: p50 {p50['pre-boundary']:.1f} ms " \
                    f"({100 * (p50['sweepcat'] / p50['pre-boundary'] - 1):+.0f} %)"
        result.figures.append(Figure("node.read() of a RIXS map, node already fetched (fast path behind the boundary)",
                                     "ms", lat["sweepcat"], target="within 10 % of the pre-boundary fast path",
                                     baseline=note))
        result.figures.append(Figure("the same through the stock Tiled path (tiled serve config)", "ms",
                                     lat["stock Tiled"]))
        if older_src:
            result.figures.append(Figure("the same on the pre-boundary sweepcat serve", "ms", lat["pre-boundary"]))
        result.figures.append(Figure(
            f"server RSS peak during 8 concurrent maximal /read pages ({nbytes / 1e9:.1f} GB in {seconds:.1f} s)",
            "MB", [peak], target="< 1,000 MB (in-flight budget 512 MiB)",
            baseline=f"RSS before: {before:.0f} MB" + (f"; pre-boundary server, same load: {old_rss[0]:.0f} -> "
                                                       f"{old_rss[1]:.0f} MB" if old_rss else "")))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
