"""SIGKILL the gateway mid-job and start it again on the same port and data dir:
the job resumes, the CLI client reconnects, and the results file is exact."""

from __future__ import annotations

import pytest

from tests.faults.harness import FaultFleet, Watcher, assert_each_task_once, write_job

SLOW = ["--max-batch-size", "8"]  # about 100 tasks/s a server: the job outlives two restarts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_sigkill_the_gateway_mid_job_and_restart_it(tmp_path):
    tasks = 3000
    fleet = FaultFleet(tmp_path / "fleet", delay_ms=20, worker_extra=SLOW).start(2)
    try:
        job = write_job(tmp_path / "job", tasks)
        watcher = Watcher.submit(job, fleet.gateway_address, tmp_path / "out.jsonl")
        watcher.wait_for_results(500)
        fleet.kill_gateway()
        fleet.start_gateway()  # same --port, same --data-dir
        watcher.wait_for_results(1500)
        fleet.kill_gateway()
        fleet.start_gateway()
        assert watcher.wait() == 0, watcher.log()
        assert_each_task_once(watcher.lines(), tasks)
        log = (tmp_path / "fleet" / "gateway.log").read_text()
        assert log.count("resumed 1 unfinished jobs") == 2  # both kills landed mid-job
    finally:
        fleet.stop()
