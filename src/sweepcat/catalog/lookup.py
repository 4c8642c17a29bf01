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
from .params import REGISTRY
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


# --------------------------------------------------------------------------- node metadata


@dataclass(frozen=True)
class NodeRow:
    """What Tiled's metadata route shows of a node, read with one query: its family, metadata and specs
    (JSON), the family and structure of its one data source (None for a container), how many data
    sources and access tags it has."""

    id: int
    structure_family: str
    metadata: Any
    specs: Any
    source_family: str | None
    structure: Any
    sources: int
    tags: int
    version: int | None  # of the sweepcat dataset this node is (its children change only with it)


def _node_sql(depth: int, placeholder: Callable[[int], str]) -> str:
    joins = " ".join(f"JOIN nodes n{i} ON n{i}.parent = n{i - 1}.id AND n{i}.key = {placeholder(i)}"
                     for i in range(2, depth + 1))
    n = f"n{depth}"
    return (f"SELECT {n}.id, {n}.structure_family, {n}.metadata, {n}.specs, "
            f"(SELECT ds.structure_family FROM data_sources ds WHERE ds.node_id = {n}.id LIMIT 1), "
            f"(SELECT st.structure FROM data_sources ds JOIN structures st ON st.id = ds.structure_id "
            f"WHERE ds.node_id = {n}.id LIMIT 1), "
            f"(SELECT count(*) FROM data_sources ds WHERE ds.node_id = {n}.id), "
            f"(SELECT count(*) FROM node_access_tags_association t WHERE t.node_id = {n}.id), "
            f"(SELECT r.version FROM {REGISTRY} r WHERE r.dataset_id = {n}.id) "
            f"FROM nodes n1 {joins} WHERE n1.parent = 0 AND n1.key = {placeholder(1)}")


def _child_count_sql(placeholder: Callable[[int], str]) -> str:
    """Tiled's lower bound of a container's length: children counted up to a limit."""
    return f"SELECT count(*) FROM (SELECT 1 FROM nodes WHERE parent = {placeholder(1)} LIMIT {placeholder(2)}) c"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _node_row(rows: list[tuple]) -> NodeRow | None:
    if len(rows) != 1:
        return None
    id_, family, metadata, specs, source_family, structure, sources, tags, version = rows[0]
    return NodeRow(int(id_), str(family), _json(metadata), _json(specs), source_family, _json(structure),
                   int(sources), int(tags), None if version is None else int(version))


class NodeLookup:
    """Node paths -> array locators, or -> what the metadata route shows, with one query each."""

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
        async with (await self._postgres()).acquire() as con:
            rows = [tuple(r) for r in await con.fetch(_lookup_sql(len(segments), lambda i: f"${i}"), *segments)]
        return array_row(rows)

    async def _postgres(self) -> Any:
        """The asyncpg pool, made in the server's event loop on first use."""
        if self._pool is None:
            import asyncpg

            self._pool = await asyncpg.create_pool(self.cat.asyncpg_dsn, min_size=1, max_size=4)
        return self._pool


    def node_sync(self, segments: list[str]) -> NodeRow | None:
        return _node_row(self._sqlite().execute(_node_sql(len(segments), lambda i: f"?{i}"), segments).fetchall())

    def children_sync(self, node_id: int, limit: int) -> int:
        return int(self._sqlite().execute(_child_count_sql(lambda i: f"?{i}"), (node_id, limit)).fetchone()[0])

    async def node(self, segments: list[str]) -> NodeRow | None:
        if self.cat.dialect == "sqlite":
            return await anyio.to_thread.run_sync(self.node_sync, segments)
        async with (await self._postgres()).acquire() as con:
            return _node_row([tuple(r) for r in await con.fetch(_node_sql(len(segments), lambda i: f"${i}"),
                                                                  *segments)])

    async def children(self, node_id: int, limit: int) -> int:
        if self.cat.dialect == "sqlite":
            return await anyio.to_thread.run_sync(self.children_sync, node_id, limit)
        async with (await self._postgres()).acquire() as con:
            return int(await con.fetchval(_child_count_sql(lambda i: f"${i}"), node_id, limit))
