"""LISTEN/NOTIFY on the real PostgreSQL: a job's change and new results reach a listener
at commit; a listener whose connection is terminated reconnects and says so (on_connect),
so its owner can sync what it missed. SQLite has no listener."""

from __future__ import annotations

import asyncio
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.store import JobState, JobStore, Outcome, TaskState
from gateway.store.notify import JOBS, RESULTS, Listener
from tests.store.conftest import PG_URL, make_job, make_tasks

NAME = f"batchinfer notify-test {uuid.uuid4().hex[:8]}"  # its connection's application_name


class Heard:
    def __init__(self) -> None:
        self.notices: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.connects = 0
        self.connected = asyncio.Event()

    def notice(self, kind: str, job_id: str) -> None:
        self.notices.put_nowait((kind, job_id))

    def connect(self) -> None:
        self.connects += 1
        self.connected.set()

    async def next(self) -> tuple[str, str]:
        return await asyncio.wait_for(self.notices.get(), 30)


async def _running(store: JobStore, heard: Heard) -> tuple[Listener, asyncio.Task[None]]:
    listener = store.listener(NAME, heard.notice, heard.connect)
    assert listener is not None
    task = asyncio.get_running_loop().create_task(listener.run_forever())
    await asyncio.wait_for(heard.connected.wait(), 30)
    return listener, task


async def _listener_pids() -> list[int]:
    engine = create_async_engine(PG_URL)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"),
                {"n": NAME},
            )
            return [int(pid) for (pid,) in rows]
    finally:
        await engine.dispose()


async def test_changes_and_results_are_heard_and_a_killed_listener_comes_back(open_store) -> None:
    store = await open_store()
    if store.dialect != "postgresql":
        assert store.listener("x", lambda kind, job: None, lambda: None) is None
        return
    heard = Heard()
    listener, task = await _running(store, heard)
    try:
        await store.create_job(make_job())
        await store.add_tasks("job-1", make_tasks(2))
        await store.mark_expanded("job-1", 2)
        assert await heard.next() == (JOBS, "job-1")
        await store.set_job_state("job-1", JobState.PAUSED)
        assert await heard.next() == (JOBS, "job-1")
        # A compare-and-set that changed nothing sends nothing: the next notice heard is
        # another job's, not the failed state change.
        assert not await store.set_job_state("job-1", JobState.RUNNING, expected={JobState.QUEUED})
        await store.create_job(make_job("job-2"))
        await store.set_job_priority("job-2", 7)
        assert await heard.next() == (JOBS, "job-2")
        await store.lease("job-1", ["t0", "t1"], "r/srv#0", 1e12)

        # The listener's backend is terminated, as an administrator or a failover would.
        (pid,) = await _listener_pids()
        heard.connected.clear()
        engine = create_async_engine(PG_URL)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        finally:
            await engine.dispose()
        await asyncio.wait_for(heard.connected.wait(), 30)
        assert heard.connects == 2
        (again,) = await _listener_pids()
        assert again != pid
        outcome = Outcome("t0", 1, TaskState.SUCCEEDED, b"r")
        assert await store.record_outcomes("job-1", [outcome], now=1.0)
        assert await heard.next() == (RESULTS, "job-1")
        assert listener.connected.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await _listener_pids() == []  # cancelled: its connection is closed
