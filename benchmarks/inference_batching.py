"""How much the inference server's batching gains over one prompt at a time, and how close
it comes to the library's own ceiling, on SmolLM2-135M-Instruct.

The same prompts (chat template, greedy, the same max_new_tokens) three ways:
  (a) serial:  model.generate on one prompt at a time;
  (b) static:  model.generate on length-sorted, left-padded static batches; the best of
               batch sizes 4, 8, 16 and 32 (the ceiling);
  (c) server:  one client per prompt, all at once, each sending its single task through
               the server's gRPC API (the server runs as a subprocess).
Tokens are the completion tokens up to and including EOS, counted the same way for all
three. The last line is `speedup_vs_serial=X.XX ratio_vs_static=Y.YY`.

    python benchmarks/inference_batching.py [--prompts 32] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import grpc
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "protos")]

from batchinfer.v1 import inference_pb2, inference_pb2_grpc, task_pb2  # noqa: E402

from services.inference import models  # noqa: E402
from services.inference.backends.hf import HFBackend  # noqa: E402
from services.inference.types import InferTask, Params, TaskKind  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOPICS = [
    "Paris",
    "the water cycle",
    "photosynthesis",
    "a haiku about autumn",
    "binary search",
    "the French Revolution",
    "why the sky is blue",
    "how a bicycle stays upright",
    "the rules of chess",
    "black holes",
    "a recipe for pancakes",
    "the history of the internet",
    "how vaccines work",
    "the theory of evolution",
    "a limerick about a cat",
    "compound interest",
    "the difference between weather and climate",
    "how to tie a bowline knot",
    "volcanoes",
    "the Pythagorean theorem",
    "machine learning",
    "the life of Marie Curie",
    "tides",
    "a short story about a robot",
    "the causes of the First World War",
    "how rainbows form",
    "the immune system",
    "a packing list for a weekend hike",
    "the Roman Empire",
    "how a refrigerator works",
    "plate tectonics",
    "the benefits of sleep",
]


def make_prompts(count: int) -> list[str]:
    """Prompts of varied length: one to about eighty words of context before the question."""
    filler = [
        "Please",
        "keep",
        "the",
        "answer",
        "clear,",
        "friendly",
        "and",
        "accurate,",
        "and",
        "use",
        "simple",
        "words",
        "that",
        "a",
        "curious",
        "twelve",
        "year",
        "old",
        "would",
        "understand,",
        "with",
        "one",
        "concrete",
        "example.",
    ]
    prompts = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        context = " ".join(filler[: (i * 7) % (len(filler) + 1)] * (1 + i % 3))
        prompts.append(f"{context} Tell me about {topic}.".strip())
    return prompts


def chat_task(i: int, prompt: str, max_new_tokens: int) -> InferTask:
    return InferTask(
        str(i),
        TaskKind.CHAT,
        messages=(("user", prompt),),
        params=Params(max_new_tokens=max_new_tokens),
    )


def completion_tokens(backend: HFBackend, rows: list[list[int]]) -> int:
    """Generated tokens up to and including the first EOS, summed over rows."""
    total = 0
    for row in rows:
        end = next((i for i, tok in enumerate(row) if tok in backend._eos), None)
        total += len(row) if end is None else end + 1
    return total


def run_generate(backend: HFBackend, batch: list[list[int]], max_new_tokens: int) -> int:
    ids, mask = backend._padded(batch, left=True)
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=backend.tokenizer.pad_token_id,
            eos_token_id=sorted(backend._eos),
        )
    return completion_tokens(backend, out[:, ids.shape[1] :].tolist())


def serial(backend: HFBackend, inputs: list[list[int]], max_new_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(run_generate(backend, [ids], max_new_tokens) for ids in inputs)
    return tokens, time.perf_counter() - start


def static(
    backend: HFBackend, inputs: list[list[int]], max_new_tokens: int, size: int
) -> tuple[int, float]:
    ordered = sorted(inputs, key=len)
    start = time.perf_counter()
    tokens = sum(
        run_generate(backend, ordered[i : i + size], max_new_tokens)
        for i in range(0, len(ordered), size)
    )
    return tokens, time.perf_counter() - start


async def through_server(
    prompts: list[str], max_new_tokens: int, threads: int
) -> tuple[int, float, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.inference",
        "--port",
        "0",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--threads",
        str(threads),
        "--log-level",
        "WARNING",
        "--max-batch-size",
        "32",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'protos'}"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 600)).decode().strip()
        target = line.split(" ", 1)[1]
        async with grpc.aio.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.InferenceServerStub(channel)
            info = await stub.Info(inference_pb2.InfoRequest())
            # A short round first, as (a) and (b) get a warm-up generate call.
            await all_clients(stub, prompts, 2)
            results, elapsed = await all_clients(stub, prompts, max_new_tokens)
        for r in results:
            if r.WhichOneof("output") != "text":
                raise RuntimeError(f"task {r.task_id} failed: {r.error.code} {r.error.message}")
        limits = info.limits
        computes = {r.timings.compute_ms for r in results}  # a batch shares its compute time
        note = (
            f"{len(computes)} model batches, {sum(computes) / 1000:.1f} s in the model; "
            f"max_batch_size={limits.max_batch_size} max_wait_ms={limits.max_wait_ms}"
        )
        return sum(r.usage.completion_tokens for r in results), elapsed, note
    finally:
        proc.terminate()
        await proc.wait()


async def all_clients(
    stub: inference_pb2_grpc.InferenceServerStub, prompts: list[str], max_new_tokens: int
) -> tuple[list[task_pb2.TaskResult], float]:
    """One client per prompt: all open their streams, then all send at once."""
    go = asyncio.Event()
    opened = [asyncio.Event() for _ in prompts]
    clients = [
        asyncio.create_task(one_client(stub, str(i), p, max_new_tokens, go, opened[i]))
        for i, p in enumerate(prompts)
    ]
    await asyncio.gather(*(e.wait() for e in opened))
    start = time.perf_counter()
    go.set()
    results = await asyncio.gather(*clients)
    return results, time.perf_counter() - start


async def one_client(
    stub: inference_pb2_grpc.InferenceServerStub,
    task_id: str,
    prompt: str,
    max_new_tokens: int,
    go: asyncio.Event,
    opened: asyncio.Event,
) -> task_pb2.TaskResult:
    """One client: open a stream, wait for the start, send one chat task, read its result."""
    queue: asyncio.Queue[inference_pb2.ProcessRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (request := await queue.get()) is not None:
            yield request

    call = stub.Process(requests())
    await call.read()  # the opening credits
    opened.set()
    if not go.is_set():
        await go.wait()
    task = task_pb2.Task(
        task_id=task_id,
        task_type=task_pb2.TASK_TYPE_CHAT,
        model=MODEL,
        messages=[task_pb2.ChatMessage(role="user", content=prompt)],
        params=task_pb2.GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0),
    )
    queue.put_nowait(inference_pb2.ProcessRequest(batch=inference_pb2.TaskBatch(tasks=[task])))
    while True:
        response = await call.read()
        if response.results:
            queue.put_nowait(None)
            return response.results[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32, help="how many prompts (default 32)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="tokens per prompt (default 64)"
    )
    parser.add_argument("--sizes", default="4,8,16,32", help="static batch sizes to try")
    args = parser.parse_args(argv)
    threads = os.cpu_count() or 1
    prompts = make_prompts(args.prompts)
    n = args.max_new_tokens

    backend = HFBackend(models.resolve(MODEL), device="cpu", threads=threads)
    backend.load()
    inputs = []
    for i, p in enumerate(prompts):
        task = chat_task(i, p, n)
        error = backend.prepare(task)
        if error is not None:
            raise SystemExit(f"prompt {i}: {error.message}")
        inputs.append(task.prepared)
    lengths = sorted(len(x) for x in inputs)
    print(
        f"model={MODEL} device=cpu threads={threads} prompts={len(prompts)} "
        f"prompt_tokens={lengths[0]}..{lengths[-1]} max_new_tokens={n} greedy"
    )
    run_generate(backend, [inputs[0]], 2)  # warm-up

    tokens_a, secs_a = serial(backend, inputs, n)
    rate_a = tokens_a / secs_a
    print(f"(a) serial      : {tokens_a} tokens in {secs_a:.1f} s = {rate_a:.1f} tok/s")

    best = (0.0, 0, 0, 0.0)
    for size in (int(s) for s in args.sizes.split(",")):
        tokens_b, secs_b = static(backend, inputs, n, size)
        rate = tokens_b / secs_b
        print(f"(b) static b={size:<3}: {tokens_b} tokens in {secs_b:.1f} s = {rate:.1f} tok/s")
        if rate > best[0]:
            best = (rate, size, tokens_b, secs_b)
    rate_b = best[0]
    print(f"(b) static best : batch size {best[1]} = {rate_b:.1f} tok/s")
    backend.close()
    del backend

    tokens_c, secs_c, note = asyncio.run(through_server(prompts, n, threads))
    rate_c = tokens_c / secs_c
    print(
        f"(c) server      : {tokens_c} tokens in {secs_c:.1f} s = {rate_c:.1f} tok/s "
        f"({len(prompts)} concurrent clients, one task each; {note})"
    )
    print(f"speedup_vs_serial={rate_c / rate_a:.2f} ratio_vs_static={rate_c / rate_b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
