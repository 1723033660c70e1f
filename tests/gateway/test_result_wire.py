"""StreamResults responses assembled as bytes read back as the messages protobuf builds."""

from __future__ import annotations

from batchinfer.v1 import gateway_pb2, task_pb2

from gateway.result_wire import job_result_head, stream_results_bytes
from gateway.store import ResultRecord, TaskState


def record(seq: int, result: task_pb2.TaskResult, state: TaskState) -> ResultRecord:
    return ResultRecord(
        seq=seq,
        job_id="j",
        task_id=f"t{seq}",
        state=state,
        attempts=2,
        result=result.SerializeToString(),
        prompt_tokens=3,
        completion_tokens=4,
        finished_at=1.0,
        reused=False,
        requeues=1,
    )


def test_assembled_bytes_parse_to_the_response_protobuf_would_build() -> None:
    results = [
        task_pb2.TaskResult(task_id="t1", text=task_pb2.TextOutput(text="short")),
        # Lengths past one varint byte (128) and past two (16384) in both wrappers.
        task_pb2.TaskResult(task_id="t2", text=task_pb2.TextOutput(text="x" * 300)),
        task_pb2.TaskResult(task_id="t3", text=task_pb2.TextOutput(text="é" * 20000)),
        task_pb2.TaskResult(task_id="t4", error=task_pb2.TaskError(code="INTERNAL", message="m")),
        task_pb2.TaskResult(),  # an empty stored result still carries its field
    ]
    states = [TaskState.SUCCEEDED] * 3 + [TaskState.FAILED, TaskState.SUCCEEDED]
    records = [record(i + 1, r, s) for i, (r, s) in enumerate(zip(results, states, strict=True))]
    expected = gateway_pb2.StreamResultsResponse(
        results=[
            gateway_pb2.JobResult(
                seq=r.seq,
                task_id=r.task_id,
                state=int(r.state),
                result=task_pb2.TaskResult.FromString(r.result),
                attempts=r.attempts,
                requeues=r.requeues,
            )
            for r in records
        ]
    )
    got = gateway_pb2.StreamResultsResponse.FromString(stream_results_bytes(records))
    assert got == expected
    assert all(j.HasField("result") for j in got.results)


def test_the_head_holds_every_field_but_the_result() -> None:
    head = job_result_head(record(7, task_pb2.TaskResult(task_id="x"), TaskState.SUCCEEDED))
    assert not head.HasField("result")
    assert (head.seq, head.task_id, head.attempts, head.requeues) == (7, "t7", 2, 1)


def test_no_results_is_an_empty_response() -> None:
    assert stream_results_bytes([]) == b""
