"""`sweepcat delete --url`: removing a dataset, a Hamiltonian or an artifact through a server's Tiled API.

A dataset goes with its shared axes (``/_axes/<dataset>``), as `sweepcat delete --catalog` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..contract import RESERVED_KEYS
from ..errors import SweepcatError
from .http import tiled_client


@dataclass
class RemoteDelete:
    url: str
    path: str
    nodes: list[Any]  # Tiled client nodes, deleted in order

    def __str__(self) -> str:
        extra = " and its shared axes" if len(self.nodes) > 1 else ""
        return f"{self.path}{extra} from {self.url}"

    def execute(self) -> None:
        for node in self.nodes:
            node.delete(recursive=True)


def plan_remote_delete(url: str, api_key: str | None, dataset: str, key: str | None = None,
                       type_: str | None = None) -> RemoteDelete:
    client = tiled_client(url, api_key)
    path = "/".join(s for s in (dataset, key, type_) if s)
    try:
        nodes = [client[path]]
    except KeyError:
        raise SweepcatError(f"{path}: no such node at {url}", "check the names (`sweepcat datasets --url ...`)") \
            from None
    if key is None:
        axes = next(iter(RESERVED_KEYS))
        try:
            nodes.append(client[axes][dataset])
        except KeyError:
            pass
    return RemoteDelete(url, path, nodes)
