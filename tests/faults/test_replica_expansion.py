"""A replica dies (or freezes past the heartbeat timeout) while the job it accepted is
still being expanded (the machine's PostgreSQL, a fresh database per test, real
processes): another replica reads the uploaded input file from the store, takes the
expansion over from the stored task count, the frozen one stores nothing more once it
is back, and the job completes with every row exactly once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.local import Process
from tests.faults.harness import ROOT, assert_each_task_once, write_job
from tests.faults.replicas import start_replica_fleet, stop_replica_fleet
from tests.faults.test_replicas import cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(400)]

TASKS = 20_000  # 0.6 MB uploaded, ten chunks of tasks: expanding takes a while

# What the test waits for before it freezes the accepting replica, in SQL: a job is
# stored (just accepted), or some of its tasks are and it is not expanded yet.
ACCEPTED = "SELECT count(*) > 0 FROM jobs"
EXPANDING = "SELECT count(*) > 0 FROM jobs WHERE NOT expanded AND EXISTS (SELECT 1 FROM tasks)"
STATE = (
    "SELECT job_id, expanded, total, (SELECT count(*) FROM tasks) AS stored,"
    " (SELECT count(*) FROM job_inputs) AS pieces FROM jobs"
)


async def freeze_when(url: str, condition: str, replica: Process) -> sa.Row:
    """SIGSTOPs `replica` as soon as `condition` holds (polled on one connection, no
    sleeps between polls beyond a query's round trip), then reads the job's state as
    the frozen replica left it."""
    engine = create_async_engine(url)
    try:
        async with asyncio.timeout(120), engine.connect() as conn:
            while not (await conn.execute(sa.text(condition))).scalar_one():
                await conn.rollback()  # a new snapshot for the next poll
            replica.signal(signal.SIGSTOP)
            await conn.rollback()
            return (await conn.execute(sa.text(STATE))).one()
    finally:
        await engine.dispose()


async def leftovers(url: str) -> tuple[int, int]:
    """(stored pieces of uploads, jobs not expanded) once the job is over."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            pieces = (await conn.execute(sa.text("SELECT count(*) FROM job_inputs"))).scalar_one()
            query = sa.text("SELECT count(*) FROM jobs WHERE NOT expanded")
            return pieces, (await conn.execute(query)).scalar_one()
    finally:
        await engine.dispose()


def log_shows(path: Path, text: str, timeout: float) -> bool:
    """Whether the log at `path` shows `text` within `timeout` (progress, not timing)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def get_job(address: str, job_id: str) -> gateway_pb2.Job:
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        return stub.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), timeout=30).job


@pytest.mark.parametrize("when", ["expanding", "accepted", "frozen"])
def test_a_replica_takes_over_the_expansion_of_a_dead_one(
    tmp_path: Path, database: str, when: str
) -> None:
    fleet, replicas = start_replica_fleet(tmp_path / "fleet", database, 2, delay_ms=1)
    submit = None
    try:
        a, b = replicas
        job_file = write_job(tmp_path / "job", TASKS, 2)
        argv = [sys.executable, "-m", "gateway", "submit", str(job_file), "-g", a.address]
        submit = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        condition = ACCEPTED if when == "accepted" else EXPANDING
        state = asyncio.run(freeze_when(database, condition, a))
        b_log = fleet.data_dir / "replica-1.log"
        takeover = f"taking over the expansion of job {state.job_id} after"
        if when == "frozen":
            # Back once B took over (B waits for a chunk A froze in the middle of
            # committing, if it did; that ends once A runs again).
            log_shows(b_log, takeover, timeout=60)
            a.signal(signal.SIGCONT)
        else:
            a.kill()
        # The replica died with the job accepted and not all of it expanded; the file it
        # received is in the store, and replica B never had a copy of it.
        assert not state.expanded and state.stored < TASKS, state
        assert state.pieces > 0, state
        if when != "accepted":
            assert state.stored > 0, state
        job = state.job_id
        out = tmp_path / "out.jsonl"
        fetched = cli(
            "results", job, "-g", b.address, "-o", str(out), "--timeout", "240", timeout=300
        )
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert_each_task_once(lines, TASKS)
        log = b_log.read_text()
        assert takeover in log, log
        if when == "frozen":
            # A came back and was fenced: its next chunk was refused, not stored twice.
            a_log = (fleet.data_dir / "replica-0.log").read_text()
            assert f"job {job}: another replica took over its expansion" in a_log, a_log
        else:
            assert f"{takeover} {state.stored} stored" in log, log
        # The job's own counts come out right after the takeover, and nothing is left over:
        # no stored pieces of the file, no copy of it on B.
        found = get_job(b.address, job)
        assert found.expanded and found.state == gateway_pb2.JOB_STATE_COMPLETED
        assert (found.counts.total, found.counts.succeeded) == (TASKS, TASKS), found.counts
        assert (found.counts.failed, found.counts.reused) == (0, 0), found.counts
        assert asyncio.run(leftovers(database)) == (0, 0)
        uploads = fleet.data_dir / "replica-1" / "uploads"
        assert not uploads.exists() or list(uploads.iterdir()) == []
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
            submit.wait()
        stop_replica_fleet(fleet, replicas)
