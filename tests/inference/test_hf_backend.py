"""The transformers backend on the tiny random model (CPU), directly and through the server."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from batchinfer.v1 import task_pb2

from services.inference.backends.hf import HFBackend
from services.inference.backends.prefill import length_buckets, worth_it
from services.inference.models import TINY_CONTEXT
from services.inference.types import Finish, InferTask, Params, TaskKind
from tests.inference.conftest import gen_task, running_server, stream_to

PROMPTS = [
    "Hi there",
    "The quick brown fox jumps over the lazy dog",
    "Once upon a time, in a land far away, there lived a very old king who",
    "1 2 3",
    "A much longer prompt than the others, so that the batch needs plenty of left padding "
    "for the short ones: padding must not change what a prompt generates.",
]


def prepared(backend: HFBackend, task: InferTask) -> InferTask:
    error = backend.prepare(task)
    assert error is None, error
    return task


def gen(backend: HFBackend, prompt: str, **params: Any) -> InferTask:
    params.setdefault("max_new_tokens", 12)
    return prepared(
        backend, InferTask(prompt[:8], TaskKind.GENERATE, prompt=prompt, params=Params(**params))
    )


@pytest.mark.parametrize(
    "prompts", [PROMPTS, [*PROMPTS, "Hi"]], ids=["bucketed-prefill", "padded-prefill"]
)
def test_greedy_text_is_the_same_alone_and_inside_a_padded_batch(
    tiny_backend: HFBackend, prompts: list[str]
) -> None:
    # A one-token prompt has nothing to prefill: that batch takes the plain padded path.
    assert worth_it([len(gen(tiny_backend, p).prepared) for p in prompts]) == (prompts is PROMPTS)
    alone = [tiny_backend.run_batch([gen(tiny_backend, p)])[0] for p in prompts]
    batched = tiny_backend.run_batch([gen(tiny_backend, p) for p in prompts])
    assert [o.text for o in batched] == [o.text for o in alone]
    assert [o.completion_tokens for o in batched] == [o.completion_tokens for o in alone]
    assert all(o.text for o in alone)


def test_length_buckets_keep_padding_under_the_limit() -> None:
    lengths = [40, 10, 12, 41, 11, 90, 39]
    buckets = length_buckets(lengths, max_waste=1.2)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in buckets] == [[10, 11, 12], [39, 40, 41], [90]]
    assert not worth_it([10, 11, 12]) and worth_it(lengths)
    assert not worth_it([50]) and not worth_it([1, 30])


def test_bucketed_prefill_generates_what_the_padded_batch_generates(
    tiny_backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = [gen(tiny_backend, p, max_new_tokens=16) for p in PROMPTS]
    assert worth_it([len(t.prepared) for t in tasks])
    bucketed = tiny_backend.run_batch(tasks)
    monkeypatch.setattr(tiny_backend, "bucketed_prefill", False)
    padded = tiny_backend.run_batch(tasks)
    assert [o.text for o in bucketed] == [o.text for o in padded]


def test_generate_counts_tokens_and_stops_at_max_new_tokens(tiny_backend: HFBackend) -> None:
    task = gen(tiny_backend, "Hello there", max_new_tokens=5)
    out = tiny_backend.run_batch([task])[0]
    assert out.prompt_tokens == len(tiny_backend.tokenizer("Hello there").input_ids)
    assert out.completion_tokens == 5
    assert out.finish == Finish.LENGTH


def test_stop_strings_cut_the_text_and_finish_with_stop(tiny_backend: HFBackend) -> None:
    full = tiny_backend.run_batch([gen(tiny_backend, "Hello there", max_new_tokens=8)])[0].text
    assert full is not None and len(full) > 4
    stop = full[3:5]
    cut = tiny_backend.run_batch(
        [gen(tiny_backend, "Hello there", max_new_tokens=8, stop=(stop,))]
    )[0]
    assert cut.text == full[: full.find(stop)]
    assert cut.finish == Finish.STOP


def test_sampling_with_a_seed_repeats(tiny_backend: HFBackend) -> None:
    def sample() -> str | None:
        task = gen(tiny_backend, "Hello", temperature=1.0, top_k=50, seed=7)
        return tiny_backend.run_batch([task])[0].text

    assert sample() == sample()


def test_chat_goes_through_the_chat_template(tiny_backend: HFBackend) -> None:
    task = prepared(
        tiny_backend,
        InferTask("c", TaskKind.CHAT, messages=(("user", "Hi"),), params=Params(max_new_tokens=4)),
    )
    text = tiny_backend.tokenizer.decode(task.prepared)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    out = tiny_backend.run_batch([task])[0]
    assert out.completion_tokens <= 4 and out.prompt_tokens == len(task.prepared)


def test_classify_gives_each_label_a_probability(tiny_backend: HFBackend) -> None:
    labels = ("positive", "negative", "not sure")
    tasks = [
        prepared(tiny_backend, InferTask(f"c{i}", TaskKind.CLASSIFY, prompt=p, labels=labels))
        for i, p in enumerate(["Great film. Sentiment:", "Awful film. Sentiment:"])
    ]
    outs = tiny_backend.run_batch(tasks)
    for out in outs:
        assert out.label_scores is not None
        assert [s.label for s in out.label_scores] == list(labels)
        assert abs(sum(s.probability for s in out.label_scores) - 1) < 1e-6
        assert all(s.logprob < 0 for s in out.label_scores)
        lp = [s.logprob for s in out.label_scores]
        top = max(lp)
        expected = [math.exp(v - top) / sum(math.exp(w - top) for w in lp) for v in lp]
        assert [s.probability for s in out.label_scores] == pytest.approx(expected)
    # The batch gives what each task gives alone.
    alone = tiny_backend.run_batch([tasks[1]])[0]
    assert [s.logprob for s in alone.label_scores] == pytest.approx(
        [s.logprob for s in outs[1].label_scores], abs=1e-4
    )


def test_score_matches_a_plain_forward_pass(tiny_backend: HFBackend) -> None:
    task = prepared(
        tiny_backend,
        InferTask(
            "s", TaskKind.SCORE, prompt="The capital of France is", continuation=" Paris, of course"
        ),
    )
    out = tiny_backend.run_batch([task])[0]
    prompt, (cont,) = task.prepared
    assert out.score is not None and out.score[1] == len(cont)
    ids = torch.tensor([prompt + cont])
    with torch.inference_mode():
        logp = torch.log_softmax(tiny_backend.model(ids).logits[0].float(), -1)
    expected = sum(logp[len(prompt) - 1 + i, tok].item() for i, tok in enumerate(cont))
    assert out.score[0] == pytest.approx(expected, abs=1e-4)
    assert out.prompt_tokens == len(prompt) + len(cont)


def test_embed_is_normalised_and_does_not_depend_on_the_batch(tiny_backend: HFBackend) -> None:
    def emb(p: str) -> InferTask:
        return prepared(tiny_backend, InferTask(p, TaskKind.EMBED, prompt=p))

    outs = tiny_backend.run_batch([emb("short"), emb("a rather longer text to embed here")])
    alone = tiny_backend.run_batch([emb("short")])[0]
    vec = outs[0].embedding
    assert vec is not None and len(vec) == tiny_backend.model.config.hidden_size
    assert sum(v * v for v in vec) == pytest.approx(1.0, abs=1e-5)
    assert vec == pytest.approx(alone.embedding, abs=1e-5)


def test_a_prompt_longer_than_the_context_is_refused_with_both_numbers(
    tiny_backend: HFBackend,
) -> None:
    task = InferTask(
        "l", TaskKind.GENERATE, prompt="hello " * TINY_CONTEXT, params=Params(max_new_tokens=10)
    )
    error = tiny_backend.prepare(task)
    assert error is not None and error.code == "PROMPT_TOO_LONG"
    assert str(TINY_CONTEXT) in error.message and "max_new_tokens is 10" in error.message


def test_an_unknown_model_name_is_unsupported(tiny_backend: HFBackend) -> None:
    error = tiny_backend.prepare(InferTask("m", TaskKind.GENERATE, model="gpt-9", prompt="x"))
    assert error is not None and error.code == "UNSUPPORTED_MODEL"
    assert "'gpt-9'" in error.message and "'tiny-random'" in error.message
    assert (
        tiny_backend.prepare(InferTask("m", TaskKind.GENERATE, model="tiny-random", prompt="x"))
        is None
    )


def test_a_model_crash_on_one_task_fails_only_that_task(
    tiny_backend: HFBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = HFBackend.run_batch

    def crashing(self: HFBackend, batch: list[InferTask]) -> Any:
        if any(t.task_id == "boom" for t in batch):
            raise RuntimeError("simulated kernel failure")
        return real(self, batch)

    monkeypatch.setattr(HFBackend, "run_batch", crashing)
    tasks = [gen(tiny_backend, "one"), gen(tiny_backend, "two"), gen(tiny_backend, "three")]
    tasks[1].task_id = "boom"
    outs = tiny_backend._run_isolated(tasks)
    assert [o.task.task_id for o in outs] == [t.task_id for t in tasks]
    assert outs[0].text and outs[2].text
    assert (
        outs[1].error is not None and outs[1].error.code == "INTERNAL" and outs[1].error.retryable
    )
    assert "simulated kernel failure" in outs[1].error.message


async def test_through_the_server_a_bad_task_fails_alone_in_its_batch(
    tiny_backend: HFBackend,
) -> None:
    good = [gen_task(f"g{i}", p, max_new_tokens=6) for i, p in enumerate(PROMPTS)]
    too_long = gen_task("long", "hello " * (TINY_CONTEXT + 10), max_new_tokens=6)
    wrong_model = gen_task("model", "hi", max_new_tokens=6)
    wrong_model.model = "not-this-one"
    classify = task_pb2.Task(
        task_id="cls",
        task_type=task_pb2.TASK_TYPE_CLASSIFY,
        prompt="Sentiment:",
        labels=["good", "bad"],
    )
    async with (
        running_server(tiny_backend, backend="transformers", model="tiny-random") as server,
        stream_to(server) as client,
    ):
        client.send([good[0], too_long, good[1], wrong_model, good[2], classify, *good[3:]])
        results = await client.wait_for(len(good) + 3)
    expected = [
        tiny_backend.run_batch([gen(tiny_backend, p, max_new_tokens=6)])[0].text for p in PROMPTS
    ]
    assert [results[f"g{i}"].text.text for i in range(len(PROMPTS))] == expected
    assert results["long"].error.code == "PROMPT_TOO_LONG"
    assert results["model"].error.code == "UNSUPPORTED_MODEL"
    assert results["cls"].classification.label in ("good", "bad")
    assert all(
        results[f"g{i}"].usage.completion_tokens == 6
        for i in range(len(PROMPTS))
        if results[f"g{i}"].text.finish_reason == task_pb2.FINISH_REASON_LENGTH
    )


@pytest.mark.gpu
def test_bf16_on_cuda_generates_the_same_alone_and_batched() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: torch.cuda.is_available() is False")
    from services.inference import models

    backend = HFBackend(models.resolve("smollm2-135m-instruct"), device="cuda")
    backend.load()
    try:
        assert backend.dtype == torch.bfloat16
        assert next(backend.model.parameters()).device.type == "cuda"
        chat = InferTask(
            "paris",
            TaskKind.CHAT,
            messages=(("user", "What is the capital of France?"),),
            params=Params(max_new_tokens=20),
        )
        out = backend.run_batch([prepared(backend, chat)])[0]
        assert "Paris" in (out.text or "")
        alone = [backend.run_batch([gen(backend, p)])[0].text for p in PROMPTS]
        batched = [o.text for o in backend.run_batch([gen(backend, p) for p in PROMPTS])]
        # bf16 kernels may round differently with batch shape; most prompts must agree.
        agree = sum(a == b for a, b in zip(alone, batched, strict=True))
        assert agree >= len(PROMPTS) - 1, (alone, batched)
    finally:
        backend.close()
