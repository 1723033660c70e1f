"""Gateway replicas on the machine's PostgreSQL, for the replica tests and
benchmarks/replicas.py: a fresh database each time (conftest.py's `database` fixture
for a test), and a replica started on it with the echo servers of a FaultFleet."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.local import Process, gateway_argv, start_process
from tests.faults.harness import FaultFleet, free_port

PG = os.environ.get(
    "BATCHINFER_TEST_PG_ADMIN_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
TIMEOUT_S = 3  # --replica-timeout-s: a replica silent this long is presumed dead


async def admin(sql: str) -> None:
    """One statement on PostgreSQL's `test` database, outside a transaction."""
    engine = create_async_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        async with asyncio.timeout(10), engine.connect() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


def create_database(prefix: str = "replicas") -> tuple[str, str]:
    """A database of its own for the caller (drop it with drop_database): its name and its
    SQLAlchemy URL. Raises what the connection raised when PostgreSQL is not there."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    return name, PG.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def start_replica(
    fleet: FaultFleet, index: int, url: str, extra: tuple[str, ...] = ("--log-level", "INFO")
) -> Process:
    """Gateway replica `index` on the store at `url`, sending to the fleet's servers."""
    argv = gateway_argv(
        [w.address for w in fleet.workers],
        fleet.data_dir / f"replica-{index}",
        port=free_port(),
        extra=["--store-url", url, "--replica-timeout-s", str(TIMEOUT_S), *extra],
    )
    return start_process(f"replica {index}", argv, fleet.data_dir / f"replica-{index}.log", 60)


def start_replica_fleet(
    folder: Path, url: str, replicas: int, delay_ms: float = 20
) -> tuple[FaultFleet, list[Process]]:
    """Two echo servers (batches of 8, `delay_ms` per token) and `replicas` gateways on
    the store at `url`; stop them with stop_replica_fleet."""
    fleet = FaultFleet(folder, delay_ms=delay_ms, worker_extra=["--max-batch-size", "8"])
    fleet.data_dir.mkdir(parents=True)
    fleet.start(2)
    assert fleet.gateway is not None
    fleet.gateway.stop(timeout=15)  # the harness's SQLite gateway: not used here
    fleet.gateway = None
    started: list[Process] = []
    try:
        started += [start_replica(fleet, i, url) for i in range(replicas)]
    except BaseException:
        stop_replica_fleet(fleet, started)
        raise
    return fleet, started


def stop_replica_fleet(fleet: FaultFleet, replicas: list[Process]) -> None:
    for replica in replicas:
        replica.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        replica.stop(timeout=15)
    fleet.stop()


async def finish_times(url: str, job_id: str) -> list[float]:
    """When each of the job's results was stored, in order (the rate and share tests)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            query = sa.text("SELECT finished_at FROM results WHERE job_id = :job ORDER BY 1")
            return [row[0] for row in await conn.execute(query, {"job": job_id})]
    finally:
        await engine.dispose()
