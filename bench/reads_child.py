"""One client's measurements for bench_reads, in a process of its own (so an older sweepcat's client can be
measured by the same code: PYTHONPATH=<older src>).

    python -m bench.reads_child '{"what": "reads", "url": ..., "dataset": ..., ...}'

Prints one JSON object of sample lists (seconds). Every figure is timed the way a user types it, from the
client's root (``cat[ds].find(q).read(...)``, ``c[ds][key]["rixs"].read()``), lookups included.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def reads(args: dict[str, Any]) -> dict[str, Any]:
    import sweepcat.client

    cat = sweepcat.client.open(args["url"], api_key=args["api_key"])
    ds = args["dataset"]
    out: dict[str, Any] = {}
    # the first read in a fresh process pays imports and learns each file's chunk index; then warm reads
    out["mode_a_10k_first"] = [_timed(lambda: cat[ds].find(args["q10k"]).read("rixs", mode="direct"))]
    out["mode_a_10k"] = [_timed(lambda: cat[ds].find(args["q10k"]).read("rixs", mode="direct"))
                         for _ in range(args["repeat"])]
    out["mode_b_10k_first"] = [_timed(lambda: cat[ds].find(args["q10k"]).read("rixs"))]
    out["mode_b_10k"] = [_timed(lambda: cat[ds].find(args["q10k"]).read("rixs")) for _ in range(args["repeat"])]
    out["mode_b_1k"] = [_timed(lambda: cat[ds].find(args["q1k"]).read("rixs")) for _ in range(3 * args["repeat"])]
    return out


def stock(args: dict[str, Any]) -> dict[str, Any]:
    """Tiled's own client from its root: four requests per map (three lookups, one read)."""
    t0 = time.perf_counter()
    import tiled.client.array  # noqa: F401 - Tiled's client imports it (and dask.array, ~1 s) at the first array
    from tiled.client import from_uri

    imports = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = from_uri(args["url"], api_key=args["api_key"])
    connect = time.perf_counter() - t0
    ds = args["dataset"]
    samples = [_timed(lambda k=key: c[ds][k]["rixs"].read()) for key in args["keys"]]
    return {"imports": imports, "connect": connect, "first": samples[0], "samples": samples[1:]}


def epochs(args: dict[str, Any]) -> dict[str, Any]:
    import sweepcat.client

    res = sweepcat.client.open(args["url"], api_key=args["api_key"])[args["dataset"]].find(args["q10k"])
    out: dict[str, Any] = {}
    for mode in ("direct", "server"):
        t0 = time.perf_counter()
        try:
            data = res.to_torch("rixs", target=["tenDq"], mode=mode)
            loader = data.loader(batch_size=256, shuffle=True, num_workers=2, seed=0)
        except (AttributeError, TypeError):  # an older client: torch's DataLoader over single samples
            from torch.utils.data import DataLoader

            data = res.to_torch("rixs", target=["tenDq"], mode=mode)
            loader = DataLoader(data, batch_size=256, shuffle=True, num_workers=2, persistent_workers=True)
        setup = time.perf_counter() - t0
        times = []
        dtype = None
        for _ in range(args["epochs"]):
            t0 = time.perf_counter()
            n = 0
            for x, _y in loader:
                n += len(x)
                dtype = str(x.dtype)
            times.append(time.perf_counter() - t0)
            assert n == len(res), (n, len(res))
        out[mode] = {"setup": setup, "epochs": times, "dtype": dtype}
    return out


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    print(json.dumps({"reads": reads, "stock": stock, "epochs": epochs}[spec["what"]](spec)))
