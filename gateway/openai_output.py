"""Results in the shape of OpenAI's batch output file: a succeeded task is one line of
the output file, `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error": null}`, with a chat.completion, text_completion or embedding list as the body;
a failed or cancelled one a line of the error file, `{"response": null, "error": {code,
message}}`. Written on the client, from the result stream (nothing is held)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import IO, Any

from batchinfer.v1 import gateway_pb2

from gateway.convert import STATUS_NAMES, TASK_TYPE_NAMES

# Our error codes as OpenAI names them where it has a name; others in lower case.
ERROR_CODES = {
    "INVALID_ARGUMENT": "invalid_request",
    "PROMPT_TOO_LONG": "context_length_exceeded",
    "DEADLINE_EXCEEDED": "batch_expired",
    "CANCELLED": "batch_cancelled",
}


def _hex(*parts: str, size: int = 24) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:size]


def _usage(line: dict[str, Any], embedding: bool) -> dict[str, int]:
    prompt = int(line["usage"]["prompt_tokens"])
    if embedding:
        return {"prompt_tokens": prompt, "total_tokens": prompt}
    completion = int(line["usage"]["completion_tokens"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def response_body(
    task_type: str, line: dict[str, Any], model: str, key: str, created: int
) -> dict[str, Any]:
    """The body OpenAI's endpoint for `task_type` would have answered with."""
    output = line["output"]
    if task_type == "embed":
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": output["embedding"]}],
            "model": model,
            "usage": _usage(line, embedding=True),
        }
    text, finish = output.get("text", ""), output.get("finish_reason", "stop")
    if task_type == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        obj, prefix = "text_completion", "cmpl-"
    return {
        "id": prefix + key,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(line, embedding=False),
        "system_fingerprint": None,
    }


def openai_line(
    item: gateway_pb2.JobResult, line: dict[str, Any], model: str, job_task_type: str, job_id: str
) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the OpenAI batch output line) for one result."""
    custom_id = item.task_id
    key = _hex(job_id, custom_id)
    out: dict[str, Any] = {"id": f"batch_req_{key}", "custom_id": custom_id}
    if line["status"] == "succeeded" and "output" in line:
        task_type = TASK_TYPE_NAMES.get(item.result.task_type, job_task_type)
        body = response_body(task_type, line, model, key, int(time.time()))
        out["response"] = {"status_code": 200, "request_id": f"req_{key}", "body": body}
        out["error"] = None
        return True, out
    error = line.get("error") or {}
    code = error.get("code") or STATUS_NAMES.get(item.state, "failed").upper()
    if line["status"] == "cancelled" and not error:
        code = "CANCELLED"
    out["response"] = None
    out["error"] = {
        "code": ERROR_CODES.get(code, code.lower()),
        "message": error.get("message") or f"the task ended {line['status']}",
    }
    return False, out


class OpenAIBatchWriter:
    """A sink for GatewayClient.follow_results: output and error files as OpenAI writes them."""

    def __init__(
        self, output: IO[str], errors: IO[str], *, model: str, task_type: str, job_id: str
    ) -> None:
        self.output, self.errors = output, errors
        self.model, self.task_type, self.job_id = model, task_type, job_id

    def write(self, item: gateway_pb2.JobResult, line: dict[str, Any]) -> None:
        ok, converted = openai_line(item, line, self.model, self.task_type, self.job_id)
        target = self.output if ok else self.errors
        target.write(json.dumps(converted, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self.output.flush()
        self.errors.flush()
