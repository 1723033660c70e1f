"""LISTEN/NOTIFY between gateway replicas on one PostgreSQL: with the replicas' poll of
each other a minute apart, a job accepted by one is taken up by the other, paused and
resumed through the first, and finished, all through notifications; the second replica's
listening connection, terminated mid-job, comes back and carries the resume."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from batchinfer.v1 import gateway_pb2
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from gateway.client import GatewayClient, read_local_job
from tests.faults.harness import assert_each_task_once, write_job
from tests.faults.replicas import start_replica, start_replica_fleet, stop_replica_fleet

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

POLL_S = 60  # --replica-poll-s: each wait below gives up well before a poll could help
WAIT_S = 30.0
PAUSED, RUNNING = gateway_pb2.JOB_STATE_PAUSED, gateway_pb2.JOB_STATE_RUNNING


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await check():
            await asyncio.sleep(0.05)
    print(f"observed: {what}")


async def scalar(conn: AsyncConnection, sql: str, **params: object) -> int:
    value = await conn.scalar(sa.text(sql), params)
    await conn.rollback()  # a fresh snapshot each time
    return int(value or 0)


async def scenario(tmp_path: Path, url: str, addresses: list[str]) -> None:
    tasks = 3000
    engine = create_async_engine(url)
    a, b = GatewayClient([addresses[0]]), GatewayClient([addresses[1]])
    try:
        async with engine.connect() as conn:
            await a.wait_ready()
            await b.wait_ready()
            ids = (await conn.execute(sa.text("SELECT replica_id FROM replicas ORDER BY 1"))).all()
            await conn.rollback()
            assert len(ids) == 2
            local = read_local_job(write_job(tmp_path / "job", tasks), {}, None)
            job_id = (await a.submit(local)).job_id
            b_id = (
                await conn.execute(
                    sa.text("SELECT replica_id FROM replicas ORDER BY started_at DESC LIMIT 1")
                )
            ).scalar_one()
            await conn.rollback()

            async def leased_by_b() -> bool:
                sql = "SELECT count(*) FROM tasks WHERE job_id = :j AND lease_owner LIKE :o"
                return await scalar(conn, sql, j=job_id, o=f"{b_id}/%") > 0

            await until("B took the job up and leases its tasks", leased_by_b)

            states: asyncio.Queue[int] = asyncio.Queue()

            async def watch_b() -> None:
                async for job in b.watch(job_id, interval_ms=2000):
                    states.put_nowait(job.state)

            async def state_on_b(wanted: int) -> bool:
                while not states.empty():
                    if states.get_nowait() == wanted:
                        return True
                return False

            watcher = asyncio.get_running_loop().create_task(watch_b())
            try:
                await a.call("PauseJob", gateway_pb2.PauseJobRequest(job_id=job_id))
                await until(
                    "B's WatchJob shows the pause made through A", lambda: state_on_b(PAUSED)
                )

                async def nothing_running() -> bool:
                    sql = "SELECT count(*) FROM tasks WHERE job_id = :j AND state = 2"
                    return await scalar(conn, sql, j=job_id) == 0

                # Neither replica leases more: what was in flight finishes, the rest waits.
                await until("no task in flight on either replica", nothing_running)
                done = await scalar(
                    conn, "SELECT count(*) FROM results WHERE job_id = :j", j=job_id
                )
                assert done < tasks, "the job finished before the pause could show"

                # B's listening connection is terminated; it reconnects on its own.
                name = f"batchinfer {b_id}"
                listeners = "SELECT pid FROM pg_stat_activity WHERE application_name = :n"
                old = await scalar(conn, listeners, n=name)
                assert old, "B holds no listening connection"
                await scalar(
                    conn, "SELECT count(*) FROM (SELECT pg_terminate_backend(:p)) t", p=old
                )

                async def listening_again() -> bool:
                    return await scalar(conn, listeners, n=name) not in (0, old)

                await until("B listens again on a new connection", listening_again)
                await a.call("ResumeJob", gateway_pb2.ResumeJobRequest(job_id=job_id))
                await until("B's WatchJob shows the resume", lambda: state_on_b(RUNNING))
                out = io.StringIO()
                await asyncio.wait_for(b.follow_results(job_id, out), 120)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            lines = [json.loads(line) for line in out.getvalue().splitlines()]
            assert_each_task_once(lines, tasks)
            assert (await b.get(job_id)).state == gateway_pb2.JOB_STATE_COMPLETED
    finally:
        await a.close()
        await b.close()
        await engine.dispose()


def test_pause_resume_and_results_travel_by_notification(tmp_path: Path, database: str) -> None:
    fleet, replicas = start_replica_fleet(tmp_path / "fleet", database, 0)
    extra = ("--log-level", "INFO", "--replica-poll-s", str(POLL_S))
    try:
        replicas += [start_replica(fleet, i, database, extra) for i in range(2)]
        asyncio.run(scenario(tmp_path, database, [r.address for r in replicas]))
        logs = [(fleet.data_dir / f"replica-{i}.log").read_text() for i in range(2)]
        assert "driving job" in logs[1]
        assert "notification connection was closed" in logs[1]
    finally:
        stop_replica_fleet(fleet, replicas)
