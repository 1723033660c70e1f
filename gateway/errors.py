"""The gateway's one error policy: domain exceptions to gRPC status codes with
rich details (google.rpc.BadRequest, RetryInfo). INTERNAL means a bug."""

from __future__ import annotations

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
    if isinstance(exc, AdmissionError):
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=int(exc.retry_after_s or 30))
        )
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc), details=[_packed(retry)]
        )
    return None


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    status = status_for(exc)
    if status is None:
        log.exception("bug while serving a request", exc_info=exc)
        status = status_pb2.Status(
            code=code_pb2.INTERNAL, message=f"internal error: {type(exc).__name__}"
        )
    await context.abort_with_status(rpc_status.to_status(status))


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
