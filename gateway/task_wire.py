"""Tasks sent to the servers as bytes: the stored payload, then the fields set per send.

A task is stored as the Task message serialised at expansion. Parsing it to set the wire
id, the attempt and the trace context, then putting it in a TaskBatch and a
ProcessRequest (two copies) and serialising it all again, cost the gateway more per task
than the rest of sending. Protobuf parsing lets the last value of a scalar field win and
merges a message field that occurs twice, so the stored bytes followed by those fields
parse to the Task the old path built (tests/gateway/test_task_wire.py compares the two);
a ProcessRequest is then field 1 (batch) around field 1 (tasks) of each.
"""

from __future__ import annotations

from gateway.result_wire import varint

# Task: task_id = 1 (string), trace_context = 9 (TraceContext), attempt = 10 (int32);
# TraceContext: traceparent = 1, tracestate = 2; TaskBatch: tasks = 1, first = 2;
# ProcessRequest.batch = 1.
_TASK_ID = bytes([1 << 3 | 2])
_TRACE_CONTEXT = bytes([9 << 3 | 2])
_ATTEMPT = bytes([10 << 3 | 0])
_TRACEPARENT = bytes([1 << 3 | 2])
_TRACESTATE = bytes([2 << 3 | 2])
_TASKS = bytes([1 << 3 | 2])
_FIRST = bytes([2 << 3 | 0, 1])  # TaskBatch.first = 2 (bool), true
_BATCH = bytes([1 << 3 | 2])


def _delimited(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def task_bytes(
    payload: bytes, wire_id: str, attempt: int, traceparent: str = "", tracestate: str = ""
) -> bytes:
    """The stored Task with its wire id, attempt and (when traced) trace context set."""
    # int32 on the wire: a negative value is its 64-bit two's complement.
    out = payload + _delimited(_TASK_ID, wire_id.encode()) + _ATTEMPT + varint(attempt % (1 << 64))
    if traceparent:
        trace = _delimited(_TRACEPARENT, traceparent.encode())
        if tracestate:
            trace += _delimited(_TRACESTATE, tracestate.encode())
        out += _delimited(_TRACE_CONTEXT, trace)
    return out


def batch_request(tasks: list[bytes], first: bool = False) -> bytes:
    """A serialised ProcessRequest holding one TaskBatch of these serialised Tasks
    (`first`: the server runs it ahead of what it holds)."""
    batch = b"".join(_delimited(_TASKS, task) for task in tasks) + (_FIRST if first else b"")
    return _delimited(_BATCH, batch)
