"""Store fixtures: every test runs against SQLite and, when reachable, the real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store import JobRecord, JobState, JobStore, NewTask

PG_URL = os.environ.get(
    "BATCHINFER_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
OpenStore = Callable[[], Awaitable[JobStore]]

_pg_reason: str | None = None
_pg_checked = False


async def _pg_unreachable() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per run)."""
    global _pg_checked, _pg_reason
    if not _pg_checked:
        _pg_checked = True
        engine = create_async_engine(PG_URL)
        try:
            async with asyncio.timeout(5), engine.connect() as conn:
                await conn.execute(sa.text("select 1"))
        except Exception as exc:
            _pg_reason = f"PostgreSQL at {PG_URL} is not reachable: {exc!r}"
        finally:
            await engine.dispose()
    return _pg_reason


async def _drop_schema(schema: str) -> None:
    engine = create_async_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(
    loop_scope="function",
    # sqlite: the sqlite3 fast path of the hottest statements; sqlite-sqlalchemy: the same
    # database through aiosqlite, where every statement is SQLAlchemy's, so both copies of
    # each compare-and-set are shown to agree; postgres: SQLAlchemy on asyncpg.
    params=["sqlite", "sqlite-sqlalchemy", pytest.param("postgres", marks=pytest.mark.postgres)],
)
async def open_store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[OpenStore]:
    """A factory: each call opens another JobStore on the same database (as a restart would)."""
    opened: list[JobStore] = []
    schema = None
    if request.param == "postgres":
        reason = await _pg_unreachable()
        if reason:
            pytest.skip(reason)
        schema = f"store_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"

    async def factory() -> JobStore:
        if schema is None:
            driver = "aiosqlite" if request.param == "sqlite-sqlalchemy" else "thread"
            url = f"sqlite+aiosqlite:///{tmp_path}/db/jobs.db"
            store = await JobStore.open(url, sqlite_driver=driver)
        else:
            store = await JobStore.open(PG_URL, schema=schema)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if schema is not None:
        await _drop_schema(schema)


@pytest_asyncio.fixture(loop_scope="function")
async def store(open_store: OpenStore) -> JobStore:
    return await open_store()


def make_job(job_id: str = "job-1", **fields) -> JobRecord:
    values = dict(
        job_id=job_id,
        name="summarize",
        tenant="team-a",
        priority=5,
        model="smollm2",
        task_type="chat",
        state=JobState.QUEUED,
        created_at=1000.0,
        finished_at=None,
        spec={"yaml": "name: summarize", "variables": {"N": "1"}},
    )
    values.update(fields)
    return JobRecord(**values)


def make_tasks(n: int, *, start: int = 0, prefix: str = "t", hash_of=lambda i: f"h{i}"):
    return [
        NewTask(
            task_id=f"{prefix}{i}",
            idx=i,
            input_hash=hash_of(i),
            payload=b"p%d" % i,
            est_tokens=10 + i,
        )
        for i in range(start, start + n)
    ]


async def template_body(store: JobStore, name: str, version: str, tenant: str = "") -> str | None:
    """A template's body as submission reads it: listed for the tenant (list_templates)."""
    rows = await store.list_templates(name, tenants=[tenant])
    return next((t.body for t in rows if t.version == version), None)
