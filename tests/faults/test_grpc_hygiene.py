"""gRPC hygiene (issue 7, item 6): a deadline on every unary call, keepalive
settings both ends agree on, and deliberate message-size limits with a clear
error for an oversized message."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import settings
from gateway.client import GatewayClient, read_local_job
from gateway.server import serve
from gateway.settings import GatewayConfig
from tests.faults.harness import ROOT, write_job
from tests.gateway.conftest import Fleet
from tests.gateway.fake_server import FakeInferenceServer, Script

pytestmark = pytest.mark.timeout(120)

UNARY = ("GetJob", "ListJobs", "CancelJob", "PauseJob", "ResumeJob", "UpdateJob", "Generate")


async def _hang(self, request, context):  # type: ignore[no-untyped-def]
    await asyncio.Event().wait()


# A gateway that takes every call and never answers.
SilentGateway = type(
    "SilentGateway",
    (gateway_pb2_grpc.BatchGatewayServicer,),
    {name: _hang for name in (*UNARY, "SubmitJob")},
)


@pytest.fixture
async def silent_gateway():
    server = grpc.aio.server()
    gateway_pb2_grpc.add_BatchGatewayServicer_to_server(SilentGateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


# --------------------------------------------------------------------- deadlines


async def test_the_clients_unary_calls_end_at_their_deadline(silent_gateway, tmp_path):
    client = GatewayClient(silent_gateway, unary_timeout_s=0.5, submit_timeout_s=0.5)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as got:
            await client.get("job-1")
        assert got.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        job = read_local_job(write_job(tmp_path, 3), {}, None)
        with pytest.raises(grpc.aio.AioRpcError) as submitted:
            await client.submit(job)
        assert submitted.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await client.close()


@pytest.mark.slow
def test_every_cli_command_ends_at_its_deadline(tmp_path):
    """The CLI's unary calls carry a 30 s deadline: each command fails, none hangs."""
    script = tmp_path / "silent.py"
    script.write_text(
        "import asyncio, grpc\n"
        "from tests.faults.test_grpc_hygiene import SilentGateway\n"
        "from batchinfer.v1 import gateway_pb2_grpc\n"
        "async def main():\n"
        "    server = grpc.aio.server()\n"
        "    gateway_pb2_grpc.add_BatchGatewayServicer_to_server(SilentGateway(), server)\n"
        "    print(server.add_insecure_port('127.0.0.1:0'), flush=True)\n"
        "    await server.start()\n"
        "    await server.wait_for_termination()\n"
        "asyncio.run(main())\n"
    )
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}
    silent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    try:
        assert silent.stdout is not None
        address = f"127.0.0.1:{silent.stdout.readline().strip()}"
        commands = [["status"], ["status", "j1"], ["cancel", "j1"], ["pause", "j1"]]
        commands += [["resume", "j1"], ["priority", "j1", "2"]]
        argv = [sys.executable, "-m", "gateway"]
        running = [
            subprocess.Popen(
                [*argv, *command, "-g", address],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
            for command in commands
        ]
        for command, process in zip(commands, running, strict=True):
            _, stderr = process.communicate(timeout=100)
            assert process.returncode != 0, command
            assert "DEADLINE_EXCEEDED" in stderr, (command, stderr)
    finally:
        silent.kill()
        silent.wait(10)


class SilentInfo(FakeInferenceServer):
    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()


async def test_the_gateways_calls_to_servers_end_at_their_deadline(tmp_path, caplog):
    server = grpc.aio.server()
    from batchinfer.v1 import inference_pb2_grpc

    inference_pb2_grpc.add_InferenceServerServicer_to_server(SilentInfo(Script()), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    address = f"127.0.0.1:{port}"
    config = GatewayConfig(workers=(address,), data_dir=tmp_path, unary_timeout_s=0.3)
    caplog.set_level(logging.DEBUG, logger="gateway.links")  # repeats log at DEBUG
    gateway = await serve(config)
    try:
        for _ in range(100):  # the link retries with backoff; two failures are enough
            failed = [r for r in caplog.records if "DEADLINE_EXCEEDED" in r.getMessage()]
            if len(failed) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(failed) >= 2, [r.getMessage() for r in caplog.records]
        assert address in failed[0].getMessage()
    finally:
        await gateway.stop(grace=0.1)
        await server.stop(None)


# --------------------------------------------------------------------- keepalive


def test_the_keepalive_constants_agree():
    client = dict(settings.KEEPALIVE_OPTIONS)
    server = dict(settings.SERVER_KEEPALIVE_OPTIONS)
    # A client that pings more often than the server allows gets GOAWAY "too_many_pings".
    assert (
        client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_ping_interval_without_data_ms"]
    )
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.keepalive_timeout_ms"] < client["grpc.keepalive_time_ms"]


def test_the_inference_server_allows_the_gateways_pings(monkeypatch):
    """The inference server must accept a ping every keepalive_time_ms; gRPC's default
    (one per 5 min, 2 strikes) breaks an idle Process stream after ~90 s."""
    from services.inference import server as inference_server

    seen: list[dict] = []

    def spy(*args, options=(), **kwargs):  # type: ignore[no-untyped-def]
        seen.append(dict(options))
        raise RuntimeError("spied")

    monkeypatch.setattr(inference_server.grpc.aio, "server", spy)
    with pytest.raises(RuntimeError, match="spied"):
        asyncio.run(inference_server.serve(_echo_config()))
    allowed = seen[0].get("grpc.http2.min_ping_interval_without_data_ms", 300_000)
    assert allowed <= dict(settings.KEEPALIVE_OPTIONS)["grpc.keepalive_time_ms"]
    assert seen[0].get("grpc.keepalive_permit_without_calls") == 1


def _echo_config():  # type: ignore[no-untyped-def]
    from services.inference.config import ServerConfig

    return ServerConfig(backend="echo", model="echo", port=0)


async def _idle_stream(server_options: list, client_options: list, idle_s: float) -> str:
    """Opens a Health.Watch stream that sends nothing after its first answer; returns
    'up' if it is still open after idle_s, else the status it broke with."""
    server = grpc.aio.server(options=server_options)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=client_options)
    try:
        call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        await call.read()
        try:
            await asyncio.wait_for(call.read(), idle_s)
        except TimeoutError:
            return "up"
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return "answered"
    finally:
        await channel.close()
        await server.stop(None)


def _scaled(options: tuple[tuple[str, int], ...], factor: float) -> list[tuple[str, int]]:
    timed = {"grpc.keepalive_time_ms", "grpc.http2.min_ping_interval_without_data_ms"}
    timed.add("grpc.keepalive_timeout_ms")
    return [(k, int(v * factor) if k in timed else v) for k, v in options]


@pytest.mark.slow
async def test_a_long_idle_stream_stays_up_with_the_keepalive_settings():
    # The real settings scaled by 1/30 (a ping a second), over six keepalive intervals.
    client = _scaled(settings.KEEPALIVE_OPTIONS, 1 / 30)
    server = _scaled(settings.SERVER_KEEPALIVE_OPTIONS, 1 / 30)
    assert await _idle_stream(server, client, idle_s=6.0) == "up"
    # The same pings against gRPC's default server policy: the check can fail.
    broke = await _idle_stream([], client, idle_s=6.0)
    assert broke.startswith("UNAVAILABLE") and "pings" in broke


# ------------------------------------------------------------------ message sizes

LIMIT = 1024 * 1024


@pytest.fixture
async def small_gateway(tmp_path):
    fleet = Fleet(tmp_path)
    await fleet.start([Script(window=64)], max_message_bytes=LIMIT)
    yield fleet
    await fleet.stop()


def _big_task() -> task_pb2.Task:
    return task_pb2.Task(
        model="m", task_type=task_pb2.TASK_TYPE_GENERATE, prompt="w " * (LIMIT // 2 + 10)
    )


def _assert_too_large(exc: grpc.aio.AioRpcError) -> None:
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {LIMIT}" in exc.details(), exc.details()  # names the limit


async def test_an_oversized_generate_or_execute_names_the_limit(small_gateway):
    stub = small_gateway.client.stub
    with pytest.raises(grpc.aio.AioRpcError) as generate:
        await stub.Generate(gateway_pb2.GenerateRequest(task=_big_task()), timeout=10)
    _assert_too_large(generate.value)
    with pytest.raises(grpc.aio.AioRpcError) as execute:
        call = stub.Execute(iter([gateway_pb2.ExecuteRequest(tasks=[_big_task()])]), timeout=10)
        async for _ in call:
            pass
    _assert_too_large(execute.value)
    # The gateway goes on serving tasks of a normal size.
    small = task_pb2.Task(model="m", task_type=task_pb2.TASK_TYPE_GENERATE, prompt="hi")
    answer = await stub.Generate(gateway_pb2.GenerateRequest(task=small), timeout=10)
    assert answer.result.text.text == "ok:hi"


async def test_an_oversized_job_spec_names_the_limit_but_a_large_input_file_goes(
    small_gateway, tmp_path
):
    spec = gateway_pb2.JobSpec(job_yaml="x" * (LIMIT + 10))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await small_gateway.client.stub.SubmitJob(
            iter([gateway_pb2.SubmitJobRequest(spec=spec)]), timeout=10
        )
    _assert_too_large(caught.value)
    # The same bytes as an input file travel in chunks under the limit.
    job = write_job(tmp_path / "big", 300)
    with (job.parent / "inputs.jsonl").open("a") as handle:
        for i in range(300, 500):
            handle.write(json.dumps({"id": f"t{i}", "text": f"w{i} " + "y" * 8000}) + "\n")
    assert (job.parent / "inputs.jsonl").stat().st_size > LIMIT
    final, lines = await small_gateway.run_job(job.read_text(), path=job)
    assert final.counts.succeeded == 500 and len(lines) == 500


async def results_after_completion(fleet: Fleet, job: Path) -> list[dict]:
    """Waits for the job to end, then reads its results: all of them in one page."""
    assert fleet.client is not None
    submitted = await fleet.client.submit(read_local_job(job, {}, None))
    while (await fleet.client.get(submitted.job_id)).state < gateway_pb2.JOB_STATE_COMPLETED:
        await asyncio.sleep(0.1)
    out = io.StringIO()
    await fleet.client.follow_results(submitted.job_id, out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def wide_job(folder: Path, tasks: int, width: int) -> Path:
    job = write_job(folder, 0)
    with (job.parent / "inputs.jsonl").open("w") as handle:
        for i in range(tasks):
            handle.write(json.dumps({"id": f"t{i}", "text": f"w{i} " + "y" * width}) + "\n")
    return job


async def test_a_page_of_results_larger_than_a_message_is_split(small_gateway, tmp_path):
    # 500 results of ~8 KB: one page of StreamResults would be 4 MB, over the 1 MiB limit.
    lines = await results_after_completion(small_gateway, wide_job(tmp_path / "w", 500, 8000))
    assert sorted(line["id"] for line in lines) == sorted(f"t{i}" for i in range(500))


async def test_the_client_receives_pages_over_grpcs_4_mib_default(tmp_path):
    fleet = Fleet(tmp_path)
    await fleet.start([Script(window=64)])
    try:
        # 500 results of ~12 KB (6 MB) in one page, under the gateway's 64 MiB limit.
        lines = await results_after_completion(fleet, wide_job(tmp_path / "w", 500, 12000))
        assert len(lines) == 500
    finally:
        await fleet.stop()
