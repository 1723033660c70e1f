"""Who is calling, in one place: a server interceptor that authenticates every call of the
public API (bearer token or client certificate), makes the caller known to the servicer,
puts it on the call's span and writes the audit log (logger `gateway.audit`).

Health and reflection stay open. Without a principals file and without client
certificates every call is the one trusted user (`ANONYMOUS`), as before; the audit log
is written all the same. The token is never logged, put on a span or echoed back.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from opentelemetry import trace

from gateway.principals import ANONYMOUS, ROLES, Principal, PrincipalsFile

audit_log = logging.getLogger("gateway.audit")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
CONTROL_RPCS = frozenset(
    {"SubmitJob", "CancelJob", "PauseJob", "ResumeJob", "UpdateJob", "RegisterTemplate"}
)
# Outcomes of a read that the audit log records: the caller was turned away.
REFUSED = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)

_caller: contextvars.ContextVar[Principal] = contextvars.ContextVar("caller", default=ANONYMOUS)
_notes: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "audit_notes", default=None
)


def caller() -> Principal:
    """The principal of the call being served (ANONYMOUS outside one)."""
    return _caller.get()


def note(**fields: str) -> None:
    """Adds fields (tenant, job, template) to the current call's audit line and span."""
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)
    span = trace.get_current_span()
    if "tenant" in fields:
        span.set_attribute("batchinfer.tenant", fields["tenant"])
    if "job" in fields:
        span.set_attribute("batchinfer.job.id", fields["job"])


class Unauthenticated(Exception):
    """No credentials, or credentials nobody is known by. The message never holds them."""


class Authenticator:
    """Finds the principal of a call from its `authorization` metadata and its TLS peer.

    principals: the principals file, or None. client_certs: the port requires client
    certificates from a CA (the TLS handshake has verified them before any call)."""

    def __init__(self, principals: PrincipalsFile | None, client_certs: bool) -> None:
        self.principals = principals
        self.client_certs = client_certs

    @property
    def enabled(self) -> bool:
        return self.principals is not None or self.client_certs

    def authenticate(
        self, metadata: Sequence[tuple[str, Any]] | None, auth_context: dict[str, list[bytes]]
    ) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is not None and self.principals is not None:
            scheme, _, token = str(header).strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the authorization metadata must be `Bearer <token>`")
            principal = self.principals.get().by_bearer(token.strip())
            if principal is None:
                raise Unauthenticated("unknown bearer token")
            return principal
        cn = _common_name(auth_context) if self.client_certs else None
        if cn is not None:
            if self.principals is None:  # certificates alone: each holder is a trusted user
                return Principal(name=cn, admin=True, roles=ROLES, cert_cn=cn)
            principal = self.principals.get().by_cn.get(cn)
            if principal is None:
                raise Unauthenticated(f"no principal has cert_cn {cn!r}")
            return principal
        raise Unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` metadata"
            " (batchinfer --token or BATCHINFER_TOKEN)"
        )


def _common_name(auth_context: dict[str, list[bytes]]) -> str | None:
    values = auth_context.get("x509_common_name") or []
    return values[0].decode("utf-8", "replace") if values else None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates each call of the public API before its servicer method runs."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        return _wrapped(handler, _Guard(self.authenticator, method.rsplit("/", 1)[-1]))


class _Guard:
    """One call: authenticate, serve, then write its audit line."""

    def __init__(self, authenticator: Authenticator, rpc: str) -> None:
        self.authenticator = authenticator
        self.rpc = rpc

    async def begin(self, context: grpc.aio.ServicerContext, request: Any) -> Principal:
        job = _job_id(request)
        notes: dict[str, str] = {"job": job} if job else {}
        _notes.set(notes)
        try:
            principal = self.authenticator.authenticate(
                context.invocation_metadata(), context.auth_context()
            )
        except Unauthenticated as exc:
            self.record(None, grpc.StatusCode.UNAUTHENTICATED, str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            raise  # abort raises; this line is for the type checker
        _caller.set(principal)
        span = trace.get_current_span()
        if principal.name:
            span.set_attribute("enduser.id", principal.name)
        return principal

    def end(
        self,
        principal: Principal,
        context: grpc.aio.ServicerContext,
        request: Any,
        response: Any,
        error: BaseException | None,
    ) -> None:
        if isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        elif error is not None:
            code = _code_of(context) or grpc.StatusCode.UNKNOWN
        else:
            code = grpc.StatusCode.OK
        if self.rpc not in CONTROL_RPCS and code not in REFUSED:
            return
        notes = _notes.get() or {}
        job = notes.get("job") or _job_id(request) or _job_id(getattr(response, "job", None))
        if job:
            notes["job"] = job
        detail = (_details_of(context) or "") if code != grpc.StatusCode.OK else ""
        self.record(principal, code, detail)

    def record(self, principal: Principal | None, code: grpc.StatusCode, detail: str) -> None:
        notes = _notes.get() or {}
        who = "(unauthenticated)" if principal is None else (principal.name or "(anonymous)")
        fields = {"principal": who, "rpc": self.rpc, **notes, "outcome": code.name}
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        if detail:
            text += f": {' '.join(detail.split())[:300]}"
        level = logging.INFO if code == grpc.StatusCode.OK else logging.WARNING
        extra = {f"batchinfer.audit.{k}": v for k, v in fields.items()}
        audit_log.log(level, "audit %s", text, extra=extra)


def _job_id(message: Any) -> str:
    value = getattr(message, "job_id", "") if message is not None else ""
    return value if isinstance(value, str) else ""


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except (AttributeError, RuntimeError):
        return None
    if isinstance(code, int):  # some versions hand back the numeric code
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return code  # type: ignore[no-any-return]


def _details_of(context: grpc.aio.ServicerContext) -> str | None:
    try:
        details = context.details()
    except (AttributeError, RuntimeError):
        return None
    return details.decode() if isinstance(details, bytes) else details


def _wrapped(handler: grpc.RpcMethodHandler, guard: _Guard) -> grpc.RpcMethodHandler:
    """The same handler with the guard around its behaviour, for each of the four kinds."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None or handler.stream_unary is not None:
        inner = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            principal = await guard.begin(context, request)
            response = None
            try:
                response = await inner(request, context)
            except BaseException as exc:
                guard.end(principal, context, request, None, exc)
                raise
            guard.end(principal, context, request, response, None)
            return response

        make = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler
        )
        return make(unary, **serializers)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        principal = await guard.begin(context, request)
        try:
            async for response in inner_stream(request, context):
                yield response
        except BaseException as exc:
            guard.end(principal, context, request, None, exc)
            raise
        guard.end(principal, context, request, None, None)

    make_stream = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream is not None
        else grpc.stream_stream_rpc_method_handler
    )
    return make_stream(streaming, **serializers)
