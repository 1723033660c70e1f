"""Inference servers that die, freeze or hang up mid-job, as real processes.
Each test asserts the results file holds every task exactly once, succeeded."""

from __future__ import annotations

import signal

import pytest

from tests.faults.harness import FaultFleet, Watcher, assert_each_task_once, write_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def fleet(tmp_path):
    fleets: list[FaultFleet] = []

    def make(workers: int, launchers=None, **options) -> FaultFleet:
        fleet = FaultFleet(tmp_path / "fleet", **options).start(workers, launchers)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def test_sigkill_a_server_mid_job_reassigns_its_tasks(fleet, tmp_path):
    tasks = 3000
    f = fleet(2, delay_ms=10)
    watcher = Watcher.submit(
        write_job(tmp_path / "job", tasks), f.gateway_address, tmp_path / "out.jsonl"
    )
    watcher.wait_for_results(300)
    f.workers[0].kill()
    assert watcher.wait() == 0, watcher.log()
    attempts = assert_each_task_once(watcher.lines(), tasks)
    assert attempts["1"] < tasks  # the killed server's in-flight tasks ran again


def test_a_frozen_server_loses_its_leases_and_its_tasks_run_elsewhere(fleet, tmp_path):
    # SIGSTOP: the TCP connection stays up but nothing comes back; only the lease can tell.
    tasks = 2000
    f = fleet(2, delay_ms=10, gateway_extra=["--lease-s", "2"])
    watcher = Watcher.submit(
        write_job(tmp_path / "job", tasks), f.gateway_address, tmp_path / "out.jsonl"
    )
    watcher.wait_for_results(300)
    f.workers[0].signal(signal.SIGSTOP)
    try:
        assert watcher.wait() == 0, watcher.log()
    finally:
        f.workers[0].signal(signal.SIGCONT)
    attempts = assert_each_task_once(watcher.lines(), tasks)
    assert attempts["1"] < tasks
    # The lease, not TCP keepalive, is what took the tasks back.
    log = (tmp_path / "fleet" / "gateway.log").read_text()
    assert "stream dropped: no result for a whole lease" in log


def test_a_server_that_closes_its_streams_loses_no_task(fleet, tmp_path):
    tasks = 2000
    closing = ["-m", "tests.faults.closing_server", "--close-after", "10"]
    f = fleet(2, delay_ms=10, launchers={0: closing})
    watcher = Watcher.submit(
        write_job(tmp_path / "job", tasks), f.gateway_address, tmp_path / "out.jsonl"
    )
    assert watcher.wait() == 0, watcher.log()
    attempts = assert_each_task_once(watcher.lines(), tasks)
    assert attempts["1"] < tasks  # tasks out on a closed stream ran again
    assert "closing a stream" in f.workers[0].log_path.read_text()
    log = (tmp_path / "fleet" / "gateway.log").read_text()
    assert "stream ended with tasks in flight" in log


def test_a_server_that_keeps_failing_is_ejected_then_readmitted(fleet, tmp_path):
    # Every stream to server 0 ends after one result: 3 failures in a row eject it for
    # 10 s (the default); then it passes its health check and gets streams again.
    tasks = 2000
    closing = ["-m", "tests.faults.closing_server", "--close-after", "1"]
    f = fleet(2, delay_ms=20, worker_extra=["--max-batch-size", "8"], launchers={0: closing})
    watcher = Watcher.submit(
        write_job(tmp_path / "job", tasks), f.gateway_address, tmp_path / "out.jsonl"
    )
    assert watcher.wait() == 0, watcher.log()
    assert_each_task_once(watcher.lines(), tasks)
    log = (tmp_path / "fleet" / "gateway.log").read_text()
    flaky = f.workers[0].address
    ejected = log.index(f"ejecting {flaky}")
    assert f"server {flaky} ready" in log[ejected:]  # readmitted after the ejection


def test_sigterm_drains_a_server_without_a_failed_task(fleet, tmp_path):
    tasks = 2000
    f = fleet(2, delay_ms=20, worker_extra=["--max-batch-size", "8"])
    watcher = Watcher.submit(
        write_job(tmp_path / "job", tasks), f.gateway_address, tmp_path / "out.jsonl"
    )
    watcher.wait_for_results(300)
    draining = f.workers[0]
    draining.signal(signal.SIGTERM)
    assert draining.process is not None
    assert draining.process.popen.wait(30) == 0  # in-flight tasks finished within the grace
    assert watcher.popen.poll() is None  # it left while the job still ran
    assert watcher.wait() == 0, watcher.log()
    assert_each_task_once(watcher.lines(), tasks)
    assert "all tasks finished" in draining.log_path.read_text()
    log = (tmp_path / "fleet" / "gateway.log").read_text()
    assert f"server {draining.address} is draining" in log
