"""A PyTorch Dataset over a search result (torch is optional: `pip install sweepcat[torch]`).

Works with DataLoader workers: each worker opens its own files (direct mode)
or its own HTTP connection (server mode) on first use.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import SweepcatError
from .backends import local_opener

try:
    import torch
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    _TorchDataset = object


class SweepDataset(_TorchDataset):  # type: ignore[misc]
    """Item i: (array of Hamiltonian i as a tensor, tensor of its ``target`` parameters)."""

    def __init__(self, result: Any, type_: str, target: list[str], mode: str = "direct"):
        if torch is None:
            raise SweepcatError("PyTorch is not installed", "pip install torch (CPU build is enough)")
        if mode not in ("direct", "server"):
            raise SweepcatError(f"mode {mode!r} is unknown", "use mode='direct' (h5py) or mode='server' (HTTP)")
        self.mode = mode
        self.type = type_
        self.dataset_key = result.dataset.key
        self.root = result.dataset.info.get("root")
        self.shape, self.dtype = result._type(type_)
        params = result.params
        unknown = [t for t in target if t not in params.columns]
        if unknown:
            raise SweepcatError(f"unknown target parameter(s) {', '.join(unknown)}",
                                f"parameters: {', '.join(params.columns)}")
        self.keys = params.index.to_numpy()
        self.targets = (params[target].to_numpy(dtype=np.float32) if target
                        else np.zeros((len(self.keys), 0), np.float32))
        self._backend_state = result.backend.__getstate__()
        self._backend_class = type(result.backend)
        self._backend: Any = None
        if mode == "direct":
            loc = result.backend.locators(self.dataset_key, result.query, type_).to_pandas().set_index("key")
            loc = loc.loc[self.keys]
            self.files = loc["file"].to_numpy()
            self.datasets = loc["dataset"].to_numpy()
            self.indices = loc["index"].to_numpy()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def _own(self) -> None:
        """A forked DataLoader worker must not use the parent's open files or sockets."""
        if self._pid != os.getpid():
            self._backend, self._pid = None, os.getpid()

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        if self.mode == "direct":
            index = self.indices[i]
            with local_opener(self.root).dataset(str(self.files[i]), str(self.datasets[i])) as ds:
                array = ds[int(index)] if index == index and index is not None else ds[()]
        else:
            self._own()
            if self._backend is None:
                self._backend = self._backend_class.__new__(self._backend_class)
                self._backend.__setstate__(self._backend_state)
            array = self._backend.read_one(self.dataset_key, str(self.keys[i]), self.type, self.shape, self.dtype)
        return torch.from_numpy(np.array(array, copy=True)), torch.from_numpy(self.targets[i].copy())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backend"] = None
        return state
