"""The real CLI given every replica of a service on one PostgreSQL (a fresh database):
`submit --watch`, `results -o` and `status` move to another replica when the one they
talk to is SIGKILLed, and go on from their cursor: every task once in each file, and the
exit codes of a job that succeeded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.harness import ROOT, Watcher, assert_each_task_once, write_job
from tests.faults.replicas import start_replica_fleet, stop_replica_fleet

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]


def test_the_cli_moves_to_another_replica_when_its_own_is_killed(
    tmp_path: Path, database: str
) -> None:
    tasks = 6000
    fleet, replicas = start_replica_fleet(tmp_path / "fleet", database, 3)
    follower = None
    try:
        a, b, c = (replica.address for replica in replicas)
        # The CLI talks to the first address it is given: the watcher to a, the follower to c.
        job_file = write_job(tmp_path / "job", tasks)
        watcher = Watcher.submit(job_file, f"{a},{b},{c}", tmp_path / "watched.jsonl")
        job = watcher.job_id()
        follower_log = (tmp_path / "follower.log").open("w")
        follower = subprocess.Popen(
            [sys.executable, "-m", "gateway", "results", job, "-o", str(tmp_path / "r.jsonl")],
            cwd=ROOT,
            env={**os.environ, "BATCHINFER_GATEWAY": f"{c},{a},{b}", "COLUMNS": "200"},
            stdout=follower_log,
            stderr=subprocess.STDOUT,
        )
        watcher.wait_for_results(500)
        replicas[0].kill()  # the watcher's replica, the one that accepted the job
        watcher.wait_for_results(2000)
        replicas[2].kill()  # the follower's; the next in its list (a) is dead too
        status = subprocess.run(
            [sys.executable, "-m", "gateway", "status", job, "-g", a, "-g", f"{c},{b}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200"},
            timeout=60,
        )
        assert status.returncode == 0 and job in status.stdout, status
        assert watcher.wait(240) == 0, watcher.log()
        assert follower.wait(240) == 0, (tmp_path / "follower.log").read_text()
        assert_each_task_once(watcher.lines(), tasks)
        results = Watcher(follower, tmp_path / "r.jsonl", tmp_path / "follower.log")
        assert_each_task_once(results.lines(), tasks)
        assert f"lost the gateway at {a}" in watcher.log() and f"going on at {b}" in watcher.log()
        assert f"lost the gateway at {c}" in results.log() and f"going on at {b}" in results.log()
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        stop_replica_fleet(fleet, replicas)
