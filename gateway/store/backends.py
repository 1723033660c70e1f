"""How a batch operation reaches the database: one call runs one sync function in one transaction.

Every store operation is written once, as a sync function over a SQLAlchemy Core
``Connection``; a backend decides where it runs:

* ``SqliteThreadBackend`` (the default for SQLite): a sync pysqlite engine driven
  from one dedicated thread. A whole batch operation costs one thread hop.
* ``AsyncEngineBackend``: a SQLAlchemy async engine; the function runs under
  ``AsyncConnection.run_sync``. Used for PostgreSQL (asyncpg) and, on request,
  for SQLite through aiosqlite, where every statement hops to aiosqlite's thread
  and back (see benchmarks/store_throughput.py for the cost of that).

SQLite write transactions start with ``BEGIN IMMEDIATE`` so that two stores on
one file queue on ``busy_timeout`` instead of failing a read-to-write upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.store.schema import LEGACY_INDEXES, LEGACY_TEMPLATES, metadata, templates


def create_schema(conn: sa.Connection) -> None:
    """Create missing tables, then bring a store made by an older version up to date: add
    the columns it lacks (each new column has a server default, so ADD COLUMN fills old
    rows), replace the indexes that changed, and copy its global templates in as shared."""
    if conn.dialect.name == "postgresql":
        # Replicas starting together on an empty database take turns (the lock ends with
        # the transaction); without it all but one died on a unique violation.
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7215030041)")
    translate = conn.get_execution_options().get("schema_translate_map") or {}
    schema = translate.get(None)
    had_templates = sa.inspect(conn).has_table(templates.name, schema=schema)
    metadata.create_all(conn)
    inspector = sa.inspect(conn)
    quote = conn.dialect.identifier_preparer

    def qualified(name: str) -> str:
        quoted = quote.quote(name)
        return quoted if schema is None else f"{quote.quote_schema(schema)}.{quoted}"

    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name, schema=schema)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(conn.dialect)
            default = column.server_default.arg if column.server_default is not None else None  # type: ignore[attr-defined]
            if default is None:
                raise RuntimeError(f"store table {table.name} lacks column {column.name}")
            conn.exec_driver_sql(
                f"ALTER TABLE {qualified(table.name)} ADD COLUMN {column.name} {kind} "
                f"NOT NULL DEFAULT {default}"
            )
        for legacy in LEGACY_INDEXES.get(table.name, ()):
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {qualified(legacy)}")
        for index in table.indexes:  # create_all makes indexes only with new tables
            index.create(conn, checkfirst=True)
    if not had_templates and inspector.has_table(LEGACY_TEMPLATES, schema=schema):
        conn.exec_driver_sql(
            f"INSERT INTO {qualified(templates.name)} (tenant, name, version, body, created_at) "
            f"SELECT '', name, version, body, created_at FROM {qualified(LEGACY_TEMPLATES)}"
        )


T = TypeVar("T")
Op = Callable[[sa.Connection], T]

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Backend(Protocol):
    dialect: str  # "sqlite" | "postgresql"

    async def run(self, fn: Op[T], *, write: bool) -> T: ...

    async def close(self) -> None: ...


log = logging.getLogger(__name__)

# Several replicas write the same rows (a job's tasks, its row): PostgreSQL then aborts
# one of two transactions that wait on each other (deadlock_detected) or could not be
# serialised. Each operation is one whole transaction of its own, so it is run again.
PG_TRANSIENT = frozenset({"40P01", "40001"})
PG_TRANSIENT_TRIES = 5


def pg_sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    """The SQLSTATE of a PostgreSQL error raised through SQLAlchemy's asyncpg adapter."""
    for err in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
        if code:
            return str(code)
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level: transactions are begun explicitly (see _sqlite_tx).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_tx(conn: sa.Connection, fn: Op[T], write: bool) -> T:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        out = fn(conn)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return out


def sqlite_path(url: str) -> str:
    """The database path of a sqlite URL or of a plain path; creates its folder."""
    path = sa.make_url(url).database if "://" in url else url
    if not path or path == ":memory:":
        return ":memory:"
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return str(Path(path).expanduser())


class SqliteThreadBackend:
    """A sync SQLite connection owned by one thread; each operation is one hop to it."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._engine = sa.create_engine(
            f"sqlite:///{path}",
            poolclass=sa.pool.StaticPool,
            connect_args={"check_same_thread": False},
        )
        sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jobstore-sqlite")
        self._conn: sa.Connection | None = None
        self._closed = False

    async def start(self) -> None:
        await self.run(create_schema, write=True)

    def _call(self, fn: Op[T], write: bool) -> T:
        if self._conn is None:
            self._conn = self._engine.connect()
        return _sqlite_tx(self._conn, fn, write)

    async def run(self, fn: Op[T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, write)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._engine.dispose()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)


class AsyncEngineBackend:
    """A SQLAlchemy async engine (asyncpg or aiosqlite); operations run under run_sync."""

    def __init__(self, engine: AsyncEngine, schema: str | None = None) -> None:
        self.dialect = engine.dialect.name
        self._schema = schema
        if schema is not None:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self._engine = engine

    @classmethod
    def postgres(cls, url: str, schema: str | None = None) -> AsyncEngineBackend:
        return cls(create_async_engine(url, pool_size=8, max_overflow=8), schema)

    @classmethod
    def aiosqlite(cls, path: str) -> AsyncEngineBackend:
        engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    async def start(self) -> None:
        if self._schema is not None:
            async with self._engine.begin() as conn:
                quoted = conn.dialect.identifier_preparer.quote_schema(self._schema)
                await conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await self.run(create_schema, write=True)

    async def run(self, fn: Op[T], *, write: bool) -> T:
        if self.dialect == "sqlite":
            async with self._engine.connect() as conn:
                return await conn.run_sync(_sqlite_tx, fn, write)
        for attempt in range(1, PG_TRANSIENT_TRIES + 1):
            try:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(fn)
            except sa.exc.DBAPIError as exc:
                code = pg_sqlstate(exc)
                if code not in PG_TRANSIENT or attempt == PG_TRANSIENT_TRIES:
                    raise
                log.info("transaction %s hit %s (try %d); running it again", fn, code, attempt)
                await asyncio.sleep(random.uniform(0.005, 0.02) * 2**attempt)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._engine.dispose()
