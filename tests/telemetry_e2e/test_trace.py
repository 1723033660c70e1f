"""One trace joins a job's submission, its tasks, the gateway's dispatches and the
inference server's batches and model calls (real processes, real OTLP export)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.telemetry.otlp_receiver import attributes_dict
from tests.telemetry_e2e.harness import GATEWAY, MAX_BATCH, SERVER, TASKS, Capture

pytestmark = pytest.mark.slow


def job_span(traced: Capture) -> trace_pb2.Span:
    spans = [
        s
        for s in traced.spans(GATEWAY, "job")
        if attributes_dict(s.attributes).get("batchinfer.job.id") == traced.job_id
    ]
    assert len(spans) == 1, [s.name for s in traced.spans(GATEWAY)]
    return spans[0]


def test_job_span_carries_the_job_and_its_token_usage(traced: Capture) -> None:
    attributes = attributes_dict(job_span(traced).attributes)
    assert attributes["gen_ai.request.model"] == "echo-model"
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["batchinfer.tasks.succeeded"] == TASKS
    usage = [r["usage"] for r in traced.results]
    assert attributes["gen_ai.usage.input_tokens"] == sum(u["prompt_tokens"] for u in usage) > 0
    assert (
        attributes["gen_ai.usage.output_tokens"] == sum(u["completion_tokens"] for u in usage) > 0
    )


def test_the_submission_opens_the_job_trace(traced: Capture) -> None:
    job = job_span(traced)
    submit = [s for s in traced.spans(GATEWAY) if s.span_id == job.parent_span_id]
    assert submit and submit[0].name.endswith("/SubmitJob"), "job span is not under SubmitJob"
    assert submit[0].trace_id == job.trace_id


def test_task_spans_sit_under_the_job_span(traced: Capture) -> None:
    job = job_span(traced)
    tasks = traced.spans(GATEWAY, "task")
    assert len(tasks) == TASKS
    assert {s.trace_id for s in tasks} == {job.trace_id}
    assert {s.parent_span_id for s in tasks} == {job.span_id}
    attributes = [attributes_dict(s.attributes) for s in tasks]
    assert {a["batchinfer.task.id"] for a in attributes} == {r["id"] for r in traced.results}
    for a in attributes:
        assert a["batchinfer.job.id"] == traced.job_id
        assert a["gen_ai.request.model"] == "echo-model"
        assert a["server.address"].startswith("127.0.0.1:")
        assert a["gen_ai.usage.output_tokens"] > 0


def test_dispatch_spans_link_every_task_span(traced: Capture) -> None:
    job = job_span(traced)
    task_ids = {s.span_id for s in traced.spans(GATEWAY, "task")}
    dispatches = traced.spans(GATEWAY, "dispatch")
    assert dispatches
    assert {s.parent_span_id for s in dispatches} == {job.span_id}
    linked = [link.span_id for s in dispatches for link in s.links]
    assert sorted(linked) == sorted(task_ids)  # each task sent once, in one dispatch
    sizes = [attributes_dict(s.attributes)["batchinfer.batch.size"] for s in dispatches]
    assert sizes == [len(s.links) for s in dispatches]


def test_server_batch_spans_link_the_task_spans_of_the_job(traced: Capture) -> None:
    job = job_span(traced)
    task_ids = {s.span_id for s in traced.spans(GATEWAY, "task")}
    batches = traced.spans(SERVER, "batch")
    assert batches, "the inference server exported no batch span"
    links = [link for s in batches for link in s.links]
    assert {link.trace_id for link in links} == {job.trace_id}
    assert sorted(link.span_id for link in links) == sorted(task_ids)
    for span in batches:
        attributes = attributes_dict(span.attributes)
        assert 1 <= attributes["batchinfer.batch.size"] <= MAX_BATCH
        assert attributes["batchinfer.batch.size"] == len(span.links)
        assert attributes["gen_ai.request.model"] == "echo-model"
        assert attributes["gen_ai.operation.name"] == "text_completion"
        assert attributes["server.address"]


def test_model_call_is_a_child_of_its_batch_span(traced: Capture) -> None:
    batches = {s.span_id: s for s in traced.spans(SERVER, "batch")}
    forwards = traced.spans(SERVER, "model.forward")
    assert len(forwards) == len(batches)
    for span in forwards:
        parent = batches[span.parent_span_id]
        assert span.trace_id == parent.trace_id
        attributes = attributes_dict(span.attributes)
        assert attributes["gen_ai.usage.input_tokens"] > 0
        assert attributes["gen_ai.usage.output_tokens"] > 0
