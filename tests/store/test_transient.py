"""A transaction PostgreSQL aborts for a deadlock is run again: replicas recording results
of one job deadlocked in a three-replica run, and the results of the aborted transaction
were dropped, so the job never completed. Here a real deadlock is made on purpose: a
second connection holds one row and takes the store's; PostgreSQL aborts the store's
transaction (its deadlock_timeout fires first), which is run again once the other
commits."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import asyncpg
import pytest
import sqlalchemy as sa

from gateway.store import JobStore
from tests.store.conftest import PG_URL, _drop_schema, _pg_unreachable, make_job

pytestmark = pytest.mark.postgres


async def _waiting_on_a_lock(watch: asyncpg.Connection, schema: str) -> bool:
    found = await watch.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
        f"%{schema}%",
    )
    return bool(found)


async def test_a_deadlocked_transaction_is_run_again(caplog) -> None:
    reason = await _pg_unreachable()
    if reason:
        pytest.skip(reason)
    schema = f"store_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    store = await JobStore.open(PG_URL, schema=schema)
    dsn = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    other = await asyncpg.connect(dsn)
    watch = await asyncpg.connect(dsn)
    try:
        for job_id in ("a", "b"):
            await store.create_job(make_job(job_id))
        await other.execute("SET deadlock_timeout = '30s'")  # the store's side is aborted
        tx = other.transaction()
        await tx.start()
        await other.execute(f'UPDATE "{schema}".jobs SET priority = 9 WHERE job_id = $1', "b")
        runs = 0

        def a_then_b(conn: sa.Connection) -> None:
            nonlocal runs
            runs += 1
            for job_id in ("a", "b"):
                conn.execute(
                    sa.text(f'UPDATE "{schema}".jobs SET priority = 1 WHERE job_id = :j'),
                    {"j": job_id},
                )

        caplog.set_level(logging.INFO, logger="gateway.store.backends")
        op = asyncio.create_task(store._backend.run(a_then_b, write=True))
        async with asyncio.timeout(30):
            while not await _waiting_on_a_lock(watch, schema):  # the store holds a, waits on b
                await asyncio.sleep(0.02)
            # Takes a: a deadlock, and PostgreSQL aborts the store's transaction.
            await other.execute(f'UPDATE "{schema}".jobs SET priority = 9 WHERE job_id = $1', "a")
            await tx.commit()
            await op
        assert runs == 2
        assert "40P01" in caplog.text
        priorities = {j: (await store.get_job(j)).priority for j in ("a", "b")}
        assert priorities == {"a": 1, "b": 1}  # the store's run again committed last
    finally:
        await other.close()
        await watch.close()
        await store.close()
        await _drop_schema(schema)
