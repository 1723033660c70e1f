"""Faults that are not a task's fault cost it nothing: gateway restarts (SIGKILL and
SIGTERM), a gateway that drains, and inference servers that restart quickly. Real
processes; the real CLI (`submit --watch`) is the client."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.faults.harness import FaultFleet, Watcher, assert_each_task_once, write_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# About 100 tasks/s a server (batches of 8, 4 tokens x 20 ms), 64 in flight per stream.
SLOW_SERVER = ["--max-batch-size", "8", "--max-queued-tasks", "64"]


def gateway_log(fleet: FaultFleet) -> str:
    return (fleet.data_dir / "gateway.log").read_text(errors="replace")


def wait_for_more_results(watcher: Watcher, more: int, timeout: float = 60.0) -> None:
    watcher.wait_for_results(len(watcher.lines()) + more, timeout)


def wait_until_dispatching(fleet: FaultFleet, streams_before: int, timeout: float = 60) -> None:
    """Until the (re)started gateway has a stream to every server again."""
    deadline = time.monotonic() + timeout
    while gateway_log(fleet).count("ready: models") < streams_before + len(fleet.workers):
        assert time.monotonic() < deadline, gateway_log(fleet)[-3000:]
        time.sleep(0.05)


def test_ten_gateway_restarts_in_a_row_fail_no_task(tmp_path: Path) -> None:
    # The job's rate limit, not the machine's speed, sets how long it lasts: 60 s at least,
    # past ten restarts however slowly a loaded machine restarts a gateway.
    tasks = 6000
    fleet = FaultFleet(
        tmp_path / "fleet",
        delay_ms=5,
        worker_extra=["--max-queued-tasks", "64"],
        gateway_extra=["--grace-s", "1"],
    ).start(2)
    try:
        job = write_job(tmp_path / "job", tasks)
        job.write_text(job.read_text() + "schedule: {rate_limit: {requests_per_s: 100}}\n")
        watcher = Watcher.submit(job, fleet.gateway_address, tmp_path / "out.jsonl")
        wait_for_more_results(watcher, 30)
        for restart in range(10):
            # Each restart lands with tasks in flight: the gateway sends again, then goes.
            streams = gateway_log(fleet).count("ready: models")
            assert fleet.gateway is not None
            if restart % 2 == 0:
                fleet.kill_gateway()
            else:
                assert fleet.gateway.stop(timeout=30) == 0
            fleet.start_gateway()  # same port, same data dir
            wait_until_dispatching(fleet, streams)
            # ...and the client is back too (on a loaded machine its reconnect backoff
            # could otherwise miss every short window and give up as on a real outage).
            wait_for_more_results(watcher, 1, timeout=120)
        assert len(watcher.lines()) < tasks, "the job ended before the last restart"
        assert watcher.wait(240) == 0, watcher.log()
        lines = watcher.lines()
        assert_each_task_once(lines, tasks)
        # No server went away: no task spent more than the one attempt that ran it...
        assert {line["attempts"] for line in lines} == {1}
        # ...although the restarts did take leases back and send tasks again.
        assert sum(line["requeues"] for line in lines) > 0
        assert "LEASE_LOST" not in gateway_log(fleet)
    finally:
        fleet.stop()


def submit_raw(address: str) -> grpc.RpcError | None:
    """One SubmitJob straight over gRPC; the error it got, or None."""
    spec = gateway_pb2.JobSpec(
        job_yaml="version: 1\nname: late\nmodel: echo\ntask: generate\ntemplate: hi\n"
        "inputs: {rows: [{id: a}], id: '{{ id }}'}\n"
    )
    with grpc.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        try:
            stub.SubmitJob(iter([gateway_pb2.SubmitJobRequest(spec=spec)]), timeout=10)
        except grpc.RpcError as exc:
            return exc
    return None


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


def test_sigterm_drains_the_gateway_so_nothing_finished_runs_again(tmp_path: Path) -> None:
    tasks = 1200
    fleet = FaultFleet(
        tmp_path / "fleet",
        delay_ms=40,
        worker_extra=SLOW_SERVER,
        gateway_extra=["--grace-s", "60"],
    ).start(2)
    try:
        watcher = Watcher.submit(
            write_job(tmp_path / "job", tasks), fleet.gateway_address, tmp_path / "out.jsonl"
        )
        wait_for_more_results(watcher, 200)
        assert fleet.gateway is not None
        fleet.gateway.signal(signal.SIGTERM)
        # While it drains: health NOT_SERVING, submissions refused as UNAVAILABLE.
        deadline = time.monotonic() + 5
        while health(fleet.gateway_address) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "health still SERVING after SIGTERM"
            time.sleep(0.02)
        refused = submit_raw(fleet.gateway_address)
        assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in (refused.details() or "")
        assert fleet.gateway.popen.wait(60) == 0
        log = gateway_log(fleet)
        assert "drained: every task in flight finished; 0 tasks given back" in log
        fleet.start_gateway()
        assert watcher.wait(180) == 0, watcher.log()
        lines = watcher.lines()
        assert_each_task_once(lines, tasks)
        # What was in flight finished within the grace, so nothing was sent twice.
        assert [line["id"] for line in lines if line["requeues"] or line["attempts"] != 1] == []
        assert "leased by an earlier gateway process" not in gateway_log(fleet)
    finally:
        fleet.stop()


def readmissions(log: str, address: str) -> int:
    return log.count(f"server {address} ready")


def test_a_server_restarted_twice_in_quick_succession_is_not_ejected(tmp_path: Path) -> None:
    tasks = 3000
    fleet = FaultFleet(tmp_path / "fleet", delay_ms=20, worker_extra=SLOW_SERVER).start(2)
    try:
        watcher = Watcher.submit(
            write_job(tmp_path / "job", tasks), fleet.gateway_address, tmp_path / "out.jsonl"
        )
        wait_for_more_results(watcher, 100)
        worker = fleet.workers[0]
        for restart in range(2):
            worker.kill()
            time.sleep(0.3)
            worker.start()  # same port; returns once it listens
            # The gateway sends to it again within a few seconds, not after an ejection.
            deadline = time.monotonic() + 5
            while readmissions(gateway_log(fleet), worker.address) < restart + 2:
                assert time.monotonic() < deadline, gateway_log(fleet)[-3000:]
                time.sleep(0.05)
        assert watcher.wait(180) == 0, watcher.log()
        assert_each_task_once(watcher.lines(), tasks)
        assert "ejecting" not in gateway_log(fleet)
    finally:
        fleet.stop()
