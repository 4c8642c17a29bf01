"""What sweepcat knows about Tiled's catalog schema, and how it creates and checks catalogs.

sweepcat writes Tiled's own tables directly; it knows exactly one schema
revision. A catalog at any other revision is refused before anything is read.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar
from urllib.parse import quote

from ..errors import CatalogBusy, SweepcatError

T = TypeVar("T")

if TYPE_CHECKING:  # db imports this module
    from .db import Database

TILED_VERSION = "0.2.20"
REQUIRED_REVISION = "917dbbcfc4b1"  # alembic head of Tiled 0.2.20's catalog
MIMETYPE = "application/x-sliced-hdf5"  # the manifest-locator adapter (server/adapter.py)
DEFAULT_CATALOG = "sweepcat.db"


@dataclass(frozen=True)
class CatalogURI:
    """A catalog address: ``sqlite:////abs/path.db`` or ``postgresql://user@host:port/db``."""

    uri: str

    @property
    def dialect(self) -> str:
        return "postgresql" if self.uri.startswith("postgresql") else "sqlite"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.uri[len("sqlite:///"):])

    @property
    def display(self) -> str:
        """The URI without a password."""
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.uri)

    @property
    def asyncpg_dsn(self) -> str:
        return re.sub(r"^postgresql(\+\w+)?://", "postgresql://", self.uri)

    @property
    def tiled_uri(self) -> str:
        """The form Tiled's config expects (it adds its own async driver)."""
        return self.asyncpg_dsn if self.dialect == "postgresql" else self.uri


def parse_catalog(uri_or_path: str | os.PathLike | None) -> CatalogURI:
    text = os.fspath(uri_or_path) if uri_or_path is not None else DEFAULT_CATALOG
    if re.match(r"^postgres(ql)?(\+\w+)?://", text):
        return CatalogURI(re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", text))
    if text.startswith("sqlite"):
        m = re.match(r"^sqlite(\+\w+)?:///(.*)$", text)
        if not m or not m.group(2):
            raise SweepcatError(f"catalog URI {text!r} is not understood",
                                "use sqlite:////absolute/path.db, a plain file path, or postgresql://user@host:port/db")
        return CatalogURI(f"sqlite:///{_sqlite_path(m.group(2))}")
    if "://" in text:
        raise SweepcatError(f"catalog URI {text!r}: unsupported scheme",
                            "use a SQLite file path or postgresql://user@host:port/db")
    return CatalogURI(f"sqlite:///{_sqlite_path(text)}")


def _sqlite_path(text: str) -> Path:
    """A SQLite catalog's file: a directory, or a file in a missing directory, is a clear error."""
    path = Path(text).expanduser().resolve()
    if path.is_dir():
        raise SweepcatError(f"catalog {path} is a directory, not a catalog file",
                            f"name a file, e.g. --catalog {path / 'sweepcat.db'}")
    if not path.parent.is_dir():
        raise SweepcatError(f"catalog {path}: directory {path.parent} does not exist",
                            "create it first, or name a catalog file in an existing directory")
    return path


def _wrong_revision(cat: CatalogURI, found: str | None) -> SweepcatError:
    if found is None:
        return SweepcatError(
            f"catalog {cat.display} has no Tiled schema version (no alembic_version row): it is not a Tiled catalog",
            "point --catalog at a Tiled catalog, or at a new file for sweepcat to create")
    return SweepcatError(
        f"catalog {cat.display} is at Tiled schema revision {found}; sweepcat writes Tiled {TILED_VERSION}'s "
        f"schema (revision {REQUIRED_REVISION}) and refuses to touch another",
        f"upgrade it with `tiled catalog upgrade-database {cat.display}` (tiled=={TILED_VERSION}), "
        "or ingest into a new catalog")


def sqlite_revision(path: Path) -> str | None:
    """The alembic revision of a SQLite catalog; None if the table is missing."""
    # mode=rw, not ro: after a crash mid-commit only a writer may roll back the hot journal.
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=60)
    try:
        row = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone()
        if row is None:
            return None
        rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        return rows[0][0] if len(rows) == 1 else ",".join(r[0] for r in rows) or None
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise SweepcatError(f"{path} is not a SQLite database ({exc})",
                                "point --catalog at a Tiled catalog file, or at a new file name") from None
        if "locked" in str(exc) or "busy" in str(exc):
            raise CatalogBusy(str(path), 60) from None
        raise SweepcatError(f"catalog {path} cannot be opened ({exc})", "check its permissions") from None
    finally:
        con.close()


async def _pg_revision(dsn: str) -> tuple[bool, str | None]:
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        exists = await con.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not exists:
            has_nodes = await con.fetchval("SELECT to_regclass('public.nodes') IS NOT NULL")
            return bool(has_nodes), None
        rows = await con.fetch("SELECT version_num FROM alembic_version")
        return True, ",".join(r[0] for r in rows) or None
    finally:
        await con.close()


def off_the_running_loop(func: Callable[[], T]) -> T:
    """``func()`` here, or, when this thread runs an event loop (Jupyter, an async server), in a worker
    thread: asyncio.run and run_until_complete refuse to run inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return func()
    with ThreadPoolExecutor(1, thread_name_prefix="sweepcat-sync") as pool:
        return pool.submit(func).result()


def pg_revision(cat: CatalogURI) -> tuple[bool, str | None]:
    """(schema present, revision) of a PostgreSQL catalog."""
    try:
        return off_the_running_loop(lambda: asyncio.run(_pg_revision(cat.asyncpg_dsn)))
    except OSError as exc:
        raise SweepcatError(f"cannot connect to PostgreSQL at {cat.display} ({exc})",
                            "check host, port and that the server runs") from None
    except Exception as exc:  # asyncpg's errors share no public base we can name here
        raise SweepcatError(f"PostgreSQL at {cat.display} refused the connection ({exc})",
                            "check the user, password and database name") from None


def _initialize(cat: CatalogURI) -> None:
    """Create Tiled's schema with Tiled's own initializer, then stamp the alembic revision."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(cat.tiled_uri)

    async def create() -> None:
        engine = create_async_engine(uri)
        try:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    def run() -> None:
        asyncio.run(create())
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)  # alembic runs its own event loop

    off_the_running_loop(run)


def ensure_catalog(cat: CatalogURI, *, create: bool = True) -> bool:
    """Check the schema revision; create the catalog if it does not exist. True if created."""
    from tiled.catalog.core import REQUIRED_REVISION as tiled_required

    if tiled_required != REQUIRED_REVISION:  # the installed Tiled is not the pinned one
        raise SweepcatError(
            f"installed Tiled expects catalog revision {tiled_required}, sweepcat knows {REQUIRED_REVISION}",
            f"install tiled[server]=={TILED_VERSION} (pinned in pyproject.toml)")
    if cat.dialect == "sqlite":
        path = cat.sqlite_path
        if path.exists() and path.stat().st_size > 0:
            found = sqlite_revision(path)
            if found != REQUIRED_REVISION:
                raise _wrong_revision(cat, found)
            return False
        if not create:
            raise SweepcatError(f"catalog {path} does not exist", "run `sweepcat ingest` first, or check the path")
        if not path.parent.is_dir():
            raise SweepcatError(f"cannot create catalog {path}: directory {path.parent} does not exist",
                                "create the directory or choose another path")
        _initialize(cat)
        return True
    present, found = pg_revision(cat)
    if present:
        if found != REQUIRED_REVISION:
            raise _wrong_revision(cat, found)
        return False
    if not create:
        raise SweepcatError(f"PostgreSQL database {cat.display} holds no Tiled catalog",
                            "run `sweepcat ingest` first")
    _initialize(cat)
    return True


# --------------------------------------------------------------------------- triggers

# Tiled 0.2.20's triggers. sweepcat writes around exactly these, plus its own (named sweepcat_*); a
# catalog with any other trigger, or without one of these, is refused before anything is written.
TILED_TRIGGERS = {
    "sqlite": frozenset({
        "nodes_metadata_fts5_sync_ai", "nodes_metadata_fts5_sync_ad", "nodes_metadata_fts5_sync_au",
        "update_closure_table_when_inserting", "node_access_tags_set_parent_after_insert",
        "node_access_tags_set_parent_after_update", "node_access_tags_sync_parent_after_node_update",
        "cannot_insert_num_null_if_num_exists", "cannot_insert_num_int_if_num_null_exists",
        "entities_node_access_tags_update", "entity_access_tags_association_insert_reject_node_backed_entity",
        "entity_access_tags_association_update_reject_node_backed_entity",
    }),
    "postgresql": frozenset({
        "cannot_insert_num_int_if_num_null_exists", "cannot_insert_num_null_if_num_exists",
        "entities_node_access_tags_check", "entity_access_tags_association_reject_node_backed_entity",
        "node_access_tags_set_parent", "node_access_tags_sync_parent_after_node_update",
        "update_closure_table_when_inserting",
    }),
}
SWEEPCAT_TRIGGER_PREFIX = "sweepcat_"

# The per-row triggers a bulk ingest replaces by set-wise statements writing the same rows. Their
# definitions (whitespace aside) must be these, or the set-wise rows would not be what they write.
REPLACED_TRIGGERS = {
    "sqlite": {
        "update_closure_table_when_inserting": (
            "CREATE TRIGGER update_closure_table_when_inserting AFTER INSERT ON nodes BEGIN INSERT INTO "
            "nodes_closure(ancestor, descendant, depth) SELECT NEW.id, NEW.id, 0; INSERT INTO "
            "nodes_closure(ancestor, descendant, depth) SELECT p.ancestor, c.descendant, p.depth+c.depth+1 FROM "
            "nodes_closure p, nodes_closure c WHERE p.descendant=NEW.parent and c.ancestor=NEW.id; END"),
        "nodes_metadata_fts5_sync_ai": (
            "CREATE TRIGGER nodes_metadata_fts5_sync_ai AFTER INSERT ON nodes BEGIN INSERT INTO "
            "metadata_fts5(rowid, metadata) VALUES (new.id, new.metadata); END"),
    },
    "postgresql": {
        "update_closure_table_when_inserting": (
            "CREATE OR REPLACE FUNCTION public.update_closure_table_when_inserting() RETURNS trigger LANGUAGE "
            "plpgsql AS $function$ BEGIN INSERT INTO nodes_closure(ancestor, descendant, depth) VALUES (NEW.id, "
            "NEW.id, 0); INSERT INTO nodes_closure(ancestor, descendant, depth) SELECT p.ancestor, c.descendant, "
            "p.depth + c.depth + 1 FROM nodes_closure p, nodes_closure c WHERE p.descendant = NEW.parent AND "
            "c.ancestor = NEW.id; RETURN NEW; END; $function$"),
    },
}


def _normal(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def triggers_of(db: "Database") -> dict[str, str]:
    """Every trigger of the catalog: name -> definition (for PostgreSQL, that of its function)."""
    if db.dialect == "sqlite":
        return {name: sql or "" for name, sql in db.fetch("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")}
    rows = db.fetch("SELECT t.tgname, pg_get_functiondef(t.tgfoid) FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace s ON s.oid = c.relnamespace "
                    "WHERE NOT t.tgisinternal AND s.nspname = current_schema()")
    return {name: definition for name, definition in rows}


def check_triggers(db: "Database") -> None:
    """Refuse a catalog whose triggers are not exactly Tiled's and sweepcat's, naming the odd one."""
    found = triggers_of(db)
    known = TILED_TRIGGERS[db.dialect]
    unknown = sorted(n for n in found if n not in known and not n.startswith(SWEEPCAT_TRIGGER_PREFIX))
    missing = sorted(known - set(found))
    changed = sorted(n for n, sql in REPLACED_TRIGGERS[db.dialect].items()
                     if n in found and _normal(found[n]) != _normal(sql))
    if unknown or missing or changed:
        parts = ([f"unknown trigger(s) {', '.join(unknown)}"] if unknown else []) + \
                ([f"Tiled's trigger(s) {', '.join(missing)} missing"] if missing else []) + \
                ([f"Tiled's trigger(s) {', '.join(changed)} changed"] if changed else [])
        raise SweepcatError(
            f"catalog triggers are not the set sweepcat knows (Tiled {TILED_VERSION}): {'; '.join(parts)}",
            "sweepcat writes Tiled's tables directly and must know every trigger on them: drop what your site "
            "added (or restore Tiled's), or write through Tiled's API (`sweepcat register --stock`)")
