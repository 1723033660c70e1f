"""Gateway replicas on PostgreSQL: the same echo job (zero delay, 2 echo servers) through
1, 2 and 3 gateway replicas on the machine's PostgreSQL (a fresh database each), and
through 1 gateway on SQLite for comparison; then the recovery after SIGKILL of one of two
replicas mid-job (echo servers with a delay, so the job outlasts the kill).

    .venv/bin/python benchmarks/replicas.py [--tasks 4000] [--recovery-tasks 3000]

tasks/s: from SubmitJob to the last result streamed to the client (given every replica's
address). CPU: the gateways' user+system time (/proc/PID/stat) from before the submit to
the last result, and PostgreSQL's: the backends serving this run's database, found in
pg_stat_activity (datname) every 0.2 s and read from /proc/PID/stat (a backend that
started during the run counts from zero; one that exits between two samples loses at most
0.2 s of its time), so other users of the shared server are not counted.
recovery_s: from the SIGKILL to the first result, recorded through the other replica, of
a task the killed replica held leased just before (tasks.lease_owner); it also prints when
the store no longer shows any lease of the killed replica (the reclaim). lost and duplicated
count task ids missing from, or repeated in, the results the client received, over every
run. Goals: cpu per task with 2 replicas within 1.2x of one, recovery < 5 s, lost =
duplicated = 0.

Last line: replicas_1_tasks_per_s=... replicas_2_tasks_per_s=... cpu_us_per_task_1=...
cpu_us_per_task_2=... recovery_s=... lost=... duplicated=...
(cpu_us_per_task_N: gateways and PostgreSQL together.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine  # noqa: E402

from benchmarks.gateway_throughput import cpu_seconds  # noqa: E402
from gateway.client import GatewayClient, read_local_job  # noqa: E402
from gateway.local import Process  # noqa: E402
from tests.faults.harness import FaultFleet, write_job  # noqa: E402
from tests.faults.replicas import (  # noqa: E402
    PG,
    TIMEOUT_S,
    create_database,
    drop_database,
    start_replica,
    start_replica_fleet,
    stop_replica_fleet,
)


@dataclass
class Run:
    label: str
    tasks: int
    seconds: float
    gateway_cpu_s: float
    pg_cpu_s: float
    lost: int
    duplicated: int
    recovery_s: float | None = None

    def cpu_us_per_task(self) -> float:
        return (self.gateway_cpu_s + self.pg_cpu_s) / self.tasks * 1e6

    def line(self) -> str:
        return (
            f"{self.label}: {self.tasks / self.seconds:.0f} tasks/s ({self.seconds:.1f} s), "
            f"CPU per task: gateways {self.gateway_cpu_s / self.tasks * 1e6:.0f} us, "
            f"PostgreSQL {self.pg_cpu_s / self.tasks * 1e6:.0f} us, "
            f"total {self.cpu_us_per_task():.0f} us; lost={self.lost} "
            f"duplicated={self.duplicated}"
        )


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError):
        return None  # exited


class PostgresCpu:
    """CPU time of the PostgreSQL backends serving one database (see the module docstring)."""

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.baseline: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._started = 0.0

    async def _backends(self, conn: AsyncConnection) -> dict[int, float]:
        rows = await conn.execute(
            sa.text(
                "SELECT pid, extract(epoch FROM backend_start) FROM pg_stat_activity "
                "WHERE datname = :db"
            ),
            {"db": self.database},
        )
        return {int(pid): float(start) for pid, start in rows}

    async def sample(self, stop: asyncio.Event) -> None:
        if self.database is None:
            return
        engine = create_async_engine(PG)  # the `test` database: not counted
        try:
            async with engine.connect() as conn:
                self._started = time.time()
                while True:
                    for pid, started_at in (await self._backends(conn)).items():
                        now = _cpu(pid)
                        if now is None:
                            continue
                        if pid not in self.baseline:
                            self.baseline[pid] = now if started_at < self._started else 0.0
                        self.last[pid] = now
                    await conn.rollback()
                    if stop.is_set():
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.2)
        finally:
            await engine.dispose()

    def seconds(self) -> float:
        return sum(self.last[pid] - self.baseline[pid] for pid in self.last)


async def drive(
    addresses: list[str], job_path: Path, gateways: list[Process], database: str | None
) -> tuple[float, float, float, Counter[str], str]:
    """Submits the job, follows its results to the end: (seconds, gateway CPU s, PG CPU s,
    ids received, job id)."""
    client = GatewayClient(addresses)
    pg = PostgresCpu(database)
    stop = asyncio.Event()
    try:
        await client.wait_ready()
        local = read_local_job(job_path, {}, None)
        sampler = asyncio.create_task(pg.sample(stop))
        await asyncio.sleep(0.3)  # the sampler's baseline first
        cpu_before = sum(_cpu(g.popen.pid) or 0.0 for g in gateways)
        started = time.perf_counter()
        job = await client.submit(local)
        out = io.StringIO()
        await client.follow_results(job.job_id, out)
        seconds = time.perf_counter() - started
        cpu = sum(_cpu(g.popen.pid) or 0.0 for g in gateways) - cpu_before
        stop.set()
        await sampler
    finally:
        await client.close()
    ids = Counter(json.loads(line)["id"] for line in out.getvalue().splitlines())
    return seconds, cpu, pg.seconds(), ids, job.job_id


def losses(ids: Counter[str], tasks: int) -> tuple[int, int]:
    lost = sum(1 for i in range(tasks) if f"t{i}" not in ids)
    return lost, sum(n - 1 for n in ids.values())


def throughput(fleet: FaultFleet, replicas: int, tasks: int, workdir: Path) -> Run:
    job = write_job(workdir / f"job-{replicas}", tasks, name=f"replicas-{replicas}")
    name, url = create_database("bench_replicas")
    gateways: list[Process] = []
    try:
        gateways = [start_replica(fleet, i, url) for i in range(replicas)]
        addresses = [g.address for g in gateways]
        seconds, cpu, pg, ids, _ = asyncio.run(drive(addresses, job, gateways, name))
    finally:
        for gateway in gateways:
            gateway.stop(timeout=15)
        drop_database(name)
    return Run(f"{replicas} replica(s) on PostgreSQL", tasks, seconds, cpu, pg, *losses(ids, tasks))


def sqlite_run(fleet: FaultFleet, tasks: int, workdir: Path) -> Run:
    job = write_job(workdir / "job-sqlite", tasks, name="replicas-sqlite")
    fleet.start_gateway()
    assert fleet.gateway is not None
    try:
        seconds, cpu, _, ids, _ = asyncio.run(
            drive([fleet.gateway.address], job, [fleet.gateway], None)
        )
    finally:
        fleet.gateway.stop(timeout=15)
        fleet.gateway = None
    return Run("1 gateway on SQLite", tasks, seconds, cpu, 0.0, *losses(ids, tasks))


async def _recovery_s(url: str, job_id: str, kill: Process, leased_after: int) -> float:
    """Kills `kill` once the job has `leased_after` results and returns the recovery time."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            while True:  # let the job run a little on both replicas
                done = await conn.scalar(
                    sa.text("SELECT count(*) FROM results WHERE job_id = :j"), {"j": job_id}
                )
                await conn.rollback()
                if done >= leased_after:
                    break
                await asyncio.sleep(0.1)
            first = await conn.scalar(
                sa.text("SELECT replica_id FROM replicas ORDER BY started_at")
            )
            leased = (
                await conn.execute(
                    sa.text(
                        "SELECT task_id FROM tasks WHERE job_id = :j AND lease_owner LIKE :owner"
                    ),
                    {"j": job_id, "owner": f"{first}/%"},
                )
            ).scalars()
            held = list(leased)
            await conn.rollback()
            killed_at = time.time()
            kill.signal(signal.SIGKILL)
            reclaimed: float | None = None
            while True:
                if reclaimed is None and not await conn.scalar(
                    sa.text("SELECT count(*) FROM tasks WHERE job_id = :j AND lease_owner LIKE :o"),
                    {"j": job_id, "o": f"{first}/%"},
                ):
                    reclaimed = time.time() - killed_at
                    print(f"the killed replica's leases were given back after {reclaimed:.2f} s")
                recorded = await conn.scalar(
                    sa.text(
                        "SELECT min(finished_at) FROM results WHERE job_id = :j "
                        "AND task_id = ANY(:ids) AND finished_at > :t"
                    ),
                    {"j": job_id, "ids": held, "t": killed_at},
                )
                await conn.rollback()
                if recorded is not None:
                    return float(recorded) - killed_at
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


def recovery(args: argparse.Namespace, workdir: Path) -> Run:
    """Two replicas; the first one started (the client's first address) is SIGKILLed."""
    name, url = create_database("bench_recovery")
    job = write_job(workdir / "job-recovery", args.recovery_tasks, name="recovery")
    fleet, gateways = start_replica_fleet(workdir / "recovery", url, 2)
    try:

        async def both() -> tuple[tuple[float, float, float, Counter[str], str], float]:
            driving = asyncio.create_task(drive([g.address for g in gateways], job, gateways, name))
            job_id = await _job_id(url)
            recovered = await _recovery_s(url, job_id, gateways[0], args.recovery_tasks // 6)
            return await driving, recovered

        (seconds, cpu, pg, ids, _), recovered = asyncio.run(both())
    finally:
        stop_replica_fleet(fleet, gateways)
        drop_database(name)
    tasks = args.recovery_tasks
    return Run("2 replicas, one SIGKILLed", tasks, seconds, cpu, pg, *losses(ids, tasks), recovered)


async def _job_id(url: str) -> str:
    engine = create_async_engine(url)
    try:
        while True:
            try:
                async with engine.connect() as conn:
                    found = await conn.scalar(sa.text("SELECT job_id FROM jobs"))
                if found:
                    return str(found)
            except sa.exc.ProgrammingError:
                pass  # the tables are not there yet
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--recovery-tasks", type=int, default=3000)
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start; "
        f"--replica-timeout-s {TIMEOUT_S}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        workdir = Path(tmp)
        fleet = FaultFleet(workdir / "fleet", delay_ms=0)
        fleet.data_dir.mkdir(parents=True)
        fleet.start(2)
        assert fleet.gateway is not None
        fleet.gateway.stop(timeout=15)
        fleet.gateway = None
        runs: dict[str, Run] = {}
        try:
            runs["sqlite"] = sqlite_run(fleet, args.tasks, workdir)
            print(runs["sqlite"].line(), flush=True)
            for n in (1, 2, 3):
                runs[str(n)] = throughput(fleet, n, args.tasks, workdir)
                print(runs[str(n)].line(), flush=True)
        finally:
            fleet.stop()
        runs["kill"] = recovery(args, workdir)
        print(f"{runs['kill'].line()}; recovery {runs['kill'].recovery_s:.2f} s", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    one, two = runs["1"], runs["2"]
    print(
        f"cpu_per_task_2_over_1={two.cpu_us_per_task() / one.cpu_us_per_task():.2f} (goal <= 1.2) "
        f"postgresql_1_vs_sqlite_tasks_per_s="
        f"{one.tasks / one.seconds:.0f}/{runs['sqlite'].tasks / runs['sqlite'].seconds:.0f}"
    )
    print(
        f"replicas_1_tasks_per_s={one.tasks / one.seconds:.0f} "
        f"replicas_2_tasks_per_s={two.tasks / two.seconds:.0f} "
        f"cpu_us_per_task_1={one.cpu_us_per_task():.0f} "
        f"cpu_us_per_task_2={two.cpu_us_per_task():.0f} "
        f"recovery_s={runs['kill'].recovery_s:.2f} "
        f"lost={sum(r.lost for r in runs.values())} "
        f"duplicated={sum(r.duplicated for r in runs.values())}"
    )


if __name__ == "__main__":
    main()
