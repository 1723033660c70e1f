"""Policy across gateway replicas on one PostgreSQL: a job's rate limit holds for the
service as a whole (each replica sends its share, 1/live replicas), not per replica."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from gateway.local import Process
from tests.faults.harness import FaultFleet, assert_each_task_once, write_job
from tests.faults.replicas import finish_times, start_replica
from tests.faults.test_replicas import cli

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

RATE = 60.0  # requests_per_s of the job
TOLERANCE = 0.25  # the service-wide rate must lie within ±25% of it (3 replicas: 3× before)


def steady_rate(times: list[float]) -> float:
    """Results per second between the 25th and the 90th percentile of their times: past
    the start (the replicas take the job up within a housekeeping round, each with its
    share of the burst) and before the tail."""
    lo, hi = int(len(times) * 0.25), int(len(times) * 0.9)
    return (hi - lo) / (times[hi] - times[lo])


def test_a_jobs_rate_limit_holds_across_three_replicas(tmp_path: Path, database: str) -> None:
    tasks = 900  # about 15 s at 60/s; three replicas each at the full rate would take 5 s
    fleet = FaultFleet(tmp_path / "fleet", delay_ms=1)
    replicas: list[Process] = []
    try:
        fleet.start(2)
        assert fleet.gateway is not None
        fleet.gateway.stop(timeout=15)  # the harness's SQLite gateway: not used here
        replicas = [start_replica(fleet, i, database) for i in range(3)]
        a, b, _ = replicas
        rated = f"{{rate_limit: {{requests_per_s: {RATE:g}}}}}"
        job_file = write_job(tmp_path / "job", tasks, 2, "rated", schedule=rated)
        submitted = cli("submit", str(job_file), "-g", a.address)
        assert submitted.returncode == 0, submitted.stderr
        found = re.search(r"\b[0-9a-f]{16}\b", submitted.stdout + submitted.stderr)
        assert found is not None, submitted
        job = found.group(0)
        out = tmp_path / "out.jsonl"
        fetched = cli(
            "results", job, "-g", b.address, "-o", str(out), "--timeout", "120", timeout=150
        )
        assert fetched.returncode == 0, fetched.stderr
        assert_each_task_once([json.loads(line) for line in out.read_text().splitlines()], tasks)
        logs = [(fleet.data_dir / f"replica-{i}.log").read_text() for i in (1, 2)]
        assert all("driving job" in log for log in logs), "a replica never took up the job"
        rate = steady_rate(asyncio.run(finish_times(database, job)))
        print(
            f"rate_limit={RATE:g}/s on 3 replicas: measured {rate:.1f}/s ({rate / RATE - 1:+.1%})"
        )
        assert abs(rate / RATE - 1) <= TOLERANCE, f"{rate:.1f} results/s for a limit of {RATE:g}/s"
    finally:
        for replica in replicas:
            replica.stop(timeout=15)
        fleet.gateway = None
        fleet.stop()
