"""OpenAI batch input (`format: openai-batch`) and output (`--format openai`), as pure code:
every supported endpoint, every error path naming its line, and the output shape field
by field against OpenAI's documented batch output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batchinfer.v1 import gateway_pb2, task_pb2

from gateway.convert import rendered_to_pb, result_line
from gateway.jobfile import JobFileError, expand, expand_all, load_job
from gateway.jobfile.errors import Problem
from gateway.jobfile.openai_batch import scan_warnings
from gateway.openai_output import openai_line

ROOT = Path(__file__).resolve().parents[2]


def chat(custom_id: str, **body: object) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write(tmp_path: Path, lines: list[object], params: str = "") -> Path:
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    (tmp_path / "requests.jsonl").write_text(text)
    job = tmp_path / "job.yaml"
    job.write_text(
        "version: 1\nname: oa\nmodel: m\n"
        "inputs: {file: requests.jsonl, format: openai-batch}\n" + params
    )
    return job


def tasks(tmp_path: Path, lines: list[object], params: str = "") -> list:
    return list(expand_all(load_job(write(tmp_path, lines, params), root=tmp_path)))


def test_each_endpoint_becomes_its_task_type(tmp_path):
    lines = [
        chat(
            "c",
            messages=[
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Capital "}, {"type": "text", "text": "of France?"}]},
            ],
            max_completion_tokens=9,
            temperature=0.5,
            top_p=0.9,
            seed=3,
            stop="\n",
            n=1,
        ),
        chat("c-max", max_tokens=7),
        {"custom_id": "g", "method": "POST", "url": "/v1/completions",
         "body": {"model": "m", "prompt": "Once", "max_tokens": 5}},
        {"custom_id": "g-list", "method": "POST", "url": "/v1/completions",
         "body": {"prompt": ["Twice"]}},
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": "hello"}},
        {"custom_id": "e-list", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["x y"]}},
    ]  # fmt: skip
    c, c_max, g, g_list, e, e_list = tasks(tmp_path, lines)
    assert (c.task_id, c.task_type, c.rejected) == ("c", "chat", None)
    assert c.messages == (("system", "Be brief."), ("user", "Capital of France?"))
    assert dict(c.params) == {
        "max_new_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["\n"],
    }
    assert dict(c_max.params) == {"max_new_tokens": 7}
    assert (g.task_type, g.prompt, dict(g.params)) == ("generate", "Once", {"max_new_tokens": 5})
    assert g_list.prompt == "Twice"
    assert (e.task_type, e.prompt, e_list.prompt) == ("embed", "hello", "x y")
    pb = rendered_to_pb(e, "m", "job")
    assert pb.task_type == task_pb2.TASK_TYPE_EMBED and not pb.HasField("rejected")


def test_the_job_task_type_follows_the_first_line_and_job_params_are_defaults(tmp_path):
    lines = [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": "a"}},
             chat("c"), chat("c2", max_tokens=3)]  # fmt: skip
    job = load_job(write(tmp_path, lines, "params: {max_new_tokens: 20}\n"), root=tmp_path)
    assert job.task == "embed"
    _, c, c2 = expand(job)
    assert c.params["max_new_tokens"] == 20 and c2.params["max_new_tokens"] == 3


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            {"custom_id": "u", "method": "POST", "url": "/v1/images/generations", "body": {}},
            "line 1 (custom_id 'u'): url '/v1/images/generations' is not supported",
        ),
        (
            {**chat("m"), "method": "GET"},
            "line 1 (custom_id 'm'): method 'GET' is not supported; only POST",
        ),
        (chat("n", n=2), "line 1 (custom_id 'n'): n=2: only n=1 is supported"),
        (chat("t", temperature=9), "line 1 (custom_id 't'): body.temperature:"),
        (chat("r", messages=[{"role": "tool", "content": "x"}]), "body.messages[0].role 'tool'"),
        (chat("x", messages=[]), "body.messages must be a non-empty list"),
        (
            {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}},
            "body.input: a list of 2 items",
        ),
        (
            {"custom_id": "p", "method": "POST", "url": "/v1/completions", "body": {"prompt": 3}},
            "body.prompt must be a string",
        ),
    ],
)  # fmt: skip
def test_a_line_that_cannot_run_fails_alone_naming_its_line(tmp_path, line, expected):
    first, good = tasks(tmp_path, [line, chat("ok")])
    assert good.rejected is None
    assert first.rejected is not None and expected in first.rejected, first.rejected
    assert first.rejected.startswith("requests.jsonl line 1 ")
    pb = rendered_to_pb(first, "m", "job")
    assert pb.rejected.code == "INVALID_ARGUMENT" and pb.rejected.message == first.rejected


@pytest.mark.parametrize(
    ("lines", "expected", "line_no"),
    [
        ([chat("a"), "{not json"], "invalid JSON", 2),
        ([chat("a"), "[1, 2]"], "expected a JSON object per line", 2),
        ([chat("a"), "", chat("b"), chat("a")], "line 4: duplicate custom_id 'a', also on line 1", 4),
        ([{"custom_id": "a", "method": "POST", "url": "/v1/completions"}],
         "line 1 (custom_id 'a'): body is missing", 1),
        ([{"custom_id": "a", "url": "/v1/completions", "body": "x"}], "body is a str, not an object", 1),
        ([{"url": "/v1/completions", "body": {}}], "line 1: custom_id is missing", 1),
        ([{"custom_id": 5, "body": {}}], "custom_id is int, not a string", 1),
    ],
)  # fmt: skip
def test_a_line_the_file_cannot_have_is_a_problem_naming_the_line(
    tmp_path, lines, expected, line_no
):
    problems = [p for p in tasks(tmp_path, lines) if isinstance(p, Problem)]
    assert len(problems) == 1
    assert expected in problems[0].message
    assert (problems[0].file, problems[0].line) == ("requests.jsonl", line_no)
    with pytest.raises(JobFileError, match=r"requests\.jsonl"):
        list(expand(load_job(tmp_path / "job.yaml", root=tmp_path)))


def test_templates_and_ids_are_refused_with_openai_batch(tmp_path):
    job = write(tmp_path, [chat("a")])
    job.write_text(job.read_text() + 'template: "{{ x }}"\n')
    with pytest.raises(JobFileError, match="template is not used with format openai-batch"):
        load_job(job, root=tmp_path)


def test_unknown_body_fields_and_other_models_are_warned_about(tmp_path):
    lines = [chat("a", logprobs=True), chat("b", logprobs=True, tools=[]), chat("c")]
    lines[2]["body"]["model"] = "gpt-4o"
    job = load_job(write(tmp_path, lines), root=tmp_path)
    warnings = scan_warnings(job.input_file_path(), "m", job.limits())
    assert warnings == [
        "requests.jsonl: body field 'logprobs' is not supported and is ignored (2 line(s): 1, 2)",
        "requests.jsonl: body field 'tools' is not supported and is ignored (1 line(s): 2)",
        "requests.jsonl: body.model 'gpt-4o' (first on line 3) is not the job's model; m runs every line",
    ]  # fmt: skip
    assert all(t.rejected is None for t in expand(job))  # ignored, not refused


def test_the_example_requests_file_expands_cleanly():
    job = load_job(ROOT / "examples" / "openai" / "batch.yaml", root=ROOT)
    types = [t.task_type for t in expand(job)]
    assert types == ["chat", "chat", "generate", "embed", "embed"]


# ---- output ---------------------------------------------------------------------------


def item(
    task_type: int, state: int = gateway_pb2.TASK_STATE_SUCCEEDED, **output
) -> gateway_pb2.JobResult:
    result = task_pb2.TaskResult(
        task_type=task_type, usage=task_pb2.Usage(prompt_tokens=7, completion_tokens=3), **output
    )
    return gateway_pb2.JobResult(seq=1, task_id="req-1", state=state, result=result, attempts=1)


def convert(pb: gateway_pb2.JobResult, job_type: str = "chat") -> tuple[bool, dict]:
    return openai_line(pb, result_line(pb), "m", job_type, "job1")


def check_envelope(line: dict) -> str:
    """The batch output line's own fields, as OpenAI documents them."""
    assert set(line) == {"id", "custom_id", "response", "error"}
    assert line["id"].startswith("batch_req_") and line["custom_id"] == "req-1"
    assert line["error"] is None
    response = line["response"]
    assert set(response) == {"status_code", "request_id", "body"}
    assert response["status_code"] == 200 and response["request_id"].startswith("req_")
    return response["body"]


def test_a_chat_result_is_a_chat_completion():
    text = task_pb2.TextOutput(text="Paris", finish_reason=task_pb2.FINISH_REASON_STOP)
    ok, line = convert(item(task_pb2.TASK_TYPE_CHAT, text=text))
    body = check_envelope(line)
    assert ok
    assert set(body) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "system_fingerprint",
    }
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int) and body["model"] == "m"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_a_completion_result_is_a_text_completion():
    text = task_pb2.TextOutput(text=" upon", finish_reason=task_pb2.FINISH_REASON_LENGTH)
    _, line = convert(item(task_pb2.TASK_TYPE_GENERATE, text=text))
    body = check_envelope(line)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"] == [
        {"index": 0, "text": " upon", "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"]["total_tokens"] == 10


def test_an_embedding_result_is_a_list_of_one_embedding():
    _, line = convert(
        item(task_pb2.TASK_TYPE_EMBED, embedding=task_pb2.EmbedOutput(values=[0.5, -0.25]))
    )
    body = check_envelope(line)
    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
        "model": "m",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_a_result_without_its_type_takes_the_jobs():
    text = task_pb2.TextOutput(text="x")
    _, line = convert(item(task_pb2.TASK_TYPE_UNSPECIFIED, text=text), job_type="generate")
    assert line["response"]["body"]["object"] == "text_completion"


def test_a_failed_result_is_an_error_line():
    error = task_pb2.TaskError(code="INVALID_ARGUMENT", message="requests.jsonl line 3: n=2")
    ok, line = convert(item(task_pb2.TASK_TYPE_CHAT, gateway_pb2.TASK_STATE_FAILED, error=error))
    assert not ok
    assert line["response"] is None
    assert line["error"] == {"code": "invalid_request", "message": "requests.jsonl line 3: n=2"}
    error = task_pb2.TaskError(code="PROMPT_TOO_LONG", message="long")
    _, line = convert(item(task_pb2.TASK_TYPE_CHAT, gateway_pb2.TASK_STATE_FAILED, error=error))
    assert line["error"]["code"] == "context_length_exceeded"
