"""Checks every backend makes on a task before it is queued; each error names the bad value."""

from __future__ import annotations

import math

from services.inference.types import Code, InferTask, TaskError, TaskKind

KIND_NAMES = {
    TaskKind.GENERATE: "generate",
    TaskKind.CHAT: "chat",
    TaskKind.CLASSIFY: "classify",
    TaskKind.SCORE: "score",
    TaskKind.EMBED: "embed",
}


def _bad(message: str) -> TaskError:
    return TaskError(Code.INVALID_ARGUMENT, message)


def check_task(task: InferTask) -> TaskError | None:
    """INVALID_ARGUMENT for a task no backend could run, else None."""
    if task.kind not in KIND_NAMES:
        return _bad(
            f"task_type must be one of generate, chat, classify, score, embed, got {task.kind}"
        )
    if task.kind == TaskKind.CHAT:
        if not task.messages:
            return _bad("messages must not be empty for a chat task")
    elif not task.prompt:
        return _bad(f"prompt must not be empty for a {KIND_NAMES[TaskKind(task.kind)]} task")
    if task.kind == TaskKind.CLASSIFY:
        if not task.labels:
            return _bad("labels must not be empty for a classify task")
        if any(not label for label in task.labels):
            return _bad("labels must not contain an empty string")
    if task.kind == TaskKind.SCORE and not task.continuation:
        return _bad("continuation must not be empty for a score task")
    return check_params(task)


def check_params(task: InferTask) -> TaskError | None:
    p = task.params
    if p.max_new_tokens is not None and p.max_new_tokens < 1:
        return _bad(f"max_new_tokens must be >= 1, got {p.max_new_tokens}")
    if p.temperature is not None and not (p.temperature >= 0 and math.isfinite(p.temperature)):
        return _bad(f"temperature must be >= 0, got {p.temperature}")
    if p.top_p is not None and not (0 < p.top_p <= 1):
        return _bad(f"top_p must be in (0, 1], got {p.top_p}")
    if p.top_k is not None and p.top_k < 0:
        return _bad(f"top_k must be >= 0, got {p.top_k}")
    if p.repetition_penalty is not None and not (
        p.repetition_penalty > 0 and math.isfinite(p.repetition_penalty)
    ):
        return _bad(f"repetition_penalty must be > 0, got {p.repetition_penalty}")
    if any(not s for s in p.stop):
        return _bad("stop must not contain an empty string")
    return None


def too_long(prompt_tokens: int, max_new_tokens: int, context: int) -> TaskError | None:
    """PROMPT_TOO_LONG when prompt plus completion cannot fit the model's context."""
    if prompt_tokens + max_new_tokens <= context:
        return None
    if max_new_tokens:
        message = (
            f"prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
            f"together {prompt_tokens + max_new_tokens}, over the model's context of "
            f"{context} tokens"
        )
    else:
        message = f"input has {prompt_tokens} tokens, over the model's context of {context} tokens"
    return TaskError(Code.PROMPT_TOO_LONG, message)
