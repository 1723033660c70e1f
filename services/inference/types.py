"""A task inside the server and its outcome, as plain data; to_pb/from_pb at the edge."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from batchinfer.v1 import task_pb2


class TaskKind(enum.IntEnum):
    """Same numbers as batchinfer.v1.TaskType."""

    UNSPECIFIED = 0
    GENERATE = 1
    CHAT = 2
    CLASSIFY = 3
    SCORE = 4
    EMBED = 5


class Finish(enum.IntEnum):
    """Same numbers as batchinfer.v1.FinishReason."""

    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    ERROR = 3
    CANCELLED = 4


class Code:
    """TaskError.code values."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
    UNSUPPORTED_MODEL = "UNSUPPORTED_MODEL"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"


@dataclass(slots=True)
class Params:
    """Sampling and length settings as sent; None means the server's default."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None

    @property
    def greedy(self) -> bool:
        """Default temperature is 0: greedy decoding unless a positive temperature is asked."""
        return not self.temperature


@dataclass(slots=True)
class TaskError:
    code: str
    message: str
    retryable: bool = False


@dataclass(slots=True, eq=False)
class InferTask:
    """One task as received, plus what the server learns about it before batching."""

    task_id: str
    kind: int
    model: str = ""
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    labels: tuple[str, ...] = ()
    continuation: str = ""
    params: Params = field(default_factory=Params)
    traceparent: str = ""
    tracestate: str = ""
    attempt: int = 0
    job_id: str = ""
    # Filled in by the server: who gets the result, and what batch formation needs.
    owner: Any = None
    enqueued_at: float = 0.0
    key: tuple[Any, ...] = ()
    """Compatibility key: tasks with equal keys can share one model call."""
    length: int = 0
    """Tokens in the task's longest model row (prompt, or prompt + label / continuation)."""
    rows: int = 1
    """Model rows the task takes: 1, or its number of labels for classify."""
    new_tokens: int = 0
    """Tokens each row generates (max_new_tokens for generate and chat, else 0)."""
    prompt_tokens: int = 0
    prepared: Any = None
    """Backend-specific input, e.g. token ids."""

    @classmethod
    def from_pb(cls, pb: task_pb2.Task) -> InferTask:
        p = pb.params
        params = Params(
            max_new_tokens=p.max_new_tokens if p.HasField("max_new_tokens") else None,
            temperature=p.temperature if p.HasField("temperature") else None,
            top_p=p.top_p if p.HasField("top_p") else None,
            top_k=p.top_k if p.HasField("top_k") else None,
            stop=tuple(p.stop),
            seed=p.seed if p.HasField("seed") else None,
            repetition_penalty=p.repetition_penalty if p.HasField("repetition_penalty") else None,
        )
        tc = pb.trace_context
        return cls(
            task_id=pb.task_id,
            kind=pb.task_type,
            model=pb.model,
            prompt=pb.prompt,
            messages=tuple((m.role, m.content) for m in pb.messages),
            labels=tuple(pb.labels),
            continuation=pb.continuation,
            params=params,
            traceparent=tc.traceparent,
            tracestate=tc.tracestate,
            attempt=pb.attempt,
            job_id=pb.job_id,
        )


@dataclass(slots=True)
class LabelScore:
    label: str
    logprob: float
    probability: float


@dataclass(slots=True, eq=False)
class Outcome:
    """What became of one task: exactly one of text, scores, score, embedding or error."""

    task: InferTask
    text: str | None = None
    finish: int = Finish.UNSPECIFIED
    label_scores: list[LabelScore] | None = None
    score: tuple[float, int] | None = None
    """(sum of log-probabilities, token count) of a score task's continuation."""
    embedding: list[float] | None = None
    error: TaskError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0

    @classmethod
    def failed(cls, task: InferTask, code: str, message: str, retryable: bool = False) -> Outcome:
        finish = Finish.CANCELLED if code == Code.CANCELLED else Finish.ERROR
        return cls(task, finish=finish, error=TaskError(code, message, retryable))

    def to_pb(self, server: str) -> task_pb2.TaskResult:
        task = self.task
        out: dict[str, Any] = {}
        if self.error is not None:
            e = self.error
            out["error"] = task_pb2.TaskError(code=e.code, message=e.message, retryable=e.retryable)
        elif self.text is not None:
            out["text"] = task_pb2.TextOutput(text=self.text, finish_reason=self.finish)
        elif self.label_scores is not None:
            best = max(self.label_scores, key=lambda s: s.logprob)
            scores = [
                task_pb2.LabelScore(label=s.label, logprob=s.logprob, probability=s.probability)
                for s in self.label_scores
            ]
            out["classification"] = task_pb2.ClassifyOutput(label=best.label, scores=scores)
        elif self.score is not None:
            out["score"] = task_pb2.ScoreOutput(logprob=self.score[0], token_count=self.score[1])
        elif self.embedding is not None:
            out["embedding"] = task_pb2.EmbedOutput(values=self.embedding)
        return task_pb2.TaskResult(
            task_id=task.task_id,
            attempt=task.attempt,
            server=server,
            usage=task_pb2.Usage(
                prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens
            ),
            timings=task_pb2.Timings(queue_ms=self.queue_ms, compute_ms=self.compute_ms),
            **out,
        )
