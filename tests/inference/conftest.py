"""Shared helpers of the inference server tests: tasks, a Process stream client, servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from batchinfer.v1 import inference_pb2, inference_pb2_grpc, task_pb2

from services.inference.backends.base import Backend
from services.inference.config import ServerConfig
from services.inference.server import RunningServer, serve


def gen_task(task_id: str, prompt: str = "hello world", **params: Any) -> task_pb2.Task:
    return task_pb2.Task(
        task_id=task_id,
        task_type=task_pb2.TASK_TYPE_GENERATE,
        prompt=prompt,
        params=task_pb2.GenerationParams(**params),
        attempt=1,
    )


class StreamClient:
    """One Process stream: send task batches and cancels, read results and credits.

    Like the gateway, it half-closes the stream when the server says it is draining
    (half_close_on_drain=False keeps it open, as a client that ignores the notice)."""

    def __init__(self, channel: grpc.aio.Channel, half_close_on_drain: bool = True) -> None:
        self.half_close_on_drain = half_close_on_drain
        self.stub = inference_pb2_grpc.InferenceServerStub(channel)
        self._out: asyncio.Queue[inference_pb2.ProcessRequest | None] = asyncio.Queue()
        self.call = self.stub.Process(self._requests())
        self.credits = 0
        self.initial_credits = 0
        self.draining_flags = 0
        self.results: dict[str, task_pb2.TaskResult] = {}
        self.order: list[str] = []
        self.responses: list[inference_pb2.ProcessResponse] = []

    async def _requests(self) -> AsyncIterator[inference_pb2.ProcessRequest]:
        while True:
            request = await self._out.get()
            if request is None:
                return
            yield request

    async def open(self) -> StreamClient:
        first = await self.call.read()
        self.initial_credits = self.credits = first.credits
        self.draining_flags += first.draining
        return self

    def send(self, tasks: Iterable[task_pb2.Task]) -> None:
        batch = inference_pb2.TaskBatch(tasks=list(tasks))
        self.credits -= len(batch.tasks)
        self._out.put_nowait(inference_pb2.ProcessRequest(batch=batch))

    def cancel(self, task_ids: Iterable[str]) -> None:
        cancel = inference_pb2.CancelTasks(task_ids=list(task_ids))
        self._out.put_nowait(inference_pb2.ProcessRequest(cancel=cancel))

    def close(self) -> None:
        self._out.put_nowait(None)

    async def read_one(self) -> inference_pb2.ProcessResponse | None:
        response = await self.call.read()
        if response is grpc.aio.EOF:
            return None
        self.responses.append(response)
        self.credits += response.credits
        self.draining_flags += response.draining
        if response.draining and self.half_close_on_drain:
            self.close()
        for result in response.results:
            self.results[result.task_id] = result
            self.order.append(result.task_id)
        return response

    async def wait_for(self, count: int, timeout: float = 30.0) -> dict[str, task_pb2.TaskResult]:
        """Read until `count` results in all have arrived."""

        async def loop() -> None:
            while len(self.results) < count:
                if await self.read_one() is None:
                    raise AssertionError(f"stream ended after {len(self.results)} of {count}")

        await asyncio.wait_for(loop(), timeout)
        return self.results

    async def read_to_end(self, timeout: float = 30.0) -> grpc.StatusCode:
        async def loop() -> None:
            while await self.read_one() is not None:
                pass

        await asyncio.wait_for(loop(), timeout)
        return await self.call.code()


@contextlib.asynccontextmanager
async def running_server(
    instance: Backend | None = None, wait: bool = True, **settings: Any
) -> AsyncIterator[RunningServer]:
    """A server on 127.0.0.1:0 (echo unless `backend=` says otherwise), stopped on exit."""
    settings.setdefault("backend", "echo")
    settings.setdefault("port", 0)
    server = await serve(ServerConfig(**settings), instance)
    try:
        if wait:
            await server.wait_ready(60)
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def channel_to(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


@contextlib.asynccontextmanager
async def stream_to(server: RunningServer) -> AsyncIterator[StreamClient]:
    async with channel_to(server) as channel:
        client = StreamClient(channel)
        await client.open()
        try:
            yield client
        finally:
            client.close()
            client.call.cancel()


@pytest.fixture(scope="session")
def tiny_backend() -> Any:
    """The tiny random model, loaded once for the session (tests must not close it)."""
    from services.inference import models
    from services.inference.backends.hf import HFBackend

    backend = HFBackend(models.resolve("tiny-random"), device="cpu")
    backend.load()
    return backend
