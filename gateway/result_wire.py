"""StreamResults responses written as bytes around the stored results, never parsed.

A result is stored as the server serialised it (with the gateway's few edits, made once
in settle); parsing it back into a TaskResult only to serialise it again into a
JobResult cost the gateway a parse and a serialise of every result. Protobuf messages
concatenate: a JobResult is its own small fields, serialised by protobuf, followed by
the `result` field's tag, length and the stored bytes; a StreamResultsResponse is its
JobResults, each behind the `results` field's tag and length. A client reads exactly
what it read before (tests/gateway/test_result_wire.py compares the two).
"""

from __future__ import annotations

from typing import Any

import grpc
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.store import ResultRecord

# Length-delimited (wire type 2) tags: JobResult.result = 4, StreamResultsResponse.results = 1.
_RESULT_TAG = bytes([4 << 3 | 2])
_RESULTS_TAG = bytes([1 << 3 | 2])
_PRE_ENCODED = ("StreamResults",)


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def job_result_head(record: ResultRecord) -> gateway_pb2.JobResult:
    """Every JobResult field but `result`, from the store's columns."""
    return gateway_pb2.JobResult(
        seq=record.seq,
        task_id=record.task_id,
        state=int(record.state),
        attempts=record.attempts,
        requeues=record.requeues,
    )


def job_result_bytes(record: ResultRecord) -> bytes:
    head = job_result_head(record).SerializeToString()
    return head + _RESULT_TAG + varint(len(record.result)) + record.result


def stream_results_bytes(records: list[ResultRecord], extras: list[bytes] | None = None) -> bytes:
    """A serialised StreamResultsResponse holding these results; `extras[i]` (serialised
    JobResult fields the stored bytes lack: model, finished_at, ...) is appended to the
    i-th (concatenated messages merge)."""
    parts: list[bytes] = []
    for i, record in enumerate(records):
        body = job_result_bytes(record) + (extras[i] if extras else b"")
        parts += (_RESULTS_TAG, varint(len(body)), body)
    return b"".join(parts)


def _serialize(response: Any) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


class _Capture:
    """Stands in for a server while the generated code registers its handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, _handlers: Any) -> None:
        pass  # the same handlers come again below, by name

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_gateway_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """gateway_pb2_grpc's registration, with StreamResults sending the bytes it yields
    as they are."""
    capture = _Capture()
    gateway_pb2_grpc.add_BatchGatewayServicer_to_server(servicer, capture)  # type: ignore[arg-type]
    handlers = capture.handlers
    for method in _PRE_ENCODED:
        handlers[method] = handlers[method]._replace(response_serializer=_serialize)  # type: ignore[attr-defined]
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, handlers),)
    )
    server.add_registered_method_handlers(capture.service, handlers)
