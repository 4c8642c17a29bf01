"""Access policies for tests (importable by a Tiled config: ``tests.support.policies:NAME``).

Each decides by node key, the way a facility's policy would decide by owner or proposal.
"""

from __future__ import annotations

from typing import Any

from tiled.access_control.protocols import AccessPolicy
from tiled.access_control.scopes import ALL_SCOPES
from tiled.queries import KeysFilter


def _key(node: Any) -> str | None:
    return getattr(getattr(node, "node", None), "key", None)


class _Base(AccessPolicy):
    def __init__(self, dataset: str = "sweep", visible_key: str | None = None):
        self.dataset = dataset
        self.visible_key = visible_key

    async def init_node(self, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                        access_tags: Any = None) -> tuple[bool, Any]:
        return False, frozenset(access_tags or ())

    async def allowed_scopes(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any) -> Any:
        return ALL_SCOPES


class WholeDatasetPolicy(_Base):
    """Everything visible to everyone: the sweepcat routes serve as without a policy."""

    async def filters(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                      scopes: Any) -> list:
        return []


class PartialPolicy(_Base):
    """Inside the dataset, only ``visible_key`` is visible: the bulk routes must refuse, Tiled's own
    routes serve that one Hamiltonian only."""

    async def filters(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                      scopes: Any) -> list:
        return [KeysFilter(keys=[self.visible_key])] if _key(node) == self.dataset else []


class HiddenPolicy(_Base):
    """The dataset does not exist for anyone: every route answers as if it were not there."""

    async def filters(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                      scopes: Any) -> list:
        node_ = getattr(node, "node", None)
        if node_ is not None and getattr(node_, "parent", 0) is None:  # the root: list every other dataset
            return [KeysFilter(keys=["--nothing-but-this--"])]
        return []


class OnlyRixsPolicy(_Base):
    """Inside every Hamiltonian only the `rixs` artifact is visible: a decision below the dataset node."""

    async def filters(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                      scopes: Any) -> list:
        key = _key(node)
        return [KeysFilter(keys=["rixs"])] if key and key.startswith("H_") else []


class NoDataPolicy(_Base):
    """Everything visible, but the data of `xps` arrays may not be read (read:data withheld on them)."""

    async def allowed_scopes(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any) -> Any:
        return ALL_SCOPES - {"read:data"} if _key(node) == "xps" else ALL_SCOPES

    async def filters(self, node: Any, principal: Any, authn_access_tags: Any, authn_scopes: Any,
                      scopes: Any) -> list:
        return []
