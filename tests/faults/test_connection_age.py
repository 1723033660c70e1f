"""Connection recycling (--max-connection-age-s) on the gateway and the inference servers,
with a 2 s age on a job that lasts longer: every Process stream is re-opened several
times without losing a task or spending an attempt, and the CLI's WatchJob and
StreamResults re-open from their cursor without a line on stderr; directly, and with
nginx between the gateway and the servers (which does not pass a GOAWAY on)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.faults.harness import FaultFleet, Watcher, assert_each_task_once, write_job
from tests.proxy.conftest import ProxiedFleet, own_errors
from tests.proxy.nginx import nginx_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

AGE = ["--max-connection-age-s", "2", "--max-connection-age-grace-s", "5"]
SLOW = ["--max-batch-size", "8"]  # about 100 tasks/s a server: the job lasts ~12 s
TASKS = 2400


def _check(watcher: Watcher, read_gateway_log: Callable[[], str]) -> None:
    assert watcher.wait(150) == 0, watcher.log()
    gateway_log = read_gateway_log()
    attempts = assert_each_task_once(watcher.lines(), TASKS)
    assert set(attempts) == {"1"}, attempts  # no attempt spent on a recycled stream
    log = watcher.log()
    assert "waiting for the gateway" not in log and "error" not in log.lower(), log
    reopened = len(re.findall(r"server \S+ (is draining|closes its connection)", gateway_log))
    assert reopened >= 4, gateway_log[-3000:]
    assert "stream ended with tasks in flight" not in gateway_log
    assert not own_errors(gateway_log), own_errors(gateway_log)[:3]


def test_a_two_second_connection_age_loses_no_task_and_spends_no_attempt(tmp_path):
    fleet = FaultFleet(
        tmp_path / "fleet",
        delay_ms=20,
        worker_extra=[*SLOW, *AGE],
        gateway_extra=["--max-connection-age-s", "2", "--max-connection-age-grace-s", "1"],
    ).start(2)
    try:
        job = write_job(tmp_path / "job", TASKS)
        watcher = Watcher.submit(job, fleet.gateway_address, tmp_path / "out.jsonl")
        _check(watcher, (tmp_path / "fleet" / "gateway.log").read_text)
    finally:
        fleet.stop()


def test_connection_age_behind_nginx(tmp_path):
    nginx_binary()
    fleet = ProxiedFleet(
        tmp_path / "fleet",
        worker_extra=[*SLOW, *AGE],
        gateway_extra=["--max-connection-age-s", "2", "--max-connection-age-grace-s", "1"],
    )
    try:
        fleet.start(2)
        job = write_job(tmp_path / "job", TASKS)
        watcher = Watcher.submit(job, fleet.address, tmp_path / "out.jsonl")
        _check(watcher, fleet.gateway_log)
    finally:
        fleet.stop()
