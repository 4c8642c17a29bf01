"""Resolving node paths to array locators with one query, for the server's fast path.

Tiled needs several ORM round trips per node (the node, its data sources,
their assets); for the nodes sweepcat writes one join answers everything a
read needs. SQLite gets a read-only connection per thread; PostgreSQL an
asyncpg pool in the server's event loop.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Callable

import anyio

from ..contract import locator_of_source
from ..errors import SourceInvalid
from .schema import MIMETYPE, CatalogURI


@dataclass(frozen=True)
class ArrayRow:
    """What a read of one sweepcat array node needs."""

    path: str  # absolute, normal
    dataset: str
    index: int | None
    structure: dict[str, Any]


def _lookup_sql(depth: int, placeholder: Callable[[int], str]) -> str:
    joins = " ".join(f"JOIN nodes n{i} ON n{i}.parent = n{i - 1}.id AND n{i}.key = {placeholder(i)}"
                     for i in range(2, depth + 1))
    return (f"SELECT ds.mimetype, ds.parameters, st.structure, a.data_uri FROM nodes n1 {joins} "
            f"JOIN data_sources ds ON ds.node_id = n{depth}.id "
            "JOIN structures st ON st.id = ds.structure_id "
            "JOIN data_source_asset_association x ON x.data_source_id = ds.id AND x.parameter = 'data_uri' "
            f"JOIN assets a ON a.id = x.asset_id WHERE n1.parent = 0 AND n1.key = {placeholder(1)} LIMIT 2")


def array_row(rows: list[tuple]) -> ArrayRow | None:
    """The locator of a sweepcat array node, or None when the node is anything else, or anything odd, in
    which case Tiled answers (through the adapter, which refuses odd sources by name)."""
    if len(rows) != 1:
        return None
    mimetype, parameters, structure, data_uri = rows[0]
    if mimetype != MIMETYPE:
        return None
    p = json.loads(parameters) if isinstance(parameters, str) else parameters
    try:
        loc = locator_of_source(p, str(data_uri), "node")
    except SourceInvalid:
        return None
    if loc.file != os.path.normpath(loc.file):  # '//x', '/a/../x': Tiled judges such paths first
        return None
    structure = json.loads(structure) if isinstance(structure, str) else structure
    return ArrayRow(loc.file, loc.dataset, loc.index, structure)


class NodeLookup:
    """Node paths -> locators with one query each."""

    def __init__(self, cat: CatalogURI):
        self.cat = cat
        self._local = threading.local()
        self._pool: Any = None

    def _sqlite(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.cat.sqlite_path}?mode=ro", uri=True, check_same_thread=False)
            self._local.con = con
        return con

    def lookup_sync(self, segments: list[str]) -> ArrayRow | None:
        """SQLite only: the lookup in the calling (worker) thread."""
        return array_row(self._sqlite().execute(_lookup_sql(len(segments), lambda i: f"?{i}"), segments).fetchall())

    async def lookup(self, segments: list[str]) -> ArrayRow | None:
        if self.cat.dialect == "sqlite":
            return await anyio.to_thread.run_sync(self.lookup_sync, segments)
        if self._pool is None:
            import asyncpg

            self._pool = await asyncpg.create_pool(self.cat.asyncpg_dsn, min_size=1, max_size=4)
        async with self._pool.acquire() as con:
            rows = [tuple(r) for r in await con.fetch(_lookup_sql(len(segments), lambda i: f"${i}"), *segments)]
        return array_row(rows)
