"""End to end with the real SmolLM2-135M-Instruct: the server as a subprocess, and greedy
decoding alone versus inside a padded batch."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import task_pb2

from services.inference.backends.hf import HFBackend
from services.inference.types import InferTask, Params, TaskKind
from tests.inference.conftest import StreamClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 300.0  # the first start converts the GGUF to the safetensors cache


@contextlib.asynccontextmanager
async def server_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.inference",
        "--port",
        "0",
        "--model",
        "smollm2-135m-instruct",
        "--log-level",
        "WARNING",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_S)).decode().strip()
        assert line.startswith("LISTENING "), f"unexpected first line {line!r}"
        yield proc, line.split(" ", 1)[1]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def capital_question(task_id: str, max_new_tokens: int = 24) -> task_pb2.Task:
    return task_pb2.Task(
        task_id=task_id,
        task_type=task_pb2.TASK_TYPE_CHAT,
        model="smollm2-135m-instruct",
        messages=[task_pb2.ChatMessage(role="user", content="What is the capital of France?")],
        params=task_pb2.GenerationParams(max_new_tokens=max_new_tokens),
        attempt=1,
    )


async def test_the_server_answers_paris() -> None:
    async with server_process() as (_, target), grpc.aio.insecure_channel(target) as channel:
        client = await StreamClient(channel).open()
        client.send([capital_question("paris")])
        result = (await client.wait_for(1, timeout=120))["paris"]
        client.close()
    assert result.WhichOneof("output") == "text", result
    assert "Paris" in result.text.text
    assert result.text.finish_reason == task_pb2.FINISH_REASON_STOP
    assert result.usage.prompt_tokens > 20 and result.usage.completion_tokens > 3
    assert result.server == target


async def test_sigterm_finishes_the_task_in_flight_then_exits_0() -> None:
    async with server_process("--grace-s", "120") as (proc, target):
        async with grpc.aio.insecure_channel(target) as channel:
            client = await StreamClient(channel).open()
            client.send([capital_question("inflight", max_new_tokens=40)])
            await asyncio.sleep(0.5)  # batched after max_wait_ms and running by now
            proc.send_signal(signal.SIGTERM)

            async def until_draining() -> None:  # a task sent before then may still be taken
                while client.draining_flags == 0:
                    assert await client.read_one() is not None, "stream ended before draining"

            await asyncio.wait_for(until_draining(), 60)
            client.send([capital_question("late")])
            status = await client.read_to_end(timeout=120)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    assert status == grpc.StatusCode.OK
    assert "Paris" in client.results["inflight"].text.text
    assert client.results["late"].error.code == "UNAVAILABLE"
    assert client.results["late"].error.retryable
    assert client.draining_flags == 1


@pytest.fixture(scope="module")
def smollm2() -> HFBackend:
    from services.inference import models

    backend = HFBackend(models.resolve("smollm2-135m-instruct"), device="cpu")
    backend.load()
    return backend


def test_greedy_smollm2_gives_the_same_text_alone_and_in_a_padded_batch(smollm2: HFBackend) -> None:
    prompts = [
        "The capital of France is",
        "Write a haiku about the sea.",
        "List three primary colours, then explain which one you like best and why:",
        "2 + 2 =",
    ]

    def task(prompt: str) -> InferTask:
        t = InferTask(prompt, TaskKind.GENERATE, prompt=prompt, params=Params(max_new_tokens=10))
        assert smollm2.prepare(t) is None
        return t

    alone = [smollm2.run_batch([task(p)])[0].text for p in prompts]
    batched = [o.text for o in smollm2.run_batch([task(p) for p in prompts])]
    assert batched == alone
    assert all(alone)
