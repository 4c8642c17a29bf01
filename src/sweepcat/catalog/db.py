"""One small synchronous interface over SQLite (sqlite3) and PostgreSQL (asyncpg, COPY).

SQL is written once with ``?`` placeholders; PostgreSQL gets ``$n``.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Any, Iterable, Sequence

from ..errors import CatalogBusy, SweepcatError
from .schema import CatalogURI, off_the_running_loop

WRITE_WAIT = 30.0  # seconds a writer waits for another writer's lock before saying who holds it


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _pg_sql(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class Database:
    dialect: str

    def fetch(self, sql: str, *args: Any) -> list[tuple]:
        raise NotImplementedError

    def execute(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def copy(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
             constants: dict[str, Any] | None = None) -> None:
        """Bulk-insert rows (COPY on PostgreSQL); ``constants`` are columns with one value for every row."""
        raise NotImplementedError

    def begin(self, wait: float = WRITE_WAIT) -> None:
        """A write transaction; SQLite takes the write lock now, waiting at most ``wait`` seconds."""
        raise NotImplementedError

    def lock_for_bulk(self, wait: float = WRITE_WAIT) -> None:
        """Inside ``begin``: keep every other writer out of Tiled's tables until commit (ids come from max(id))."""
        raise NotImplementedError

    def begin_read(self) -> None:
        """A read-only snapshot: every statement until ``rollback`` sees the same committed state."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def fetch_in(self, sql: str, values: Iterable[Any], *leading: Any, chunk: int = 500) -> list[tuple]:
        """``sql`` contains ``IN ({})`` after any ``leading`` parameters; run it over ``values`` in chunks."""
        values = list(values)
        out: list[tuple] = []
        for start in range(0, len(values), chunk):
            part = values[start:start + chunk]
            out.extend(self.fetch(sql.format(",".join("?" * len(part))), *leading, *part))
        return out

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str, cache_mib: int = 128):
        self.path = path
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (BEGIN IMMEDIATE takes the write lock up front).
        # check_same_thread=False: a pooled connection moves between threads, one user at a time.
        self.con = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
        self.con.execute("PRAGMA foreign_keys=ON")  # Tiled's server sets it on every connection too
        self.con.execute("PRAGMA busy_timeout=60000")
        # 128 MiB of page cache: a bulk load's hot b-tree pages (the id and parent indexes) fit, and memory
        # stays bounded whatever the rows (512 MiB and an in-memory temp store took a 10^6 ingest to 1.5 GB,
        # and were slower; BENCHMARKS.md). Temporary b-trees (index builds) spill to files.
        # WAL + synchronous=NORMAL stays atomic and consistent; only durability of the very
        # last commit on power loss is traded, never on a crash or kill of this process.
        self.con.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
        self.con.execute("PRAGMA synchronous=NORMAL")

    def fetch(self, sql: str, *args: Any) -> list[tuple]:
        return self.con.execute(sql, args).fetchall()

    def execute(self, sql: str, *args: Any) -> None:
        self.con.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.con.executemany(sql, rows)

    def copy(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
             constants: dict[str, Any] | None = None) -> None:
        # Constants go into the statement as literals: binding costs per value, per row.
        constants = constants or {}
        names = [*columns, *constants]
        values = ["?"] * len(columns) + [_literal(v) for v in constants.values()]
        self.con.executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(values)})", rows)

    def begin(self, wait: float = WRITE_WAIT) -> None:
        self.con.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
        try:
            self.con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise CatalogBusy(self.path, wait) from None
            raise
        finally:
            self.con.execute("PRAGMA busy_timeout=60000")

    def lock_for_bulk(self, wait: float = WRITE_WAIT) -> None:
        pass  # BEGIN IMMEDIATE holds the database's one write lock already

    def begin_read(self) -> None:
        self.con.execute("BEGIN")  # deferred: a read transaction from the first read on

    def commit(self) -> None:
        self.con.execute("COMMIT")

    def rollback(self) -> None:
        if self.con.in_transaction:
            self.con.execute("ROLLBACK")

    def close(self) -> None:
        self.rollback()
        self.con.close()


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, dsn: str, display: str):
        import asyncpg

        self.loop = asyncio.new_event_loop()
        try:
            self.con = self._run(asyncpg.connect(dsn))
        except (OSError, asyncpg.PostgresError) as exc:
            self.loop.close()
            raise SweepcatError(f"cannot connect to PostgreSQL at {display} ({exc})",
                                "check host, port, user and database") from None
        self.tx = None
        self.display = display

    def _run(self, coro: Any) -> Any:
        return off_the_running_loop(lambda: self.loop.run_until_complete(coro))

    def fetch(self, sql: str, *args: Any) -> list[tuple]:
        return [tuple(r) for r in self._run(self.con.fetch(_pg_sql(sql), *args))]

    def execute(self, sql: str, *args: Any) -> None:
        self._run(self.con.execute(_pg_sql(sql), *args))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._run(self.con.executemany(_pg_sql(sql), rows))

    def copy(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
             constants: dict[str, Any] | None = None) -> None:
        if not rows:
            return
        if constants:
            tail = tuple(constants.values())
            rows = [(*r, *tail) for r in rows]
            columns = [*columns, *constants]
        self._run(self.con.copy_records_to_table(table, records=rows, columns=list(columns)))

    def begin(self, wait: float = WRITE_WAIT) -> None:
        self.tx = self.con.transaction()
        self._run(self.tx.start())

    def lock_for_bulk(self, wait: float = WRITE_WAIT) -> None:
        import asyncpg

        # EXCLUSIVE lets the server keep reading while no one else writes.
        self.execute(f"SET LOCAL lock_timeout = '{int(wait * 1000)}ms'")
        try:
            self.execute("LOCK TABLE nodes, data_sources, assets, structures, data_source_asset_association "
                         "IN EXCLUSIVE MODE")
        except asyncpg.exceptions.LockNotAvailableError:
            raise CatalogBusy(self.display, wait) from None
        self.execute("SET LOCAL lock_timeout = 0")

    def begin_read(self) -> None:
        self.tx = self.con.transaction(isolation="repeatable_read", readonly=True)
        self._run(self.tx.start())

    def commit(self) -> None:
        self._run(self.tx.commit())
        self.tx = None

    def rollback(self) -> None:
        if self.tx is not None:
            self._run(self.tx.rollback())
            self.tx = None

    def close(self) -> None:
        try:
            self.rollback()
            self._run(self.con.close())
        finally:
            self.loop.close()


def connect(cat: CatalogURI, cache_mib: int = 128) -> Database:
    """A connection; ``cache_mib``: SQLite's page cache (writers want the hot b-trees cached; readers that
    scan once per dataset version, as the server's index, keep little: each pooled connection holds its own)."""
    if cat.dialect == "sqlite":
        return SQLiteDatabase(str(cat.sqlite_path), cache_mib)
    return PostgresDatabase(cat.asyncpg_dsn, cat.display)
