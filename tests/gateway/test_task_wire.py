"""Task batches assembled as bytes read back as the ProcessRequest the gateway used to
build by parsing each stored task, setting its fields and serialising it all again."""

from __future__ import annotations

import pytest
from batchinfer.v1 import inference_pb2, task_pb2

from gateway.task_wire import batch_request, task_bytes

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

STORED = [
    task_pb2.Task(
        task_id="row-1",
        task_type=task_pb2.TASK_TYPE_GENERATE,
        model="m",
        prompt="hello",
        params=task_pb2.GenerationParams(max_new_tokens=16, stop=["\n"]),
        job_id="job-1",
    ),
    # Lengths past one varint byte (128) and past two (16384), chat messages, no type.
    task_pb2.Task(
        task_id="x" * 300,
        messages=[task_pb2.ChatMessage(role="user", content="é" * 20000)],
        job_id="job-1",
    ),
    task_pb2.Task(),  # an empty stored task still gets its fields
]


def old_path(
    payload: bytes, wire_id: str, attempt: int, traceparent: str, tracestate: str
) -> task_pb2.Task:
    task = task_pb2.Task.FromString(payload)
    task.task_id = wire_id
    task.attempt = attempt
    if traceparent:
        task.trace_context.traceparent = traceparent
        if tracestate:
            task.trace_context.tracestate = tracestate
    return task


@pytest.mark.parametrize(
    ("wire_id", "attempt", "traceparent", "tracestate"),
    [
        ("1", 1, "", ""),
        ("123456789", 300, TRACEPARENT, ""),
        ("7", 2, TRACEPARENT, "vendor=a,other=b"),
        ("8", 0, "", ""),  # an explicit 0 parses as the default
        ("9", -1, "", ""),  # int32's negative encoding, though no attempt is negative
    ],
)
def test_appended_fields_parse_to_the_task_the_old_path_built(
    wire_id: str, attempt: int, traceparent: str, tracestate: str
) -> None:
    for stored in STORED:
        payload = stored.SerializeToString()
        sent = task_bytes(payload, wire_id, attempt, traceparent, tracestate)
        expected = old_path(payload, wire_id, attempt, traceparent, tracestate)
        assert task_pb2.Task.FromString(sent) == expected
        assert task_pb2.Task.FromString(sent).trace_context.traceparent == traceparent


def test_a_stored_trace_context_merges_as_the_old_path_set_it() -> None:
    # Stored tasks carry none; if one did, appending merges field by field, as setting did.
    payload = task_pb2.Task(
        task_id="a", trace_context=task_pb2.TraceContext(traceparent="old", tracestate="kept")
    ).SerializeToString()
    sent = task_bytes(payload, "5", 1, TRACEPARENT)
    assert task_pb2.Task.FromString(sent) == old_path(payload, "5", 1, TRACEPARENT, "")
    assert task_pb2.Task.FromString(sent).trace_context.tracestate == "kept"


def test_batch_request_parses_to_the_process_request_protobuf_would_build() -> None:
    payloads = [t.SerializeToString() for t in STORED]
    sent = [task_bytes(p, str(i), i + 1, TRACEPARENT if i else "") for i, p in enumerate(payloads)]
    expected = inference_pb2.ProcessRequest(
        batch=inference_pb2.TaskBatch(
            tasks=[
                old_path(p, str(i), i + 1, TRACEPARENT if i else "", "")
                for i, p in enumerate(payloads)
            ]
        )
    )
    parsed = inference_pb2.ProcessRequest.FromString(batch_request(sent))
    assert parsed == expected and parsed.WhichOneof("kind") == "batch"
    expected.batch.first = True
    assert inference_pb2.ProcessRequest.FromString(batch_request(sent, first=True)) == expected
    assert inference_pb2.ProcessRequest.FromString(batch_request([])).WhichOneof("kind") == "batch"
