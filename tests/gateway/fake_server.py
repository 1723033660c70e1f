"""A scripted InferenceServer on 127.0.0.1:0 for dispatch tests: it answers
each task with `ok:<prompt>`, grants a fixed credit window, and can fail the
first attempts of chosen prompts with a retryable or fatal error."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from batchinfer.v1 import inference_pb2, inference_pb2_grpc, task_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ALL_TYPES = [task_pb2.TASK_TYPE_GENERATE, task_pb2.TASK_TYPE_CHAT]


@dataclass
class Script:
    window: int = 64
    delay_s: float = 0.0
    models: tuple[str, ...] = ("*",)
    # prompt -> (error code, attempts that fail)
    failures: dict[str, tuple[str, int]] = field(default_factory=dict)
    hang: bool = False  # take tasks and never answer
    crash_on: frozenset[str] = frozenset()  # prompts that make the server drop the stream


class FakeInferenceServer(inference_pb2_grpc.InferenceServerServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: Counter[str] = Counter()  # prompt -> times received
        self.received_at: dict[str, float] = {}  # prompt -> wall time it last arrived
        self.max_outstanding = 0

    async def Info(self, request, context):
        models = [inference_pb2.ModelInfo(name=m, task_types=ALL_TYPES) for m in self.script.models]
        return inference_pb2.InfoResponse(
            models=models,
            backend="fake",
            device="cpu",
            limits=inference_pb2.BatchLimits(max_queued_tasks=self.script.window),
        )

    async def Process(self, request_iterator, context):
        out: asyncio.Queue = asyncio.Queue()
        outstanding = 0
        answering: set[asyncio.Task] = set()

        async def answer(task: task_pb2.Task) -> None:
            nonlocal outstanding
            if self.script.delay_s:
                await asyncio.sleep(self.script.delay_s)
            code, attempts = self.script.failures.get(task.prompt, ("", 0))
            if code and task.attempt <= attempts:
                error = task_pb2.TaskError(
                    code=code, message=f"scripted {code}", retryable=code == "UNAVAILABLE"
                )
                result = task_pb2.TaskResult(
                    task_id=task.task_id, error=error, attempt=task.attempt
                )
            else:
                text = task_pb2.TextOutput(
                    text=f"ok:{task.prompt}", finish_reason=task_pb2.FINISH_REASON_STOP
                )
                result = task_pb2.TaskResult(
                    task_id=task.task_id,
                    text=text,
                    attempt=task.attempt,
                    usage=task_pb2.Usage(prompt_tokens=3, completion_tokens=2),
                )
            outstanding -= 1
            await out.put(inference_pb2.ProcessResponse(results=[result], credits=1))

        async def read() -> None:
            nonlocal outstanding
            async for request in request_iterator:
                if request.WhichOneof("kind") != "batch":
                    continue
                for task in request.batch.tasks:
                    self.received[task.prompt] += 1
                    self.received_at[task.prompt] = time.time()
                    if task.prompt in self.script.crash_on:
                        await out.put(None)
                        return
                    outstanding += 1
                    self.max_outstanding = max(self.max_outstanding, outstanding)
                    if not self.script.hang:
                        job = asyncio.ensure_future(answer(task))
                        answering.add(job)
                        job.add_done_callback(answering.discard)

        reader = asyncio.ensure_future(read())
        yield inference_pb2.ProcessResponse(credits=self.script.window)
        try:
            while True:
                response = await out.get()
                if response is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted crash")
                yield response
        finally:
            reader.cancel()


async def start_fake(script: Script) -> tuple[grpc.aio.Server, FakeInferenceServer, str]:
    server = grpc.aio.server()
    fake = FakeInferenceServer(script)
    inference_pb2_grpc.add_InferenceServerServicer_to_server(fake, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, fake, f"127.0.0.1:{port}"
