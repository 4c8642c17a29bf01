"""A PyTorch Dataset over a search result (torch is optional: `pip install sweepcat[torch]`).

    train, val = ds.find("tenDq > 3").split([0.9, 0.1], seed=0)
    data = train.to_torch("rixs", target=["tenDq"])          # float32 tensors by default
    for x, y in data.loader(batch_size=256, shuffle=True, num_workers=2):
        ...                                                   # x: (256, 151, 40) float32, y: (256, 1)

Each batch is one stacked read: Mode A (``mode="direct"``) reads the files
here by positional reads (h5read), Mode B (``mode="server"``) asks the
server once per batch. A DataLoader built by hand (``DataLoader(data,
batch_size=256)``) gets the same through ``__getitems__``. Works with
``num_workers > 0``: each worker opens its own files or HTTP connection on
first use.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

from .. import query as q
from ..errors import SweepcatError
from ..h5open import FileCache, FileRule
from ..h5read import read_stacked

try:
    import torch
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    _TorchDataset = object

OPEN_FILES = 64  # files a Mode A dataset keeps open per process (closed by close() or at exit)


def _torch_dtype(dtype: Any) -> Any:
    """A torch dtype from a torch dtype or a name ("float32", "float16", ...); None keeps the stored dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype), None)
    if not isinstance(found, torch.dtype):
        raise SweepcatError(f"dtype {dtype!r} is not a torch dtype", "use e.g. torch.float32 or 'float32'")
    return found


class SweepDataset(_TorchDataset):  # type: ignore[misc]
    """Item i: (array of Hamiltonian i as a ``dtype`` tensor, ``float32`` tensor of its ``target`` parameters).

    Item ``[i, j, ...]`` (a list of positions): the whole batch as two stacked tensors, read at once."""

    def __init__(self, result: Any, type_: str, target: list[str], *, dtype: Any = "float32",
                 transform: Callable[[Any], Any] | None = None, mode: str = "direct"):
        if torch is None:
            raise SweepcatError("PyTorch is not installed", "pip install torch (CPU build is enough)")
        if mode not in ("direct", "server"):
            raise SweepcatError(f"mode {mode!r} is unknown", "use mode='direct' (files read here) or "
                                "mode='server' (HTTP)")
        self.mode = mode
        self.type = type_
        self.dtype = _torch_dtype(dtype)
        self.transform = transform
        self.dataset_key = result.dataset.key
        self.query = result.query
        self.cuts = q.cuts_text(result.cuts)
        self.root = result.dataset.info.get("root")
        self.shape, self.stored_dtype = result._type(type_)
        self.version = result.version
        params = result.params
        unknown = [t for t in target if t not in params.columns]
        if unknown:
            raise SweepcatError(f"unknown target parameter(s) {', '.join(unknown)}",
                                f"parameters: {', '.join(params.columns)}")
        self.target = target
        self.keys = params.index.to_numpy()
        self.targets = (params[target].to_numpy(dtype=np.float32) if target
                        else np.zeros((len(self.keys), 0), np.float32))
        self._backend_state = result.backend.__getstate__()
        self._backend_class = type(result.backend)
        self._backend: Any = None
        self.stack = result.stack(type_) if mode == "direct" else None
        self._files: tuple[int, Any] | None = None  # (pid, opener over a FileCache)

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        to = f" -> {str(self.dtype).replace('torch.', '')}" if self.dtype is not None else ""
        cuts = f"; {self.cuts}" if self.cuts else ""
        transform = f", transform {getattr(self.transform, '__name__', repr(self.transform))}" \
            if self.transform is not None else ""
        return (f"<sweepcat SweepDataset: {len(self):,} {self.type!r} arrays {tuple(self.shape)} "
                f"{self.stored_dtype}{to} of {self.dataset_key} ({self.query or 'everything'}{cuts}), "
                f"target {self.target or 'none'}, mode {self.mode!r}{transform}>")

    # ---- reading one batch

    def _opener(self) -> Any:
        """This process's open files (a DataLoader worker opens its own)."""
        if self._files is None or self._files[0] != os.getpid():
            self._files = (os.getpid(), FileCache(OPEN_FILES).opener(FileRule.under(self.root or "/",
                                                                                     what="the dataset root")))
        return self._files[1]

    def _http(self) -> Any:
        if self._backend is None or self._backend[0] != os.getpid():
            backend = self._backend_class.__new__(self._backend_class)
            backend.__setstate__(self._backend_state)
            self._backend = (os.getpid(), backend)
        return self._backend[1]

    def _arrays(self, positions: np.ndarray) -> np.ndarray:
        if self.mode == "direct":
            return read_stacked(self.stack.take(positions), self._opener())
        out = np.empty((len(positions), *self.shape), dtype=self.stored_dtype)
        per = q.MAX_TAKE
        for start in range(0, len(positions), per):
            part = positions[start:start + per]
            cuts = ";".join(c for c in (self.cuts, q.Cut("take", tuple(part.tolist())).text()) if c)
            self._http().read(self.dataset_key, self.query, self.type, self.shape, self.stored_dtype, len(part),
                              self.version, None, cuts, out=out[start:start + len(part)])
        return out

    def batch(self, positions: Sequence[int] | np.ndarray) -> tuple[Any, Any]:
        """Two tensors for the rows at ``positions``: ``(len, *shape)`` arrays and ``(len, n_targets)``."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.max() >= len(self) or positions.min() < -len(self)):
            raise IndexError(f"positions past the dataset's {len(self)} rows")
        x = torch.from_numpy(self._arrays(positions))
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.transform is not None:
            x = torch.stack([self.transform(s) for s in x])
        return x, torch.from_numpy(self.targets[positions])

    def __getitem__(self, i: Any) -> tuple[Any, Any]:
        if isinstance(i, (list, tuple, np.ndarray)) or (torch.is_tensor(i) and i.ndim == 1):
            return self.batch(np.asarray(i))
        x, y = self.batch([int(i)])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        """What torch's DataLoader asks for one batch: one stacked read, split into samples."""
        x, y = self.batch(indices)
        return list(zip(x, y, strict=True))

    def loader(self, batch_size: int = 256, shuffle: bool = False, num_workers: int = 0, drop_last: bool = False,
               seed: int | None = None, **kwargs: Any) -> Any:
        """A DataLoader whose every batch is one read: ``(x, y)`` stacked tensors. ``shuffle`` draws a new
        order each epoch (from ``seed`` when given); other arguments go to the DataLoader."""
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        order = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        kwargs.setdefault("persistent_workers", num_workers > 0)
        return DataLoader(self, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last),
                          num_workers=num_workers, **kwargs)

    def close(self) -> None:
        """Close the files this process holds open (Mode A)."""
        if self._files is not None and self._files[0] == os.getpid():
            self._files[1].cache.clear()
        self._files = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backend"] = None
        state["_files"] = None
        return state
