"""Edges between the job model and the wire: rendered tasks to Task messages,
stored results to the JSONL lines of DESIGN.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchinfer.v1 import gateway_pb2, task_pb2

REJECTED_CODE = "INVALID_ARGUMENT"  # a task refused at expansion (Task.rejected)
TASK_TYPES = {
    "generate": task_pb2.TASK_TYPE_GENERATE,
    "chat": task_pb2.TASK_TYPE_CHAT,
    "classify": task_pb2.TASK_TYPE_CLASSIFY,
    "score": task_pb2.TASK_TYPE_SCORE,
    "embed": task_pb2.TASK_TYPE_EMBED,
}
TASK_TYPE_NAMES = {number: name for name, number in TASK_TYPES.items()}
STATUS_NAMES = {
    gateway_pb2.TASK_STATE_SUCCEEDED: "succeeded",
    gateway_pb2.TASK_STATE_FAILED: "failed",
    gateway_pb2.TASK_STATE_CANCELLED: "cancelled",
}
FINISH_REASONS = {
    task_pb2.FINISH_REASON_STOP: "stop",
    task_pb2.FINISH_REASON_LENGTH: "length",
    task_pb2.FINISH_REASON_ERROR: "error",
    task_pb2.FINISH_REASON_CANCELLED: "cancelled",
}
_PARAM_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty")


def params_to_pb(params: Mapping[str, Any]) -> task_pb2.GenerationParams:
    message = task_pb2.GenerationParams()
    for name in _PARAM_FIELDS:
        value = params.get(name)
        if value is not None:
            setattr(message, name, value)
    stop = params.get("stop")
    if stop:
        message.stop.extend([stop] if isinstance(stop, str) else stop)
    return message


def rendered_to_pb(rendered: Any, model: str, job_id: str) -> task_pb2.Task:
    """A jobfile.RenderedTask as the Task message kept in the store and sent to servers."""
    task = task_pb2.Task(
        task_id=rendered.task_id,
        task_type=TASK_TYPES[rendered.task_type],
        model=rendered.model or model,
        prompt=rendered.prompt,
        messages=[task_pb2.ChatMessage(role=r, content=c) for r, c in rendered.messages],
        labels=list(rendered.labels),
        continuation=rendered.continuation,
        params=params_to_pb(rendered.params),
        job_id=job_id,
    )
    if rendered.rejected is not None:
        task.rejected.code, task.rejected.message = REJECTED_CODE, rendered.rejected
    return task


def output_dict(result: task_pb2.TaskResult) -> dict[str, Any] | None:
    kind = result.WhichOneof("output")
    if kind == "text":
        return {
            "text": result.text.text,
            "finish_reason": FINISH_REASONS.get(result.text.finish_reason, "stop"),
        }
    if kind == "classification":
        scores = {s.label: round(s.probability, 6) for s in result.classification.scores}
        return {"label": result.classification.label, "probabilities": scores}
    if kind == "score":
        return {"logprob": result.score.logprob, "token_count": result.score.token_count}
    if kind == "embedding":
        return {"embedding": list(result.embedding.values)}
    return None


def result_line(item: gateway_pb2.JobResult) -> dict[str, Any]:
    """One results-file line, as in DESIGN.md (docs/job-files.md for model, row_id and
    evaluation)."""
    result = item.result
    line: dict[str, Any] = {"id": item.task_id, "status": STATUS_NAMES.get(item.state, "failed")}
    if item.row_id:
        line["row_id"] = item.row_id
    line["model"] = item.model
    output = output_dict(result)
    if output is not None:
        line["output"] = output
    if result.WhichOneof("output") == "error" or output is None:
        line["error"] = {"code": result.error.code or "UNKNOWN", "message": result.error.message}
    line["usage"] = {
        "prompt_tokens": result.usage.prompt_tokens,
        "completion_tokens": result.usage.completion_tokens,
    }
    line["attempts"] = item.attempts
    line["requeues"] = item.requeues
    line["timings_ms"] = {
        "queue": round(result.timings.queue_ms, 1),
        "compute": round(result.timings.compute_ms, 1),
    }
    if item.HasField("finished_at"):
        line["finished_at"] = item.finished_at.ToJsonString()  # RFC 3339, UTC ("Z")
    if item.HasField("evaluation"):
        line["evaluation"] = {
            "reference": item.evaluation.reference,
            "input": item.evaluation.input,
            "scores": dict(item.evaluation.scores),
        }
    return line
