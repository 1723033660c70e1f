"""Backpressure and bounded memory (issue 7, item 5): a slow server stops dispatch
through its credits, a large job with a slow server keeps the gateway's memory
flat, and an Execute client that reads slowly holds the gateway to its window."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2

from gateway.api import EXECUTE_WINDOW
from gateway.client import GatewayClient, read_local_job
from tests.faults.harness import FaultFleet
from tests.gateway.conftest import Fleet, job_yaml
from tests.gateway.fake_server import Script

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    await fleet.stop()


async def test_a_slow_server_never_holds_more_tasks_than_its_credits(fleet):
    await fleet.start([Script(window=4, delay_s=0.02), Script(window=16, delay_s=0.002)])
    job, lines = await fleet.run_job(job_yaml(300))
    assert job.counts.succeeded == 300 and len(lines) == 300
    slow, fast = fleet.fakes
    assert sum(slow.received.values()) > 0  # it took part
    assert slow.max_outstanding <= 4
    assert fast.max_outstanding <= 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def matrix_job(folder: Path, tasks: int, name: str = "memory") -> Path:
    """A matrix job of `tasks` tasks: expanded lazily, nothing uploaded."""
    side = int(tasks**0.5)
    assert side * side == tasks
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    job.write_text(
        f"version: 1\nname: {name}\nmodel: echo\ntask: generate\n"
        "template: 'a{{ a }} b{{ b }} x y z'\nparams: {max_new_tokens: 2}\n"
        f"inputs:\n  matrix: {{a: {list(range(side))}, b: {list(range(side))}}}\n"
        "  id: 'a{{ a }}-b{{ b }}'\n"
    )
    return job


async def wait_done(client: GatewayClient, job_id: str, done: int) -> gateway_pb2.Job:
    """Polls the job until `done` of its tasks ended (progress, not timing)."""
    for _ in range(3000):
        job = await client.get(job_id)
        c = job.counts
        if c.succeeded + c.failed + c.cancelled >= done:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"the job did not reach {done} tasks done: {job.counts}")


@pytest.mark.slow
async def test_gateway_memory_stays_flat_with_a_large_job_and_a_slow_server(tmp_path):
    tasks = 200_704  # 448 x 448
    f = FaultFleet(tmp_path / "fleet", delay_ms=1).start(1)
    client = GatewayClient(f.gateway_address)
    try:
        assert f.gateway is not None
        pid = f.gateway.popen.pid
        submitted = await client.submit(read_local_job(matrix_job(tmp_path, tasks), {}, None))
        await wait_done(client, submitted.job_id, 2_000)
        early = rss_mb(pid)
        job = await wait_done(client, submitted.job_id, 12_000)
        late = rss_mb(pid)
        done = job.counts.succeeded
        assert done < tasks // 2  # the job is far from done: most tasks wait in the store
        assert late < 400, f"gateway RSS {late:.0f} MB"
        # 10,000 more tasks done must not cost memory per task (a leak of ~1 KB/task = 10 MB).
        assert late - early < 40, f"RSS {early:.0f} MB -> {late:.0f} MB"
    finally:
        await client.close()
        f.stop()


def execute_requests(tasks: int, per_request: int, width: int):  # type: ignore[no-untyped-def]
    for start in range(0, tasks, per_request):
        yield gateway_pb2.ExecuteRequest(
            tasks=[
                task_pb2.Task(
                    task_id=str(i),
                    model="m",
                    task_type=task_pb2.TASK_TYPE_GENERATE,
                    prompt=f"{i} " + "y" * width,
                )
                for i in range(start, min(start + per_request, tasks))
            ]
        )


async def test_a_slow_execute_reader_holds_the_gateway_to_its_window(fleet):
    tasks, per_request = 4000, 100
    await fleet.start([Script(window=64)])
    fake = fleet.fakes[0]
    # No BDP probing: the client's HTTP/2 window stays small, so what is not read stays
    # at the gateway instead of in the client's transport buffers.
    channel = grpc.aio.insecure_channel(
        fleet.gateway.address,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)],
    )
    stub = gateway_pb2_grpc.BatchGatewayStub(channel)
    try:
        call = stub.Execute(execute_requests(tasks, per_request, width=10_000))
        seen: set[str] = set()
        gaps: list[int] = []
        responses = 0
        async for response in call:
            seen.update(r.task_id for r in response.results)
            responses += 1
            if responses <= 40:  # read slowly for a while, then drain
                gaps.append(sum(fake.received.values()) - len(seen))
                await asyncio.sleep(0.05)
        assert seen == {str(i) for i in range(tasks)}
        # Sent to servers but not yet read by the client: at most the window, one response
        # of up to 64 results, and what HTTP/2 flow control lets through (a few 10 KB results).
        assert max(gaps) <= EXECUTE_WINDOW + 64 + 16, gaps
        assert sum(fake.received.values()) == tasks
    finally:
        await channel.close()


@pytest.mark.slow
async def test_a_slow_execute_reader_does_not_grow_the_gateways_memory(tmp_path):
    f = FaultFleet(tmp_path / "fleet", delay_ms=0).start(1)
    assert f.gateway is not None
    pid = f.gateway.popen.pid
    channel = grpc.aio.insecure_channel(f.gateway_address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        tasks = 12_000  # 20 KB each: 240 MB would pile up at a gateway without a bound
        call = stub.Execute(execute_requests(tasks, 50, width=20_000))
        samples: list[float] = []
        read = 0
        started = time.monotonic()
        async for response in call:
            read += len(response.results)
            if len(samples) < 20 and time.monotonic() - started > 0.5 * len(samples):
                samples.append(rss_mb(pid))  # while the client reads one response per 50 ms
            if len(samples) < 20:
                await asyncio.sleep(0.05)
        assert read == tasks
        assert len(samples) == 20
        assert max(samples[5:]) - samples[5] < 60, samples
    finally:
        await channel.close()
        f.stop()
