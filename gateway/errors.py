"""The gateway's one error policy: domain exceptions to gRPC status codes with
rich details (google.rpc.BadRequest, RetryInfo). INTERNAL means a bug."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc
from batchinfer.v1 import gateway_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.jobfile import JobFileError, Problem
from gateway.submission import AdmissionError

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """No such job (or template)."""


class FailedPrecondition(Exception):
    """The request is well formed but the job is not in a state that allows it."""


class Draining(Exception):
    """The gateway is shutting down: it takes no new work (retry; another replica or the
    restarted gateway will)."""


class PermissionDenied(Exception):
    """The caller is known but may not do this; the message names the field it may not use."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AlreadyExists(Exception):
    """The name or key is taken by something else in the caller's tenant."""


class ResourceExhausted(Exception):
    """The client already holds as much of the gateway as one client may (the message
    names the limit); it may retry once it holds less."""


class DeadlineExceeded(Exception):
    """The client took longer than the gateway gives it (the message names the limit)."""


class InvalidArgument(ValueError):
    """A request field has a value the gateway cannot use."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def bad_request(message: str, violations: list[tuple[str, str]], *extra: Any) -> status_pb2.Status:
    details = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message=message,
        details=[_packed(details), *(_packed(e) for e in extra)],
    )


def job_file_problems(problems: list[Problem]) -> gateway_pb2.JobFileProblems:
    """The structured twin of a JobFileError's BadRequest: file, line, column, row."""
    return gateway_pb2.JobFileProblems(
        problems=[
            gateway_pb2.JobFileProblem(
                message=p.text(),
                file=p.file or "",
                line=p.line or 0,
                column=p.column or 0,
                field=p.field or "",
                row=p.row or 0,
            )
            for p in problems
        ]
    )


def status_for(exc: BaseException) -> status_pb2.Status | None:
    """The status a domain exception maps to; None for a bug."""
    if isinstance(exc, JobFileError):
        violations = []
        for problem in exc.problems:
            field = problem.field or ""
            if problem.row is not None:
                field = f"inputs[row {problem.row}]" + (f".{field}" if field else "")
            violations.append((field or (problem.file or "job"), str(problem)))
        first = str(exc.problems[0]) if exc.problems else str(exc)
        more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
        return bad_request(
            f"invalid job file: {first}{more}", violations, job_file_problems(exc.problems)
        )
    if isinstance(exc, InvalidArgument):
        return bad_request(str(exc), [(exc.field, exc.description)])
    if isinstance(exc, NotFound):
        return status_pb2.Status(code=code_pb2.NOT_FOUND, message=str(exc))
    if isinstance(exc, PermissionDenied):
        return status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=str(exc))
    if isinstance(exc, AlreadyExists):
        return status_pb2.Status(code=code_pb2.ALREADY_EXISTS, message=str(exc))
    if isinstance(exc, FailedPrecondition):
        return status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=str(exc))
    if isinstance(exc, Draining):
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE, message=str(exc), details=[_packed(retry)]
        )
    if isinstance(exc, ResourceExhausted):
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1))
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc), details=[_packed(retry)]
        )
    if isinstance(exc, DeadlineExceeded):
        return status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED, message=str(exc))
    if isinstance(exc, AdmissionError):
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(exc.retry_after_s or 30))
        )
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc), details=[_packed(retry)]
        )
    return None


# A status travels in the trailers, which gRPC clients cap at 8 KiB (16 KiB hard): past
# that the client sees RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"
# instead of the answer. The message goes twice (grpc-message, and inside the base64
# status), so it and the details are cut to fit when they quote too much of a request.
MAX_STATUS_MESSAGE_BYTES = 1024
MAX_STATUS_BYTES = 4096


def _cut(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "..."


def fitted(status: status_pb2.Status) -> status_pb2.Status:
    """The status cut to fit in a client's trailers: the message to 1 KiB, then the texts
    in its details shorter and shorter, then its last details dropped."""
    status.message = _cut(status.message, MAX_STATUS_MESSAGE_BYTES)
    for width in (1000, 300, 100, 40):
        if status.ByteSize() <= MAX_STATUS_BYTES:
            return status
        for packed in status.details:
            _cut_detail(packed, width)
    while status.ByteSize() > MAX_STATUS_BYTES and len(status.details) > 0:
        del status.details[-1]
    return status


def _cut_detail(packed: any_pb2.Any, width: int) -> None:
    bad = error_details_pb2.BadRequest()
    problems = gateway_pb2.JobFileProblems()
    if packed.Unpack(bad):
        for violation in bad.field_violations:
            violation.field = _cut(violation.field, width)
            violation.description = _cut(violation.description, width)
        packed.Pack(bad)
    elif packed.Unpack(problems):
        for problem in problems.problems:
            problem.message = _cut(problem.message, width)
            problem.field = _cut(problem.field, width)
            problem.file = _cut(problem.file, width)
        packed.Pack(problems)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    status = status_for(exc)
    if status is None:
        log.exception("bug while serving a request", exc_info=exc)
        status = status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"internal error: {type(exc).__name__}"
        )
    await context.abort_with_status(rpc_status.to_status(fitted(status)))


def rpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Applies the error policy to a unary or streaming servicer method."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:
                await _abort(context, exc)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    return unary_wrapper


# ------------------------------------------------------- undecodable requests


class _Undecodable:
    """What a request that did not parse becomes, so the handler can answer for it."""

    def __init__(self, message: str) -> None:
        self.message = message


def _decoding(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    kind = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = kind.full_name if kind is not None else "request"

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # DecodeError, or a string field that is not UTF-8
            return _Undecodable(f"the request is not a valid {name} message: {exc}")

    return decode


async def _refuse(context: grpc.aio.ServicerContext, request: _Undecodable) -> None:
    status = bad_request(request.message, [("request", request.message)])
    await context.abort_with_status(rpc_status.to_status(fitted(status)))


async def _checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await _refuse(context, request)
        yield request


def _unary_in(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await _refuse(context, request)
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response

        return stream_out

    async def unary_out(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(context, request)
        return await behaviour(request, context)

    return unary_out


def _stream_in(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_out(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            responses = behaviour(_checked(requests, context), context)
            async with contextlib.aclosing(responses):
                async for response in responses:
                    yield response

        return stream_out

    async def unary_out(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(_checked(requests, context), context)

    return unary_out


class RequestDecoding(grpc.aio.ServerInterceptor):
    """A request that does not parse is the client's mistake: INVALID_ARGUMENT naming the
    message type, where grpc's aio server would answer UNKNOWN with its DecodeError."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = _decoding(handler.request_deserializer)
        out = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary_in(handler.unary_unary), decode, out)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _unary_in(handler.unary_stream), decode, out
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _stream_in(handler.stream_unary), decode, out
            )
        return grpc.stream_stream_rpc_method_handler(_stream_in(handler.stream_stream), decode, out)
