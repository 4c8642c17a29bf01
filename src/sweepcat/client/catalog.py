"""Finding Hamiltonians by their parameters and loading their arrays: numpy, pandas, xarray, PyTorch.

    import sweepcat.client
    cat = sweepcat.client.open("http://127.0.0.1:8000", api_key="...")   # or a catalog file
    ds = cat["NiPS3_batched"]
    res = ds.find("tenDq > 1 and F2_dd < 3")        # or ds.find(tenDq=(1, None), F2_dd=(None, 3))
    len(res), res.keys()[:5], res.params, res.locators
    res.read("rixs")                  # (n, 151, 40) through the batch route (Mode B)
    res.read("rixs", mode="direct")   # the same, read locally with h5py from the locators (Mode A)
    res.to_xarray("rixs"); res.to_torch("rixs", target=["tenDq"])
"""

from __future__ import annotations

import html
from functools import cached_property
from typing import Any, Sequence

import numpy as np

from .. import query as q
from ..errors import DatasetChanged, SweepcatError
from ..h5read import Stack, read_stacked
from .backends import HttpBackend, LocalBackend, backend_for, local_opener

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
    """

    PAGE = 10_000  # keys per search request (the server's page limit)

    def __init__(self, dataset: Dataset, query: str | None):
        self.dataset = dataset
        self.query = query
        self.backend = dataset.backend

    @cached_property
    def _first(self) -> dict[str, Any]:
        return self.backend.search(self.dataset.key, self.query, 0, 20)

    @property
    def version(self) -> int | None:
        """The dataset version this result was computed on."""
        return self._first.get("version")

    def refresh(self) -> "Result":
        """The same query, run again on the dataset as it is now."""
        return Result(self.dataset, self.query)

    def __len__(self) -> int:
        return int(self._first["count"])

    def keys(self) -> list[str]:
        """Every matching key, in pages of ``PAGE``, all from the one version."""
        keys: list[str] = []
        for offset in range(0, len(self), self.PAGE):
            keys += self.backend.search(self.dataset.key, self.query, offset, self.PAGE, self.version)["keys"]
        return keys

    @property
    def params(self) -> Any:
        """A pandas DataFrame of the matches' parameters, indexed by key (one request)."""
        return self.backend.params(self.dataset.key, self.query, version=self.version).to_pandas().set_index("key")

    @property
    def locators(self) -> Any:
        """A DataFrame: key, huid, type, absolute file, dataset, index and the one-string URL (one request)."""
        return self.backend.locators(self.dataset.key, self.query, None, self.version).to_pandas()

    def facets(self, param: str, bins: int = 20) -> dict[str, Any]:
        return self.backend.facets(self.dataset.key, self.query, param, bins)

    def _type(self, type_: str) -> tuple[tuple[int, ...], np.dtype]:
        art = self.dataset.artifacts.get(type_)
        if art is None:
            raise SweepcatError(f"{self.dataset.key} has no artifact type {type_!r}",
                                f"types: {', '.join(self.dataset.artifacts)}")
        return tuple(art["shape"]), np.dtype(art["dtype"])

    def read(self, type_: str, mode: str = "server", on_change: str = "error") -> np.ndarray:
        """Stacked ``(n, *shape)`` array. mode="server": the batch route (Mode B); "direct": h5py (Mode A).

        Every row is one of this result's and was read, or the read fails. If the dataset changes
        during the read: on_change="error" raises ``DatasetChanged``; "refresh" runs the query again
        (this result then holds the new matches) and reads once more."""
        if on_change not in ("error", "refresh"):
            raise SweepcatError(f"on_change {on_change!r} is unknown", "use on_change='error' or 'refresh'")
        shape, dtype = self._type(type_)
        for attempt in range(3):
            try:
                return self._read(type_, mode, shape, dtype)
            except DatasetChanged:
                if on_change == "error" or attempt == 2:
                    raise
                self.__dict__.pop("_first", None)  # re-resolve on the dataset as it is now
        raise AssertionError("unreachable")

    def _read(self, type_: str, mode: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if mode == "server":
            return self.backend.read(self.dataset.key, self.query, type_, shape, dtype, len(self), self.version)
        if mode != "direct":
            raise SweepcatError(f"mode {mode!r} is unknown", "use mode='server' or mode='direct'")
        loc = self.backend.locators(self.dataset.key, self.query, type_, self.version)
        if loc.num_rows != len(self):  # the version is pinned: these rows lack the artifact
            raise SweepcatError(f"{self.dataset.key}: only {loc.num_rows} of the {len(self)} matches have a "
                                f"{type_!r} artifact", f"narrow the query to Hamiltonians that have {type_!r}")
        files = loc.column("file").to_numpy(zero_copy_only=False)
        paths, file_idx = np.unique(files, return_inverse=True)
        indices = loc.column("index").to_numpy(zero_copy_only=False)
        indices = np.where(np.isnan(indices.astype("float64")), -1, indices).astype(np.int64) \
            if indices.dtype.kind == "f" else indices.astype(np.int64)
        stack = Stack(paths.tolist(), file_idx, loc.column("dataset").to_numpy(zero_copy_only=False), indices,
                      shape, dtype)
        return read_stacked(stack, local_opener(self.dataset.info.get("root")))

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
                            attrs={"dataset": self.dataset.key, "query": self.query or ""})

    def to_torch(self, type_: str, target: Sequence[str] = (), mode: str = "direct") -> Any:
        from .torch import SweepDataset

        return SweepDataset(self, type_, list(target), mode)

    def __repr__(self) -> str:
        return (f"<sweepcat result: {len(self)} of {self.dataset.key} match "
                f"{self.query or '(everything)'}; first keys {self._first['keys'][:3]}>")

    def _repr_html_(self) -> str:
        first = self.backend.params(self.dataset.key, self.query, 0, 10, self.version).to_pylist()
        headers = list(first[0]) if first else ["key"]
        rows = [[r[h] for h in headers] for r in first]
        return _table_html(headers, rows, f"{len(self)} Hamiltonians of {self.dataset.key} match "
                                          f"{self.query or '(everything)'} (first 10)")
