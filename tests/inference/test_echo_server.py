"""The gRPC server in-process on 127.0.0.1:0 with the echo backend."""

from __future__ import annotations

import asyncio
import threading

import grpc
from batchinfer.v1 import inference_pb2, inference_pb2_grpc, task_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.inference.backends.echo import EchoBackend
from services.inference.server import SERVICE_NAME
from tests.inference.conftest import StreamClient, channel_to, gen_task, running_server, stream_to

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SlowLoadingEcho(EchoBackend):
    """Echo whose load() blocks until the test lets it finish."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.release = threading.Event()

    def load(self) -> None:
        assert self.release.wait(30)


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return response.status


async def test_results_stream_back_with_counts_timings_and_credits() -> None:
    async with running_server(max_queued_tasks=64) as server, stream_to(server) as client:
        assert client.initial_credits == 64
        client.send(gen_task(f"t{i}", f"one two three {i}", max_new_tokens=3) for i in range(10))
        results = await client.wait_for(10)
        r = results["t7"]
        assert r.WhichOneof("output") == "text"
        assert r.text.text == "echo: one two"
        assert r.text.finish_reason == task_pb2.FINISH_REASON_LENGTH
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 3)
        assert r.timings.queue_ms >= 0 and r.timings.compute_ms >= 0
        assert r.server == server.address == f"127.0.0.1:{server.port}"
        assert r.attempt == 1
        # Every finished task gave its credit back.
        assert client.credits == 64
        assert sum(len(resp.results) for resp in client.responses) == 10


async def test_each_result_comes_back_as_soon_as_its_batch_finishes() -> None:
    # 20 ms per output token; different max_new_tokens never share a batch.
    async with running_server(echo_delay_ms_per_token=20) as server, stream_to(server) as client:
        words = " ".join(["w"] * 60)
        client.send([gen_task("short", words, max_new_tokens=1)])
        client.send([gen_task("long", words, max_new_tokens=40)])
        loop = asyncio.get_running_loop()
        arrived = {}
        while len(arrived) < 2:
            response = await client.read_one()
            assert response is not None
            arrived.update({r.task_id: loop.time() for r in response.results})
        assert client.order == ["short", "long"]
        assert arrived["long"] - arrived["short"] > 0.5  # the long batch takes 0.8 s
        assert client.results["short"].usage.completion_tokens == 1
        assert client.results["long"].usage.completion_tokens == 40


async def test_a_slow_batch_does_not_hold_up_the_stream_of_another_client() -> None:
    async with (
        running_server(echo_delay_ms_per_token=5) as server,
        stream_to(server) as a,
        stream_to(server) as b,
    ):
        a.send([gen_task("a", "x " * 50, max_new_tokens=30)])
        await asyncio.sleep(0.01)
        b.send([gen_task("b", "y", max_new_tokens=1)])
        await asyncio.gather(a.wait_for(1), b.wait_for(1))
        assert a.results["a"].text.text.startswith("echo: x")
        assert b.results["b"].text.text == "echo:"


async def test_results_go_to_the_stream_that_sent_the_task() -> None:
    async with running_server(max_batch_size=16) as server, channel_to(server) as channel:
        clients = [await StreamClient(channel).open() for _ in range(6)]
        for n, client in enumerate(clients):
            client.send(gen_task(f"{n}-{i}", f"stream {n} task {i}") for i in range(40))
        await asyncio.gather(*(c.wait_for(40) for c in clients))
        for n, client in enumerate(clients):
            assert set(client.results) == {f"{n}-{i}" for i in range(40)}
            assert all(f"stream {n}" in r.text.text for r in client.results.values())
            client.close()


async def test_a_bad_task_fails_alone_with_a_clear_code_and_message() -> None:
    bad = {
        "zero": gen_task("zero", max_new_tokens=0),
        "cold": gen_task("cold", temperature=-0.5),
        "kind": task_pb2.Task(task_id="kind", prompt="hi"),
        "nolabels": task_pb2.Task(
            task_id="nolabels", task_type=task_pb2.TASK_TYPE_CLASSIFY, prompt="hi"
        ),
        "empty": gen_task("empty", ""),
        "nomsgs": task_pb2.Task(task_id="nomsgs", task_type=task_pb2.TASK_TYPE_CHAT),
        "long": gen_task("long", " ".join(["w"] * 40000)),
    }
    good = [gen_task(f"ok{i}", "fine prompt", max_new_tokens=2) for i in range(5)]
    async with running_server() as server, stream_to(server) as client:
        client.send([good[0], bad["zero"], good[1], bad["cold"], bad["kind"], good[2]])
        client.send([bad["nolabels"], good[3], bad["empty"], bad["nomsgs"], bad["long"], good[4]])
        results = await client.wait_for(12)
    for i in range(5):
        assert results[f"ok{i}"].text.text == "echo: fine", results[f"ok{i}"]
    errors = {k: results[k].error for k in bad}
    assert all(results[k].WhichOneof("output") == "error" for k in bad)
    assert errors["zero"].code == "INVALID_ARGUMENT"
    assert errors["zero"].message == "max_new_tokens must be >= 1, got 0"
    assert errors["cold"].message == "temperature must be >= 0, got -0.5"
    assert errors["kind"].code == "INVALID_ARGUMENT" and "task_type" in errors["kind"].message
    assert "labels" in errors["nolabels"].message
    assert "prompt must not be empty" in errors["empty"].message
    assert "messages" in errors["nomsgs"].message
    assert errors["long"].code == "PROMPT_TOO_LONG"
    assert "40000" in errors["long"].message and "32768" in errors["long"].message
    assert not any(e.retryable for e in errors.values())
    assert all(results[k].text.finish_reason == 0 for k in bad)


async def test_every_task_type_answers() -> None:
    tasks = [
        task_pb2.Task(
            task_id="chat",
            task_type=task_pb2.TASK_TYPE_CHAT,
            messages=[task_pb2.ChatMessage(role="user", content="hi there")],
        ),
        task_pb2.Task(
            task_id="cls",
            task_type=task_pb2.TASK_TYPE_CLASSIFY,
            prompt="great film",
            labels=["pos", "neg", "meh"],
        ),
        task_pb2.Task(
            task_id="score", task_type=task_pb2.TASK_TYPE_SCORE, prompt="a", continuation="b c"
        ),
        task_pb2.Task(task_id="emb", task_type=task_pb2.TASK_TYPE_EMBED, prompt="hello"),
    ]
    async with running_server() as server, stream_to(server) as client:
        client.send(tasks)
        results = await client.wait_for(4)
    assert results["chat"].text.text == "echo: hi there"
    cls = results["cls"].classification
    assert abs(sum(s.probability for s in cls.scores) - 1) < 1e-9
    assert cls.label == max(cls.scores, key=lambda s: s.probability).label
    assert results["score"].score.token_count == 2
    values = results["emb"].embedding.values
    assert abs(sum(v * v for v in values) - 1) < 1e-5


async def test_cancel_drops_queued_tasks() -> None:
    # One task per batch and 30 ms per batch: tasks behind the first one wait in the queue.
    async with (
        running_server(max_batch_size=1, echo_delay_ms_per_token=30) as server,
        stream_to(server) as client,
    ):
        client.send(gen_task(f"t{i}", "a", max_new_tokens=1) for i in range(4))
        await asyncio.sleep(0.01)
        client.cancel(["t2", "t3", "unknown"])
        results = await client.wait_for(4)
    for tid in ("t2", "t3"):
        assert results[tid].error.code == "CANCELLED"
    assert results["t0"].text.text == "echo:"
    assert results["t1"].text.text == "echo:"
    assert client.order.index("t2") < client.order.index("t1")


async def test_health_is_not_serving_while_the_model_loads() -> None:
    backend = SlowLoadingEcho()
    async with running_server(backend, wait=False) as server, channel_to(server) as channel:
        assert await health_of(channel) == NOT_SERVING
        assert await health_of(channel, SERVICE_NAME) == NOT_SERVING
        client = await StreamClient(channel).open()
        client.send([gen_task("early")])
        result = (await client.wait_for(1))["early"]
        assert result.error.code == "UNAVAILABLE" and result.error.retryable
        stub = inference_pb2_grpc.InferenceServerStub(channel)
        try:
            await stub.Info(inference_pb2.InfoRequest())
            raise AssertionError("Info answered while loading")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        backend.release.set()
        await server.wait_ready(10)
        assert await health_of(channel) == SERVING
        assert await health_of(channel, SERVICE_NAME) == SERVING
        client.send([gen_task("later")])
        assert (await client.wait_for(2))["later"].text.text == "echo: hello world"
        client.close()


async def test_drain_finishes_in_flight_work_and_refuses_new_tasks() -> None:
    async with running_server(echo_delay_ms_per_token=20) as server, channel_to(server) as channel:
        client = await StreamClient(channel).open()
        client.send(gen_task(f"t{i}", "w " * 20, max_new_tokens=10) for i in range(3))
        await asyncio.sleep(0.02)  # the first batch is running: 10 tokens x 20 ms
        drain = asyncio.create_task(server.drain(grace_s=10))
        await asyncio.sleep(0.01)
        assert await health_of(channel) == NOT_SERVING
        assert await health_of(channel, SERVICE_NAME) == NOT_SERVING
        client.send([gen_task("late")])
        status = await client.read_to_end()
        assert await drain is True
    assert status == grpc.StatusCode.OK
    for i in range(3):
        assert client.results[f"t{i}"].text.text.startswith("echo: w")
    late = client.results["late"].error
    assert late.code == "UNAVAILABLE" and late.retryable
    assert client.draining_flags == 1


async def test_a_stream_opened_while_draining_is_told_at_once() -> None:
    async with running_server() as server:
        await server.drain(grace_s=1)
        async with channel_to(server) as channel:
            client = await StreamClient(channel).open()
            assert client.draining_flags == 1
            client.close()


async def test_drain_fails_what_the_grace_period_cannot_finish() -> None:
    async with (
        running_server(max_batch_size=1, echo_delay_ms_per_token=100) as server,
        stream_to(server) as client,
    ):
        client.send(gen_task(f"t{i}", "w " * 5, max_new_tokens=3) for i in range(5))
        await asyncio.sleep(0.05)
        assert await server.drain(grace_s=0.2) is False
        results = await client.wait_for(5)
    codes = [results[f"t{i}"].WhichOneof("output") for i in range(5)]
    assert codes[0] == "text"
    assert results["t4"].error.code == "UNAVAILABLE" and results["t4"].error.retryable


async def test_info_and_reflection() -> None:
    async with running_server(max_batch_size=7) as server, channel_to(server) as channel:
        info = await inference_pb2_grpc.InferenceServerStub(channel).Info(
            inference_pb2.InfoRequest()
        )
        assert info.backend == "echo"
        assert [m.name for m in info.models] == ["*"]
        assert info.limits.max_batch_size == 7
        assert task_pb2.TASK_TYPE_EMBED in info.models[0].task_types
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> object:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        services = set()
        async for response in stub.ServerReflectionInfo(ask()):
            services |= {s.name for s in response.list_services_response.service}
        assert "batchinfer.v1.InferenceServer" in services
        assert "grpc.health.v1.Health" in services


async def test_echo_serves_any_model_name() -> None:
    async with running_server() as server, stream_to(server) as client:
        task = gen_task("m")
        task.model = "some-model-name"
        client.send([task])
        assert (await client.wait_for(1))["m"].text.text == "echo: hello world"
