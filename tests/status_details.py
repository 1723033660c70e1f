"""Reading google.rpc rich error details (BadRequest, RetryInfo, ...) off a failed call."""

from __future__ import annotations

from typing import TypeVar

import grpc
from grpc_status import rpc_status

D = TypeVar("D")


def status_detail(exc: grpc.aio.AioRpcError, kind: type[D]) -> D:
    """The call's first detail of type `kind` (e.g. error_details_pb2.BadRequest)."""
    status = rpc_status.from_call(exc)
    assert status is not None, "the error carries no google.rpc.Status"
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):  # type: ignore[attr-defined]
            found = kind()
            detail.Unpack(found)
            return found
    raise AssertionError(f"no {kind.__name__} detail")
