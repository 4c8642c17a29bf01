"""Finding Hamiltonians by their parameters and loading their arrays: numpy, pandas, xarray, PyTorch.

    import sweepcat.client
    cat = sweepcat.client.open("http://127.0.0.1:8000", api_key="...")   # or a catalog file
    ds = cat["NiPS3_batched"]
    res = ds.find("tenDq > 1 and F2_dd < 3")        # or ds.find(tenDq=(1, None), F2_dd=(None, 3))
    len(res), res.keys()[:5], res.params, res.locators
    res.read("rixs")                  # (n, 151, 40) through the batch route (Mode B)
    res.read("rixs", mode="direct")   # the same, read here from the files the locators name (Mode A)
    res[:1000], res.head(5), res.sample(100, seed=0), res.sort_by("tenDq"), res.split([0.8, 0.2], seed=0)
    res.to_xarray("rixs"); res.to_torch("rixs", target=["tenDq"]).loader(batch_size=256, shuffle=True)
"""

from __future__ import annotations

import html
from contextlib import nullcontext
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from .. import query as q
from ..errors import DatasetChanged, SweepcatError
from ..h5read import Stack
from .backends import HttpBackend, LocalBackend, backend_for, local_opener, read_in_parts
from .progress import ReadProgress

Backend = HttpBackend | LocalBackend


def open(target: str, api_key: str | None = None) -> "Catalog":  # noqa: A001 - the natural name here
    """A sweepcat server URL (``http://...``), or a catalog (SQLite file, ``postgresql://...``) read directly."""
    return Catalog(backend_for(str(target), api_key))


def _table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class Catalog:
    def __init__(self, backend: Backend):
        self.backend = backend

    @cached_property
    def _datasets(self) -> dict[str, dict[str, Any]]:
        return {d["key"]: d for d in self.backend.datasets()}

    def keys(self) -> list[str]:
        return list(self._datasets)

    def __iter__(self) -> Any:
        return iter(self._datasets)

    def __len__(self) -> int:
        return len(self._datasets)

    def __getitem__(self, key: str) -> "Dataset":
        if key not in self._datasets:
            self.__dict__.pop("_datasets", None)  # maybe ingested since: look again
            if key not in self._datasets:
                raise KeyError(f"no dataset {key!r} at {self.backend.where}; datasets: {', '.join(self._datasets)}")
        return Dataset(self.backend, self._datasets[key])

    def explore(self, dataset: str | None = None, open_browser: bool = False) -> Any:
        """The explorer page of this catalog's server (``/sweepcat/``): its address printed and returned
        (opened with ``open_browser=True``), never with the API key; for a catalog file, how to serve it."""
        from .plot import explore

        return explore(self.backend, dataset, open_browser=open_browser)

    def __repr__(self) -> str:
        lines = [f"<sweepcat catalog {self.backend.where}: {len(self)} dataset(s)>"]
        lines += [f"  {k}: {d.get('hamiltonians')} Hamiltonians, artifacts {', '.join(d.get('artifacts', {}))}"
                  for k, d in self._datasets.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = [(k, d.get("label"), d.get("hamiltonians"), ", ".join(d.get("artifacts", {})),
                 ", ".join(d.get("parameters", {}))) for k, d in self._datasets.items()]
        return _table_html(("dataset", "label", "Hamiltonians", "artifacts", "parameters"), rows,
                           f"sweepcat catalog at {self.backend.where}")


class Dataset:
    def __init__(self, backend: Backend, info: dict[str, Any]):
        self.backend = backend
        self.info = info
        self.key = info["key"]

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.info.get("parameters", {})

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        return self.info.get("artifacts", {})

    def find(self, query: str | None = None, **conditions: Any) -> "Result":
        """Hamiltonians matching ``query`` (text) and/or keyword conditions:
        ``value`` equality, ``[a, b]`` membership, ``(low, high)`` inclusive range (None: open)."""
        parts = [p for p in (query, q.from_keywords(**conditions) if conditions else None) if p]
        text = " and ".join(f"({p})" for p in parts) if len(parts) > 1 else (parts[0] if parts else None)
        if text:
            q.parse(text)  # syntax errors here, before a request; names are checked by the server
        return Result(self, text)

    def all(self) -> "Result":
        return Result(self, None)

    def plot_params(self, names: Sequence[str], query: str | None = None, bins: int = 40, **kwargs: Any) -> Any:
        """Histograms of ``names`` and the 2-D density of each pair, over every Hamiltonian or those matching
        ``query`` (a matplotlib Figure; ``pip install 'sweepcat[plot]'``). kwargs: figsize."""
        from .plot import plot_params

        return plot_params(self, names, query=query, bins=bins, **kwargs)

    def __len__(self) -> int:
        return len(self.all())

    def __repr__(self) -> str:
        ranges = ", ".join(f"{k} [{v.get('min'):.4g}, {v.get('max'):.4g}]" for k, v in self.parameters.items()
                           if isinstance(v.get("min"), (int, float)))
        arts = ", ".join(f"{t}{tuple(a.get('shape', ()))}" for t, a in self.artifacts.items())
        return (f"<sweepcat dataset {self.key!r}: {self.info.get('hamiltonians')} Hamiltonians; "
                f"artifacts {arts}; parameters {ranges}>")

    def _repr_html_(self) -> str:
        rows = [(k, v.get("dtype"), v.get("min"), v.get("max")) for k, v in self.parameters.items()]
        rows += [(f"artifact {t}", a.get("dtype"), str(a.get("shape")), str(a.get("axes"))) for t, a in
                 self.artifacts.items()]
        return _table_html(("name", "dtype", "min / shape", "max / axes"), rows,
                           f"{self.key}: {self.info.get('hamiltonians')} Hamiltonians")


class Result:
    """The Hamiltonians of a dataset that match a query, as found on one version of the dataset.

    The first request (``len``, ``keys``, ...) fixes the version; every later request is checked
    against it, so a page never mixes rows of two versions. When the dataset changes, requests
    raise ``DatasetChanged``; ``refresh()`` runs the query again on the current version.

    A result can be cut without reading any data: ``res[:1000]``, ``res.head(n)``,
    ``res.sample(n, seed=0)``, ``res.sort_by("tenDq")``, ``res.split([0.8, 0.1, 0.1], seed=0)``. A cut
    is read on the version its parent was found on, and gives the same rows over HTTP and from a
    catalog file.
    """

    PAGE = 10_000  # keys per search request (the server's page limit)

    def __init__(self, dataset: Dataset, query: str | None, cuts: tuple[q.Cut, ...] = (),
                 version: int | None = None):
        self.dataset = dataset
        self.query = query
        self.cuts = cuts
        self.backend = dataset.backend
        self._pinned = version  # a cut is read on the version of the result it was cut from

    @property
    def _cuts(self) -> str | None:
        return q.cuts_text(self.cuts)

    @cached_property
    def _first(self) -> dict[str, Any]:
        return self.backend.search(self.dataset.key, self.query, 0, 20, self._pinned, self._cuts)

    @property
    def version(self) -> int | None:
        """The dataset version this result was computed on."""
        return self._first.get("version")

    def refresh(self) -> "Result":
        """The same query and cuts, run again on the dataset as it is now."""
        return Result(self.dataset, self.query, self.cuts)

    def __len__(self) -> int:
        return int(self._first["count"])

    # ---- cuts: no data read

    def _cut(self, *cuts: q.Cut) -> "Result":
        return Result(self.dataset, self.query, self.cuts + cuts, self.version)

    def __getitem__(self, item: slice) -> "Result":
        """``res[:1000]``, ``res[-10:]``, ``res[::2]``: a slice of the matches, in their order."""
        if not isinstance(item, slice):
            raise TypeError(f"a Result is cut with slices (res[{item!r}:{item!r} + 1]); its keys are "
                            f"res.keys(), its parameters res.params")
        for bound in (item.start, item.stop, item.step):
            if bound is not None and not isinstance(bound, (int, np.integer)):
                raise TypeError(f"slice bounds must be integers, not {bound!r}")
        if item.step == 0:
            raise ValueError("slice step cannot be zero")
        return self._cut(q.Cut("slice", tuple(None if b is None else int(b)
                                              for b in (item.start, item.stop, item.step))))

    def head(self, n: int = 5) -> "Result":
        """The first ``n`` matches."""
        return self[:n]

    def shuffle(self, seed: int | None = None) -> "Result":
        """The matches in a random order (the seed is kept: ``repr`` shows it, so the order can be had again)."""
        return self._cut(q.Cut("shuffle", (_seed(seed),)))

    def sample(self, n: int, seed: int | None = None) -> "Result":
        """``n`` matches drawn without replacement, in random order (as pandas' ``sample``)."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"sample size must be an integer >= 0, not {n!r}")
        if n > len(self):
            raise SweepcatError(f"cannot sample {n:,} of {len(self):,} matches", "ask for at most len(res)")
        return self._cut(q.Cut("shuffle", (_seed(seed),)), q.Cut("slice", (0, int(n), None)))

    def sort_by(self, name: str, ascending: bool = True) -> "Result":
        """The matches ordered by a parameter (or ``key``); stable, missing values last."""
        known = ["key", *self.dataset.parameters]
        if name not in known:
            raise SweepcatError(f"cannot sort by {name!r}: {self.dataset.key} has no such parameter",
                                f"parameters: {', '.join(known)}")
        return self._cut(q.Cut("sort", (name if ascending else f"-{name}",)))

    def split(self, fractions: Sequence[float], seed: int | None = None) -> list["Result"]:
        """Disjoint random parts of the matches, e.g. ``train, val, test = res.split([0.8, 0.1, 0.1], seed=0)``.

        Part sizes are ``floor`` of the cumulative fractions times ``len(res)``; fractions summing to 1
        cover every match."""
        fr = np.asarray(list(fractions), dtype=float)
        if not len(fr) or (fr <= 0).any() or not np.isfinite(fr).all() or fr.sum() > 1 + 1e-9:
            raise ValueError(f"split fractions must be positive and sum to at most 1, not {list(fractions)}")
        n = len(self)
        bounds = np.floor(np.cumsum(fr) * n + 1e-9).astype(int)
        if abs(fr.sum() - 1) <= 1e-9:
            bounds[-1] = n
        shuffled = q.Cut("shuffle", (_seed(seed),))
        return [self._cut(shuffled, q.Cut("slice", (int(a), int(b), None)))
                for a, b in zip(np.r_[0, bounds[:-1]], bounds, strict=True)]

    # ---- answers

    def keys(self) -> list[str]:
        """Every matching key, in pages of ``PAGE``, all from the one version."""
        keys: list[str] = []
        for offset in range(0, len(self), self.PAGE):
            keys += self.backend.search(self.dataset.key, self.query, offset, self.PAGE, self.version,
                                        self._cuts)["keys"]
        return keys

    @property
    def params(self) -> Any:
        """A pandas DataFrame of the matches' parameters, indexed by key (one request)."""
        return self.backend.params(self.dataset.key, self.query, version=self.version,
                                   cuts=self._cuts).to_pandas().set_index("key")

    @property
    def locators(self) -> Any:
        """A DataFrame: key, huid, type, absolute file, dataset, index and the one-string URL (one request)."""
        return self.backend.locators(self.dataset.key, self.query, None, self.version, self._cuts).to_pandas()

    def facets(self, param: str, bins: int = 20) -> dict[str, Any]:
        return self.backend.facets(self.dataset.key, self.query, param, bins, self._cuts)

    def _type(self, type_: str) -> tuple[tuple[int, ...], np.dtype]:
        art = self.dataset.artifacts.get(type_)
        if art is None:
            raise SweepcatError(f"{self.dataset.key} has no artifact type {type_!r}",
                                f"types: {', '.join(self.dataset.artifacts)}")
        return tuple(art["shape"]), np.dtype(art["dtype"])

    def stack(self, type_: str) -> Stack:
        """Where each match's ``type_`` array lives, in order (for reading them here: Mode A)."""
        shape, dtype = self._type(type_)
        return self.backend.stack(self.dataset.key, self.query, type_, shape, dtype, len(self), self.version,
                                  self._cuts)

    def read(self, type_: str, mode: str = "server", on_change: str = "error", progress: bool = True) -> np.ndarray:
        """Stacked ``(n, *shape)`` array. mode="server": the batch route (Mode B); "direct": the files read
        here from the locators (Mode A).

        Every row is one of this result's and was read, or the read fails. If the dataset changes
        during the read: on_change="error" raises ``DatasetChanged``; "refresh" runs the query again
        (this result then holds the new matches) and reads once more. A read that takes over a second
        shows a progress bar (``progress=False``: none)."""
        if on_change not in ("error", "refresh"):
            raise SweepcatError(f"on_change {on_change!r} is unknown", "use on_change='error' or 'refresh'")
        if mode not in ("server", "direct"):
            raise SweepcatError(f"mode {mode!r} is unknown", "use mode='server' or mode='direct'")
        shape, dtype = self._type(type_)
        for attempt in range(3):
            try:
                return self._read(type_, mode, shape, dtype, progress)
            except DatasetChanged:
                if on_change == "error" or attempt == 2:
                    raise
                self.__dict__.pop("_first", None)  # re-resolve on the dataset as it is now
                self._pinned = None
        raise AssertionError("unreachable")

    def _read(self, type_: str, mode: str, shape: tuple[int, ...], dtype: np.dtype, progress: bool) -> np.ndarray:
        total = len(self)
        with ReadProgress(total, f"{self.dataset.key}/{type_}") if progress else nullcontext() as shown:
            if mode == "server":
                return self.backend.read(self.dataset.key, self.query, type_, shape, dtype, total, self.version,
                                         shown, self._cuts)
            stack = self.backend.stack(self.dataset.key, self.query, type_, shape, dtype, total, self.version,
                                       self._cuts)
            return read_in_parts(stack, local_opener(self.dataset.info.get("root")), shown)

    def to_xarray(self, type_: str, mode: str = "server") -> Any:
        """A DataArray: dims ("hamiltonian", *shared axes), the parameters as coordinates along "hamiltonian"."""
        import xarray as xr

        data = self.read(type_, mode=mode)
        axes = self.dataset.artifacts[type_].get("axes") or [None] * (data.ndim - 1)
        dims = ["hamiltonian"] + [a or f"{type_}_dim{i}" for i, a in enumerate(axes)]
        coords: dict[str, Any] = {}
        for a in axes:
            if a:
                coords[a] = self.backend.axis(self.dataset.key, a, self.dataset.info)
        params = self.params
        coords["key"] = ("hamiltonian", params.index.to_numpy())
        for name in params.columns:
            coords[name] = ("hamiltonian", params[name].to_numpy())
        return xr.DataArray(data, dims=dims, coords=coords, name=type_,
                            attrs={"dataset": self.dataset.key, "query": self.query or "", "cuts": self._cuts or ""})

    def to_torch(self, type_: str, target: Sequence[str] = (), *, dtype: Any = "float32", transform: Any = None,
                 mode: str = "direct") -> Any:
        """A PyTorch Dataset of ``(array as a ``dtype`` tensor, tensor of the ``target`` parameters)``.

        ``ds.loader(batch_size=256, shuffle=True, num_workers=2)`` gives a DataLoader whose every batch is
        one stacked read (Mode A, ``mode="direct"``) or one request (Mode B, ``mode="server"``).
        ``transform`` is applied to each sample's array tensor."""
        from .torch import SweepDataset

        return SweepDataset(self, type_, list(target), dtype=dtype, transform=transform, mode=mode)

    def plot(self, type_: str, n: int = 4, **kwargs: Any) -> Any:
        """The first ``n`` arrays: 2-D ones as heatmaps on their physical axes with colour bars, 1-D ones as
        lines on their axis, the Hamiltonian and its parameters in the titles (a matplotlib Figure;
        ``pip install 'sweepcat[plot]'``). kwargs: params=[...], log=True, ncols, cmap, figsize."""
        from .plot import plot_maps

        return plot_maps(self, type_, n, **kwargs)

    def plot_params(self, names: Sequence[str], bins: int = 40, **kwargs: Any) -> Any:
        """Histograms and 2-D densities of ``names`` over this result (see ``Dataset.plot_params``)."""
        from .plot import plot_params

        return plot_params(self, names, bins=bins, **kwargs)

    def explore(self, open_browser: bool = False) -> Any:
        """The explorer showing this result's dataset and query (cuts such as sort or slices are not carried)."""
        from .plot import explore

        return explore(self.backend, self.dataset.key, self.query, open_browser=open_browser)

    def _described(self) -> str:
        what = self.query or "(everything)"
        return what + "".join(f" {c.describe()}" for c in self.cuts)

    def __repr__(self) -> str:
        return (f"<sweepcat result: {len(self)} of {self.dataset.key} match {self._described()}; "
                f"first keys {self._first['keys'][:3]}>")

    def _repr_html_(self) -> str:
        """The first rows, then small histograms of the selection's parameters (inline SVG)."""
        from .plot import histograms_html

        first = self.backend.params(self.dataset.key, self.query, 0, 10, self.version, self._cuts).to_pylist()
        headers = list(first[0]) if first else ["key"]
        rows = [[r[h] for h in headers] for r in first]
        return _table_html(headers, rows, f"{len(self)} Hamiltonians of {self.dataset.key} match "
                                          f"{self._described()} (first 10)") + histograms_html(self)


def _seed(seed: int | None) -> int:
    """The seed given, or a fresh one (kept in the cut, so the order can be had again)."""
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, not {seed!r}")
    return int(seed)
