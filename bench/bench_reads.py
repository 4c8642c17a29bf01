"""Issue 10 figures: reads on written data, rows chosen by parameter queries, beside the physical limit.

    python -m bench.run reads
    SWEEPCAT_BENCH_BASELINE_SRC=/path/to/older/checkout/src python -m bench.run reads   # + the older code

The seed-scale data (100,000 Hamiltonians, 32 files, every RIXS map written, chunked per row) is read
with the page cache warm. Rows come from real queries (``tenDq > 3.2``: ~10,000 maps scattered over all
32 files; ``tenDq > 3.47``: ~1,000). In the same run:

- the positional-read limit: exactly those maps' bytes read with ``os.preadv`` on 2 threads into a fresh
  array, offsets taken beforehand from the chunk index (the physical floor of any reader here);
- the stock Tiled path (`sweepcat config` served by `tiled serve config`, no fast path) for Tiled's own
  client, and, when given, an older sweepcat (server and client) from another source tree.

Client figures run in a child process (``bench/reads_child.py``), so the older client is measured by the
same code; clients are interleaved round by round.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np

from .bench_boundary import _rss_mb, _server_pid, _tiled_serve
from .bench_catalog import _manifests
from .common import Figure, Run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import API_KEY, free_port, stop, sweepcat_server, wait_ready  # noqa: E402

Q10K = "tenDq > 3.2"
Q1K = "tenDq > 3.47"
ROOT = Path(__file__).resolve().parents[1]


def _child(what: str, url: str, dataset: str, src: str | None = None, **args: Any) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, str(ROOT)) if p)}
    spec = json.dumps({"what": what, "url": url, "api_key": API_KEY, "dataset": dataset, **args})
    done = subprocess.run([sys.executable, "-m", "bench.reads_child", spec], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bench child {what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _locators(url: str, dataset: str, q: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(file per row, index per row, keys) of the query's RIXS maps, in the result's order."""
    import io

    import pyarrow as pa

    r = httpx.get(f"{url}/api/v1/sweepcat/locators/{dataset}", params={"q": q, "type": "rixs"},
                  headers={"Authorization": f"Apikey {API_KEY}"}, timeout=120)
    r.raise_for_status()
    t = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    return t.column("file").to_pylist(), np.asarray(t.column("index").to_pylist()), t.column("key").to_pylist()


def positional_limit(files: list[str], rows: np.ndarray, repeat: int, threads: int = 2) -> list[float]:
    """Seconds to read exactly these maps' bytes with positional reads into a fresh array: the floor."""
    offsets = np.empty(len(rows), np.int64)
    row_bytes = 151 * 40 * 8
    fds: dict[str, int] = {}
    for f in sorted(set(files)):
        with h5py.File(f, "r") as h:
            chunk = {}
            h["RIXS"].id.chunk_iter(lambda info, c=chunk: c.__setitem__(info.chunk_offset[0], info.byte_offset))
        pos = [i for i, name in enumerate(files) if name == f]
        offsets[pos] = [chunk[int(rows[i])] for i in pos]
        fds[f] = os.open(f, os.O_RDONLY)
    fd_of = np.array([fds[f] for f in files])
    parts = np.array_split(np.arange(len(rows)), threads)
    samples = []
    try:
        with ThreadPoolExecutor(threads) as pool:
            for _ in range(repeat + 1):
                t0 = time.perf_counter()
                out = np.empty((len(rows), 151, 40))
                flat = memoryview(out.reshape(-1).view(np.uint8))

                def copy(part: np.ndarray, flat: memoryview = flat) -> None:
                    for i in part.tolist():
                        os.preadv(int(fd_of[i]), [flat[i * row_bytes:(i + 1) * row_bytes]], int(offsets[i]))

                list(pool.map(copy, parts))
                samples.append(time.perf_counter() - t0)
    finally:
        for fd in fds.values():
            os.close(fd)
    return samples[1:]  # the first warms the page cache


@contextlib.contextmanager
def _stock_tiled(catalog: str, work: Path) -> Any:
    port = free_port()
    proc = _tiled_serve(catalog, port, work)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def _servers(stack: contextlib.ExitStack, catalog: str, work: Path, older: str | None) -> dict[str, str]:
    urls = {"sweepcat": stack.enter_context(sweepcat_server(catalog))}
    urls["stock Tiled"] = stack.enter_context(_stock_tiled(catalog, work))
    if older:
        urls["before"] = stack.enter_context(sweepcat_server(catalog, extra_env={"PYTHONPATH": older}))
    return urls


def run(repeat: int = 3) -> Run:
    from sweepcat.catalog.ingest import ingest

    result = Run("reads")
    m = _manifests()
    ds = m.description.key
    older = os.environ.get("SWEEPCAT_BENCH_BASELINE_SRC")
    work = Path(tempfile.mkdtemp(prefix="sweepcat-bench-reads-"))
    rounds = max(3, repeat)
    try:
        catalog = str(work / "seed.db")
        ingest(m, catalog)
        first: dict[str, list[float]] = {}
        client_imports: list[float] = []
        for _ in range(rounds):  # the first read after a server starts, from the client's root
            for name in ("sweepcat", "stock Tiled", "before") if older else ("sweepcat", "stock Tiled"):
                with contextlib.ExitStack() as stack:
                    if name == "sweepcat":
                        url = stack.enter_context(sweepcat_server(catalog))
                    elif name == "stock Tiled":
                        url = stack.enter_context(_stock_tiled(catalog, work))
                    else:
                        url = stack.enter_context(sweepcat_server(catalog, extra_env={"PYTHONPATH": older}))
                    keys = httpx.get(f"{url}/api/v1/sweepcat/search/{ds}", params={"q": Q10K, "limit": 3},
                                     headers={"Authorization": f"Apikey {API_KEY}"}).json()["keys"]
                    got = _child("stock", url, ds, keys=keys[:2])
                    first.setdefault(name, []).append(got["first"])
                    client_imports.append(got["imports"])
        with contextlib.ExitStack() as stack:
            urls = _servers(stack, catalog, work, older)
            url = urls["sweepcat"]
            files10, rows10, _ = _locators(url, ds, Q10K)
            files1, rows1, _ = _locators(url, ds, Q1K)
            limit10 = positional_limit(files10, rows10, 3 * rounds)
            limit1 = positional_limit(files1, rows1, 3 * rounds)
            clients = {"sweepcat": (url, None)}
            if older:
                clients["before"] = (urls["before"], older)
            reads: dict[str, dict[str, list[float]]] = {}
            stock: dict[str, list[float]] = {}
            for r in range(rounds):
                for name, (u, src) in clients.items():
                    got = _child("reads", u, ds, src, q10k=Q10K, q1k=Q1K, repeat=1)
                    for k, v in got.items():
                        reads.setdefault(name, {}).setdefault(k, []).extend(v)
                keys = httpx.get(f"{url}/api/v1/sweepcat/search/{ds}", params={"q": Q10K, "cuts": f"shuffle:{r}",
                                                                                 "limit": 41},
                                 headers={"Authorization": f"Apikey {API_KEY}"}).json()["keys"]
                for name, u in urls.items():
                    stock.setdefault(name, []).extend(_child("stock", u, ds, clients.get(name, (u, None))[1],
                                                             keys=keys)["samples"])
            rss = {name: _rss_mb(_server_pid(int(u.rsplit(":", 1)[1]))) for name, u in urls.items()
                   if name != "stock Tiled"}
            epochs = _child("epochs", url, ds, epochs=3, q10k=Q10K)
            old_epochs = _child("epochs", urls["before"], ds, older, epochs=1, q10k=Q10K) if older else None
        n10, n1 = len(rows10), len(rows1)
        lim = float(np.median(limit10))
        a10 = reads["sweepcat"]["mode_a_10k"]

        def before(key: str, unit: float = 1.0) -> str:
            if not older:
                return ""
            return f"before (28eaa93-style older code), same run: p50 {np.median(reads['before'][key]) * unit:.3f}"

        result.figures += [
            Figure(f"positional-read limit: the {n10:,} maps' bytes (483 MB), preadv, 2 threads, fresh array", "s",
                   limit10, notes="the floor for any reader on this machine"),
            Figure(f"Mode A: cat[ds].find({Q10K!r}).read('rixs', mode='direct'), {n10:,} maps", "s", a10,
                   target="<= 1.0 s and <= 1.5x the limit",
                   baseline=f"{np.median(a10) / lim:.2f}x the limit; " + before("mode_a_10k")),
            Figure(f"Mode A, the first read in a fresh client process (imports, chunk indexes learnt), {n10:,}"
                   " maps", "s", reads["sweepcat"]["mode_a_10k_first"], baseline=before("mode_a_10k_first")),
            Figure(f"Mode B: cat[ds].find({Q10K!r}).read('rixs') over HTTP, {n10:,} maps", "s",
                   reads["sweepcat"]["mode_b_10k"], target="<= 1.5 s",
                   baseline=f"{np.median(reads['sweepcat']['mode_b_10k']) / lim:.2f}x the limit; "
                            + before("mode_b_10k")),
            Figure(f"positional-read limit for the {n1:,} maps of {Q1K!r}", "s", limit1),
            Figure(f"Mode B: cat[ds].find({Q1K!r}).read('rixs'), {n1:,} maps", "s", reads["sweepcat"]["mode_b_1k"],
                   target="<= 0.2 s", baseline=before("mode_b_1k")),
        ]
        for name, samples in stock.items():
            result.figures.append(Figure(f"stock client: c[ds][key]['rixs'].read() from the root, warm ({name})",
                                         "ms", [s * 1000 for s in samples],
                                         target="p50 <= 20 ms" if name == "sweepcat" else ""))
        for name, samples in first.items():
            result.figures.append(Figure(f"the same, first after the server starts ({name}; client modules "
                                         "imported)", "ms", [s * 1000 for s in samples],
                                         target="<= 100 ms" if name == "sweepcat" else "",
                                         baseline=f"Tiled's client imports tiled.client.array (dask.array) at its "
                                                  f"first array: p50 {np.median(client_imports) * 1000:.0f} ms "
                                                  "more, client side" if name == "sweepcat" else ""))
        for mode, target in (("direct", "<= 2 s"), ("server", "<= 3 s")):
            e = epochs[mode]
            note = f"first epoch (2 workers starting) {e['epochs'][0]:.2f} s; tensors {e['dtype']}"
            if old_epochs:
                note += f"; before, same run: one epoch {old_epochs[mode]['epochs'][0]:.2f} s " \
                        f"({old_epochs[mode]['dtype']})"
            result.figures.append(Figure(f"one epoch, {n10:,} RIXS maps, float32, batch 256, num_workers=2, Mode "
                                         f"{'A' if mode == 'direct' else 'B'} (epochs 2-3)", "s",
                                         e["epochs"][1:], target=target, baseline=note))
        for name, (now, peak) in rss.items():
            result.figures.append(Figure(f"server RSS after the 10,000-map reads ({name})", "MB", [now],
                                         target="<= 600 MB" if name == "sweepcat" else "",
                                         baseline=f"peak {peak:.0f} MB"))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
