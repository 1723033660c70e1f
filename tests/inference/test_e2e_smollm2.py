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
from tests.inference.conftest import StreamClient, gen_task

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


async def sigterm_across_a_tight_loop(
    proc: asyncio.subprocess.Process, target: str, first: task_pb2.Task, late: task_pb2.Task
) -> tuple[StreamClient, list[str], list[str], grpc.StatusCode]:
    """Send `first`, then a copy of `late` every 10 ms while SIGTERM lands; keep sending
    until the draining notice is read and a few times after (tasks on the wire), then
    half-close. Returns the client, the ids sent, those sent after the notice, and the
    stream's status."""
    async with grpc.aio.insecure_channel(target) as channel:
        client = await StreamClient(channel, half_close_on_drain=False).open()
        client.send([first])
        sent, after_notice = [first.task_id], []

        async def sender() -> None:
            for i in range(2000):
                if client.draining_flags and len(after_notice) >= 5:
                    break
                task = task_pb2.Task()
                task.CopyFrom(late)
                task.task_id = f"late-{i}"
                client.send([task])
                sent.append(task.task_id)
                if client.draining_flags:
                    after_notice.append(task.task_id)
                await asyncio.sleep(0.01)
            client.close()

        async def signal_soon() -> None:
            await asyncio.sleep(0.5)  # `first` is running by now
            proc.send_signal(signal.SIGTERM)

        sending = asyncio.create_task(sender())
        await signal_soon()
        status = await client.read_to_end(timeout=180)
        await asyncio.wait_for(sending, 10)
    return client, sent, after_notice, status


async def test_sigterm_answers_every_task_sent_across_it_then_exits_0() -> None:
    late = capital_question("late", max_new_tokens=2)
    story = capital_question("inflight", max_new_tokens=48)  # about 2 s on two cores
    story.messages[0].content = "Write a long story about a dragon and a knight."
    async with server_process("--grace-s", "120") as (proc, target):
        client, sent, after_notice, status = await sigterm_across_a_tight_loop(
            proc, target, story, late
        )
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    assert status == grpc.StatusCode.OK
    assert client.draining_flags == 1
    assert sorted(client.results) == sorted(sent), "every task sent is answered"
    assert client.results["inflight"].usage.completion_tokens == 48
    assert after_notice
    for task_id in after_notice:
        error = client.results[task_id].error
        assert error.code == "UNAVAILABLE" and error.retryable, task_id
    # The notice comes as soon as the drain starts, not with the running task's result.
    notice_at = next(i for i, r in enumerate(client.responses) if r.draining)
    inflight_at = next(
        i for i, r in enumerate(client.responses) if any(t.task_id == "inflight" for t in r.results)
    )
    assert notice_at < inflight_at


async def test_sigterm_on_echo_answers_every_task_sent_across_it() -> None:
    echo = ("--backend", "echo", "--echo-delay-ms-per-token", "20", "--grace-s", "30")
    async with server_process(*echo) as (proc, target):
        client, sent, after_notice, status = await sigterm_across_a_tight_loop(
            proc, target, gen_task("inflight", max_new_tokens=40), gen_task("late")
        )
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0 and status == grpc.StatusCode.OK
    assert sorted(client.results) == sorted(sent)
    assert client.results["inflight"].text.text.startswith("echo:")
    assert after_notice and all(client.results[t].error.code == "UNAVAILABLE" for t in after_notice)


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
