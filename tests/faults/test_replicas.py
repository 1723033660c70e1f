"""Several gateway replicas on one PostgreSQL (the machine's, a fresh database per
test): any replica serves any job, a dead or frozen replica's work moves on, and
SQLite refuses a second gateway. Real processes, killed and stopped for real."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.local import StartError, gateway_argv, start_process
from tests.faults.harness import ROOT, assert_each_task_once, write_job
from tests.faults.replicas import TIMEOUT_S, start_replica_fleet, stop_replica_fleet

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def test_three_replicas_share_a_job_and_survive_a_kill_and_a_freeze(
    tmp_path: Path, database: str
) -> None:
    tasks = 6000
    fleet, replicas = start_replica_fleet(tmp_path / "fleet", database, 3)
    follower = None
    try:
        a, b, c = replicas
        submitted = cli("submit", str(write_job(tmp_path / "job", tasks)), "-g", a.address)
        assert submitted.returncode == 0, submitted.stderr
        job_id = re.search(r"\b[0-9a-f]{16}\b", submitted.stdout + submitted.stderr)
        assert job_id is not None, submitted
        job = job_id.group(0)
        # Results are fetched through the second replica while the job runs on all three.
        out = tmp_path / "out.jsonl"
        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "results",
                job,
                "-g",
                b.address,
                "-o",
                str(out),
                "--timeout",
                "120",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while "driving job" not in (fleet.data_dir / "replica-2.log").read_text():
            assert time.monotonic() < deadline, "replica 2 never took up the job"
            time.sleep(0.2)
        status = cli("status", job, "-g", c.address)
        assert status.returncode == 0 and job in status.stdout, status
        time.sleep(2)
        a.kill()  # the replica that accepted the job
        c.signal(signal.SIGSTOP)  # frozen past the heartbeat timeout, then back
        time.sleep(TIMEOUT_S * 2 + 2)
        c.signal(signal.SIGCONT)
        output, _ = follower.communicate(timeout=240)
        assert follower.returncode == 0, output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert_each_task_once(lines, tasks)
        # The replicas' faults were not the tasks' fault: no task spent a second attempt.
        assert {line["attempts"] for line in lines} == {1}
        logs = {i: (fleet.data_dir / f"replica-{i}.log").read_text() for i in range(3)}
        assert "stopped beating" in logs[1] + logs[2]
        assert "presumed dead" in logs[2]
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        stop_replica_fleet(fleet, replicas)


def test_a_second_gateway_on_one_sqlite_store_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_process("first", gateway_argv([], data), tmp_path / "first.log", 60)
    try:
        with pytest.raises(StartError) as refused:
            start_process("second", gateway_argv([], data), tmp_path / "second.log", 60)
        assert "another gateway already serves the SQLite store" in str(refused.value)
        assert "postgresql" in str(refused.value)
    finally:
        first.stop(timeout=15)
    # Once the first is gone the store is free again.
    again = start_process("again", gateway_argv([], data), tmp_path / "again.log", 60)
    again.stop(timeout=15)
