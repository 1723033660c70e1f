"""A deterministic fake model for load tests of everything above the model.

Tokens are whitespace-separated words. generate/chat answer "echo:" followed by the
prompt's words, cut at max_new_tokens; classify, score and embed give values derived
from a hash of the input. A batch sleeps echo_delay_ms_per_token for each token of
its longest output, once for the whole batch, as one model step per token would.
Zero delay runs inline on the event loop: no thread hop per batch.
"""

from __future__ import annotations

import asyncio
import math
import zlib

from services.inference.backends.base import Backend, ServedModel
from services.inference.types import (
    Finish,
    InferTask,
    LabelScore,
    Outcome,
    TaskError,
    TaskKind,
)
from services.inference.validation import too_long

ECHO_CONTEXT = 32768
EMBED_DIM = 16


def _hash(*parts: str) -> int:
    return zlib.crc32("\x1f".join(parts).encode())


class EchoBackend(Backend):
    name = "echo"
    device = "cpu"

    def __init__(self, delay_ms_per_token: float = 0.0, default_max_new_tokens: int = 256) -> None:
        super().__init__(default_max_new_tokens)
        self.delay_s_per_token = delay_ms_per_token / 1000.0

    def load(self) -> None:
        pass

    def served_models(self) -> list[ServedModel]:
        return [ServedModel("*", ECHO_CONTEXT)]

    def serves(self, model: str) -> bool:
        return True

    def _prepare(self, task: InferTask) -> TaskError | None:
        if task.kind == TaskKind.CHAT:
            words = [w for _, content in task.messages for w in content.split()]
        else:
            words = task.prompt.split()
        task.prepared = words
        task.prompt_tokens = len(words)
        task.length = len(words)
        if task.kind == TaskKind.CLASSIFY:
            task.rows = len(task.labels)
            task.length += max(len(label.split()) for label in task.labels)
        elif task.kind == TaskKind.SCORE:
            task.length += len(task.continuation.split())
        return too_long(task.length, task.new_tokens, ECHO_CONTEXT)

    async def execute(self, batch: list[InferTask]) -> list[Outcome]:
        outcomes = [self._answer(task) for task in batch]
        if self.delay_s_per_token > 0:
            steps = max(max(o.completion_tokens for o in outcomes), 1)
            await asyncio.sleep(self.delay_s_per_token * steps)
        return outcomes

    def _answer(self, task: InferTask) -> Outcome:
        kind = task.kind
        if kind in (TaskKind.GENERATE, TaskKind.CHAT):
            words = ["echo:", *task.prepared]
            cut = task.new_tokens
            finish = Finish.LENGTH if len(words) > cut else Finish.STOP
            words = words[:cut]
            return Outcome(
                task,
                text=" ".join(words),
                finish=finish,
                prompt_tokens=task.prompt_tokens,
                completion_tokens=len(words),
            )
        if kind == TaskKind.CLASSIFY:
            logprobs = [-(_hash(task.prompt, label) % 1000) / 100.0 for label in task.labels]
            top = max(logprobs)
            total = sum(math.exp(lp - top) for lp in logprobs)
            scores = [
                LabelScore(label, lp, math.exp(lp - top) / total)
                for label, lp in zip(task.labels, logprobs, strict=True)
            ]
            return Outcome(task, label_scores=scores, prompt_tokens=task.prompt_tokens)
        if kind == TaskKind.SCORE:
            count = len(task.continuation.split())
            logprob = -(_hash(task.prompt, task.continuation) % 1000) / 1000.0 * count
            return Outcome(task, score=(logprob, count), prompt_tokens=task.length)
        seed = _hash(task.prompt)
        raw = [((seed >> (i % 32)) & 0xFF) - 127.5 + i for i in range(EMBED_DIM)]
        norm = math.sqrt(sum(v * v for v in raw))
        return Outcome(task, embedding=[v / norm for v in raw], prompt_tokens=task.prompt_tokens)
