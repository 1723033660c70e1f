"""Bad inputs at the gateway, against real processes (the job-file ones live in
tests/jobfile/): each gets an error naming the place, the gateway keeps serving,
and nothing half-made is left behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2

from gateway.client import GatewayClient, read_local_job
from tests.faults.harness import FaultFleet, write_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
MAX_JOB_TASKS = 100


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = FaultFleet(
        tmp_path_factory.mktemp("bad") / "fleet",
        delay_ms=0,
        gateway_extra=["--max-job-tasks", str(MAX_JOB_TASKS)],
    ).start(1)
    yield fleet
    fleet.stop()


async def run_job(address: str, job: Path) -> tuple[gateway_pb2.Job, dict[str, dict]]:
    client = GatewayClient(address)
    try:
        submitted = await client.submit(read_local_job(job, {}, None))
        out = io.StringIO()
        await client.follow_results(submitted.job_id, out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        return await client.get(submitted.job_id), {line["id"]: line for line in lines}
    finally:
        await client.close()


async def job_count(address: str) -> int:
    client = GatewayClient(address)
    try:
        jobs = await client.stub.ListJobs(gateway_pb2.ListJobsRequest(limit=1000), timeout=10)
        return len(jobs.jobs)
    finally:
        await client.close()


def job_with_prompt(folder: Path, prompt: str, rows: int = 5) -> Path:
    job = write_job(folder, rows)
    with (folder / "inputs.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "big", "text": prompt}) + "\n")
    return job


async def test_a_prompt_longer_than_the_context_fails_alone(fleet, tmp_path):
    # The echo model's context is 32768 words.
    job, lines = await run_job(fleet.gateway_address, job_with_prompt(tmp_path, "w " * 40_000))
    assert lines["big"]["status"] == "failed"
    assert lines["big"]["error"]["code"] == "PROMPT_TOO_LONG"
    assert all(lines[f"t{i}"]["status"] == "succeeded" for i in range(5))
    assert job.state == gateway_pb2.JOB_STATE_COMPLETED and job.counts.failed == 1


async def test_a_10_mb_prompt_gets_an_error_and_the_gateway_goes_on(fleet, tmp_path):
    prompt = "w " * (5 * 1024 * 1024)  # 10 MiB of text
    _, lines = await run_job(fleet.gateway_address, job_with_prompt(tmp_path, prompt))
    assert lines["big"]["status"] == "failed"
    assert lines["big"]["error"]["code"] == "PROMPT_TOO_LONG"
    assert sum(line["status"] == "succeeded" for line in lines.values()) == 5


async def test_a_job_over_max_job_tasks_is_refused_and_not_stored(fleet, tmp_path):
    before = await job_count(fleet.gateway_address)
    uploads = fleet.data_dir / "gateway" / "uploads"
    uploads_before = set(os.listdir(uploads)) if uploads.exists() else set()
    client = GatewayClient(fleet.gateway_address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.submit(read_local_job(write_job(tmp_path, MAX_JOB_TASKS + 1), {}, None))
    finally:
        await client.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_JOB_TASKS + 1} tasks" in caught.value.details()
    assert "inputs" in caught.value.details()
    assert await job_count(fleet.gateway_address) == before
    assert set(os.listdir(uploads)) == uploads_before  # its uploaded input was removed


async def test_garbage_bytes_on_the_grpc_port_do_not_hurt_the_gateway(fleet, tmp_path):
    for payload in (os.urandom(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n"):
        with socket.create_connection(("127.0.0.1", fleet.gateway_port), timeout=5) as sock:
            sock.sendall(payload)
            sock.settimeout(5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                sock.recv(1024)  # the server answers or hangs up; it must not crash
    job, lines = await run_job(fleet.gateway_address, write_job(tmp_path, 20))
    assert job.counts.succeeded == 20 and len(lines) == 20
    assert fleet.gateway is not None and fleet.gateway.popen.poll() is None
