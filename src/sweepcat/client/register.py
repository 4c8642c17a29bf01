"""Registering manifests into a running server: sweepcat's bulk route, or Tiled's stock API.

The bulk route takes thousands of Hamiltonians per request; each request is
one transaction on the server, and re-sending one is a no-op, so an
interrupted run resumes by running it again. Against a plain Tiled server the
stock client creates one node per request, from several threads; a re-run
lists the dataset once (with child counts) and finishes exactly the
Hamiltonians an interruption cut short.
"""

from __future__ import annotations

import itertools
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import RESERVED_KEYS, Manifests, asset_uri, encode_batch, file_sha256, validate
from ..errors import ContractError, SweepcatError
from .http import detail_of, raise_for, tiled_client

Progress = Callable[[int, int], None]  # (hamiltonians done, nodes done) increments


@dataclass
class RegisterResult:
    path: str  # "bulk" or "stock"
    dataset: str
    added_hamiltonians: int = 0
    added_artifacts: int = 0
    existing_hamiltonians: int = 0
    updated: int = 0
    pruned: int = 0
    seconds: float = 0.0
    requests: int = 0
    retries: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def nodes_written(self) -> int:
        return self.added_hamiltonians + self.added_artifacts

    def __str__(self) -> str:
        rate = self.nodes_written / self.seconds if self.seconds else 0.0
        text = (f"dataset {self.dataset!r} via the {self.path} path: {self.added_hamiltonians} Hamiltonians and "
                f"{self.added_artifacts} artifacts added, {self.existing_hamiltonians} already present")
        if self.updated:
            text += f", {self.updated} updated"
        if self.pruned:
            text += f", {self.pruned} pruned"
        return text + f" in {self.seconds:.1f} s ({rate:,.0f} nodes/s, {self.requests} requests)"


OnRetry = Callable[[int, float, str], None]  # (attempt number from 1, seconds until the next, what failed)
RETRY_STATUSES = (502, 503, 504)  # a server restarting, behind a proxy, or busy: worth another try


@dataclass
class RetryPolicy:
    """How often and how patiently a request is tried again: exponential backoff with jitter."""

    attempts: int = 8
    first_delay: float = 0.5
    max_delay: float = 10.0

    def delays(self, rng: random.Random) -> list[float]:
        out, delay = [], self.first_delay
        for _ in range(self.attempts - 1):
            out.append(delay * (1 + rng.random() / 2))
            delay = min(delay * 2, self.max_delay)
        return out


class _Http:
    """httpx with the API key and retries (server restarts, brief outages) with backoff."""

    def __init__(self, url: str, api_key: str | None, *, retry: RetryPolicy | None = None, timeout: float = 600.0,
                 on_retry: OnRetry | None = None, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None):
        headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retries = 0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delays = self.retry.delays(self.rng)
        for attempt in range(self.retry.attempts):
            try:
                response = self.client.request(method, f"{self.url}{path}", **kwargs)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                what = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                what = f"HTTP {response.status_code}"
            if attempt == self.retry.attempts - 1:
                raise SweepcatError(f"{self.url} did not answer after {self.retry.attempts} attempts ({what})",
                                    "check that the server runs, then run the same command again: it resumes")
            self.retries += 1
            if self.on_retry is not None:
                self.on_retry(attempt + 1, delays[attempt], what)
            self.sleep(delays[attempt])
        raise AssertionError("unreachable")


def detect_path(http: _Http) -> dict[str, Any] | None:
    """The server's sweepcat info, or None for a plain Tiled server."""
    response = http.request("GET", "/api/v1/sweepcat/info")
    if response.status_code == 404:
        return None
    raise_for(response, "checking the server")
    return response.json()


def _batches(m: Manifests, size: int) -> list[Manifests]:
    """Hamiltonian-aligned slices of the manifests; artifacts follow their Hamiltonian."""
    art_pos = pc.index_in(m.art.column("huid"), value_set=m.ham.column("huid")).to_numpy(zero_copy_only=False)
    order = art_pos.argsort(kind="stable")
    art_sorted = m.art.take(pa.array(order))
    bounds = art_pos[order].searchsorted(list(range(0, m.ham.num_rows + size, size)), side="left")
    out = []
    for k, start in enumerate(range(0, m.ham.num_rows, size)):
        out.append(Manifests(m.ham.slice(start, size), art_sorted.slice(int(bounds[k]), int(bounds[k + 1] - bounds[k])),
                             m.description))
    return out


def register(m: Manifests, url: str, api_key: str | None, *, update: bool = False, prune: bool = False,
             batch_size: int = 5000, workers: int = 8, force_stock: bool = False,
             progress: Progress | None = None, say: Callable[[str], None] = lambda _: None,
             on_retry: OnRetry | None = None) -> RegisterResult:
    t0 = time.perf_counter()
    d = m.description
    # The server's bulk route checks every row; Tiled's stock API checks nothing: check here, before sending.
    problems = validate(m.ham, m.art, root=d.root, check_files_exist=True)
    if problems:
        raise ContractError(problems, subject=f"manifests of dataset {d.key!r}")
    http = _Http(url, api_key, on_retry=on_retry)
    info = None if force_stock else detect_path(http)
    d.provenance = dict(d.provenance)
    d.provenance["manifests"] = {
        "hamiltonians": {"path": str(m.ham_path) if m.ham_path else None, "sha256": file_sha256(m.ham_path)},
        "artifacts": {"path": str(m.art_path) if m.art_path else None, "sha256": file_sha256(m.art_path)},
    }
    if info is not None:
        say(f"server has the sweepcat plug-in ({info['sweepcat']}, {info['catalog']}): bulk path")
        result = _register_bulk(http, m, update=update, prune=prune, batch_size=batch_size, info=info,
                                progress=progress)
    else:
        why = "--stock" if force_stock else "plain Tiled server (no sweepcat plug-in)"
        say(f"{why}: Tiled's stock client API, one node per request")
        result = _register_stock(url, api_key, m, update=update, prune=prune, workers=workers, progress=progress)
    result.retries += http.retries
    result.seconds = time.perf_counter() - t0
    return result


def _register_bulk(http: _Http, m: Manifests, *, update: bool, prune: bool, batch_size: int,
                   info: dict[str, Any], progress: Progress | None) -> RegisterResult:
    result = RegisterResult("bulk", m.description.key)
    rows_per_ham = max(1.0, 1 + m.art.num_rows / max(1, m.ham.num_rows))
    batch_size = max(1, min(batch_size, int(info.get("max_batch_rows", 200_000) / rows_per_ham)))
    for batch in _batches(m, batch_size):
        body = encode_batch(batch)
        response = http.request("POST", "/api/v1/sweepcat/register", params={"update": update}, content=body,
                                headers={"Content-Type": "application/x-sweepcat-batch"})
        result.requests += 1
        raise_for(response, f"registering {m.description.key!r}")
        r = response.json()
        result.added_hamiltonians += r["added_hamiltonians"]
        result.added_artifacts += r["added_artifacts"]
        result.existing_hamiltonians += r["existing_hamiltonians"]
        result.updated += r["updated"]
        if progress:
            progress(batch.ham.num_rows, r["added_hamiltonians"] + r["added_artifacts"])
    if prune:
        response = http.request("POST", f"/api/v1/sweepcat/prune/{m.description.key}",
                                json={"keys": m.ham.column("key").to_pylist()})
        result.requests += 1
        raise_for(response, f"pruning {m.description.key!r}")
        result.pruned = response.json()["pruned"]
    return result


# --------------------------------------------------------------------------- stock Tiled


def _child_counts(url: str, api_key: str | None, dataset: str) -> dict[str, int]:
    """Every Hamiltonian key of a dataset with its number of children, in pages (one request per 300)."""
    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    counts: dict[str, int] = {}
    offset = 0
    with httpx.Client(headers=headers, timeout=120) as http:
        while True:
            r = http.get(f"{url.rstrip('/')}/api/v1/search/{dataset}",
                         params={"page[offset]": offset, "page[limit]": 300, "fields": "structure"})
            raise_for(r, f"listing {dataset!r}")
            data = r.json()["data"]
            for item in data:
                counts[item["id"]] = int((item["attributes"].get("structure") or {}).get("count") or 0)
            if len(data) < 300:
                return counts
            offset += len(data)


def _register_stock(url: str, api_key: str | None, m: Manifests, *, update: bool, prune: bool, workers: int,
                    progress: Progress | None) -> RegisterResult:
    """One request per node through Tiled's client. A Hamiltonian with fewer children than its
    manifest lists (an interrupted run) is completed on the next run."""

    client = tiled_client(url, api_key)
    d = m.description
    result = RegisterResult("stock", d.key)
    made_dataset = d.key not in client
    if made_dataset:
        client.create_container(d.key, metadata={**d.metadata, "sweepcat": {"kind": "dataset", "label": d.label,
                                                                             "root": d.root}})
    ds = client[d.key]
    counts = _child_counts(url, api_key, d.key)
    hams = m.ham.to_pylist()
    arts: dict[str, list[dict]] = {}
    for row in m.art.to_pylist():
        arts.setdefault(row["huid"], []).append(row)
    todo = [h for h in hams if counts.get(h["key"], -1) < len(arts.get(h["huid"], []))]
    result.existing_hamiltonians = sum(1 for h in hams if h["key"] in counts)

    def one(h: dict) -> tuple[int, int]:
        key = h["key"]
        if key in counts:
            node = ds[key]
            have = set(node.keys())
        else:
            node = ds.create_container(key, metadata={k: v for k, v in h.items() if k != "key"})
            have = set()
        n_new = 0
        for a in arts.get(h["huid"], []):
            if a["type"] not in have:
                node.new("array", [_stock_data_source(d.root, a)], key=a["type"], metadata=_extra(a))
                n_new += 1
        return (0 if key in counts else 1), n_new

    def first(h: dict) -> tuple[int, int]:
        """The first Hamiltonian alone: a server that cannot take sweepcat's arrays refuses it, and what was
        made for it is removed again, so a refused run leaves nothing behind."""
        try:
            return one(h)
        except (httpx.HTTPStatusError, RuntimeError, ValueError) as exc:
            response = getattr(exc, "response", None)
            status = f"HTTP {response.status_code}: {detail_of(response)}" if response is not None else str(exc)
            if h["key"] not in counts and h["key"] in ds:
                ds[h["key"]].delete(recursive=True)
            if made_dataset and not len(ds):
                client[d.key].delete(recursive=True)
            raise SweepcatError(
                f"{url} refused sweepcat's first array node ({status}); nothing was left behind",
                "the server needs sweepcat's adapter for application/x-sliced-hdf5 and the dataset root in its "
                "readable_storage: serve with `sweepcat serve`, or run `tiled serve config` on the output of "
                "`sweepcat config`") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # first(...) runs before pool.map submits the rest (arguments are evaluated left to right)
        for new_ham, new_arts in itertools.chain([first(todo[0])] if todo else [], pool.map(one, todo[1:])):
            result.added_hamiltonians += new_ham
            result.added_artifacts += new_arts
            result.requests += new_ham + new_arts
            if progress:
                progress(1, new_ham + new_arts)
    if update:
        for h in hams:
            if h["key"] in counts:
                metadata = {k: v for k, v in h.items() if k != "key"}
                if dict(ds[h["key"]].metadata) != metadata:
                    ds[h["key"]].replace_metadata(metadata)
                    result.updated += 1
    if prune:
        keep = set(m.ham.column("key").to_pylist())
        for key in [k for k in counts if k not in keep and k not in RESERVED_KEYS]:
            ds[key].delete(recursive=True)
            result.pruned += 1
    return result


def _extra(a: dict) -> dict:
    from ..contract import ART_STANDARD

    return {k: v for k, v in a.items() if k not in ART_STANDARD}


def _stock_data_source(root: str, a: dict) -> Any:
    from pathlib import Path

    import numpy as np
    from tiled.structures.array import ArrayStructure, BuiltinDtype
    from tiled.structures.data_source import Asset, DataSource, Management

    shape = tuple(int(s) for s in a["shape"])
    axes = a.get("axes")
    dims = tuple(axes) if axes and all(axes) and len(axes) == len(shape) else None
    structure = ArrayStructure(data_type=BuiltinDtype.from_numpy_dtype(np.dtype(a["dtype"])), shape=shape,
                               chunks=tuple((s,) for s in shape), dims=dims)
    params = {"dataset": a["dataset"]}
    if a.get("index") is not None:
        params["index"] = int(a["index"])
    return DataSource(management=Management.external, mimetype="application/x-sliced-hdf5",
                      structure_family="array", structure=structure, parameters=params,
                      assets=[Asset(data_uri=asset_uri(Path(root) / a["file"]), is_directory=False,
                                    parameter="data_uri")])
