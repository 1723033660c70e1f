"""A client of the public API, used by the CLI: submit a job file with what it
refers to, follow its progress, and write its results exactly once each, even
across gateway restarts (the StreamResults cursor survives them).

While the gateway is out of reach the client keeps trying, with jittered
exponential backoff, for at most `reconnect_for_s` seconds per outage (one
deadline over every attempt, shared by the client's calls); then it raises
GatewayUnavailable."""

from __future__ import annotations

import asyncio
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import grpc
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.convert import result_line
from gateway.jobfile import JobSpec, load_job
from gateway.settings import KEEPALIVE_OPTIONS, MAX_MESSAGE_BYTES, message_size_options

UNARY_TIMEOUT_S = 30.0
SUBMIT_TIMEOUT_S = 600.0  # the upload of a large input file and the job's admission
UPLOAD_CHUNK = 256 * 1024
LIST_PAGE = 100  # jobs per ListJobs call at most (the gateway's cap)
RECONNECT_FOR_S = 30.0  # per outage of the gateway
INITIAL_BACKOFF_S, MAX_BACKOFF_S = 0.2, 3.0
# A unary call retries only UNAVAILABLE: after DEADLINE_EXCEEDED the gateway may have acted on it.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A stream that flowed this long and then broke (a proxy reloading, the connection's max
# age) is re-opened at once and unannounced: only a re-open that fails is an outage.
QUIET_REOPEN_AFTER_S = 1.0
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
# What a user can act on, from gRPC's transport text (first match wins).
_REASONS = (
    ("connection refused", "connection refused"),
    ("domain name not found", "unknown host"),
    ("resolv", "cannot resolve the host"),
    ("timed out", "connection timed out"),
    ("timeout", "connection timed out"),
    ("draining", "the gateway is shutting down"),
    ("goaway", "the gateway closed the connection"),
    ("handshake", "the TLS handshake failed; check --tls-ca, --tls-cert and --tls-key"),
    ("ssl", "the TLS handshake failed; check --tls-ca, --tls-cert and --tls-key"),
    ("socket closed", "connection lost"),
    ("connection reset", "connection lost"),
)
T = TypeVar("T")


class ResultSink(Protocol):
    """Where follow_results writes results when not as JSONL lines (openai_output.py)."""

    def write(self, item: gateway_pb2.JobResult, line: dict[str, Any]) -> None: ...

    def flush(self) -> None: ...


class GatewayUnavailable(Exception):
    """The gateway stayed out of reach for as long as the client was allowed to wait."""

    def __init__(self, address: str, reason: str, waited_s: float) -> None:
        super().__init__(f"cannot reach the gateway at {address} ({reason})")
        self.address = address
        self.reason = reason
        self.waited_s = waited_s


def unreachable_reason(exc: grpc.aio.AioRpcError) -> str:
    """A few words on why a call got UNAVAILABLE ("connection refused"), not gRPC's dump."""
    text = (exc.details() or "").lower()
    return next((reason for needle, reason in _REASONS if needle in text), "unavailable")


@dataclass
class LocalJob:
    """A job file read on the submitter's side, with everything it refers to."""

    path: Path
    spec: JobSpec
    text: str
    files: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)


def read_local_job(path: Path, variables: Mapping[str, str], profile: str | None) -> LocalJob:
    """Loads and checks the job file here (raises JobFileError), recording the
    files it extends so they travel with the submission."""
    path = Path(path)
    files: dict[str, str] = {}

    def read_file(relative: str) -> str:
        text = (path.parent / relative).read_text(encoding="utf-8")
        files[relative] = text
        return text

    spec = load_job(path, variables=variables, profile=profile, read_file=read_file)
    text = path.read_text(encoding="utf-8")
    # Only the variables the job files name travel: the rest of the environment stays here.
    named = set(_VARIABLE.findall(text)).union(*(_VARIABLE.findall(t) for t in files.values()))
    sent = {name: variables[name] for name in named if name in variables}
    return LocalJob(path=path, spec=spec, text=text, files=files, variables=sent)


# The published service config (docs/api.md, "Retries"): gRPC itself retries the unary
# calls that are safe to repeat on UNAVAILABLE, a few times over a few seconds; the
# client's own loop (reconnect_for_s) covers longer outages.
SERVICE_CONFIG = (Path(__file__).parent / "service_config.json").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Credentials:
    """How the client proves who it is and checks the gateway: a bearer token (sent as
    `authorization: Bearer ...` metadata on every call), and TLS: the CA that signed the
    gateway's certificate and, for mTLS, the client's own certificate and key."""

    token: str | None = field(default=None, repr=False)  # never printed
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Reads the PEM files (OSError names a missing one)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=self.tls_ca.read_bytes() if self.tls_ca else None,
            private_key=self.tls_key.read_bytes() if self.tls_key else None,
            certificate_chain=self.tls_cert.read_bytes() if self.tls_cert else None,
        )


NO_CREDENTIALS = Credentials()


def channel(address: str, credentials: Credentials = NO_CREDENTIALS) -> grpc.aio.Channel:
    # gRPC's default 4 MiB receive limit is less than a page of large results.
    options: list[tuple[str, Any]] = [*KEEPALIVE_OPTIONS, *message_size_options(MAX_MESSAGE_BYTES)]
    options += [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
    # gRPC's own reconnect backoff grows to 120 s; ours stays at 3 s, so keep its pace.
    options += [
        ("grpc.initial_reconnect_backoff_ms", int(INITIAL_BACKOFF_S * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF_S * 1000)),
    ]
    if credentials.tls:
        return grpc.aio.secure_channel(address, credentials.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(address, options=options)


class GatewayClient:
    def __init__(
        self,
        address: str,
        unary_timeout_s: float = UNARY_TIMEOUT_S,
        submit_timeout_s: float = SUBMIT_TIMEOUT_S,
        *,
        reconnect_for_s: float = RECONNECT_FOR_S,
        on_wait: Callable[[str, float], None] | None = None,
        on_back: Callable[[float], None] | None = None,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        """`on_wait(reason, seconds)` is told when the gateway goes out of reach and for how
        long the client will keep trying; `on_back(waited_s)` when it answers again.
        `credentials`: the token sent with every call, and TLS."""
        self.address = address
        self.unary_timeout_s = unary_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self.reconnect_for_s = reconnect_for_s
        self.on_wait = on_wait
        self.on_back = on_back
        self._outage_since: float | None = None
        self._attempts = 0
        self._metadata = credentials.metadata()
        self._channel = channel(address, credentials)
        self.stub = gateway_pb2_grpc.BatchGatewayStub(self._channel)

    async def _wait_out(self, exc: grpc.aio.AioRpcError) -> None:
        """Sleeps before the next attempt, or raises GatewayUnavailable once this outage
        has lasted reconnect_for_s."""
        now = asyncio.get_running_loop().time()
        if self._outage_since is None:
            self._outage_since, self._attempts = now, 0
            if self.on_wait is not None and self.reconnect_for_s > 0:
                self.on_wait(unreachable_reason(exc), self.reconnect_for_s)
        waited = now - self._outage_since
        if waited >= self.reconnect_for_s:
            raise GatewayUnavailable(self.address, unreachable_reason(exc), waited) from exc
        backoff = min(INITIAL_BACKOFF_S * 2**self._attempts, MAX_BACKOFF_S)
        self._attempts += 1
        await asyncio.sleep(min(backoff * (0.5 + random.random()), self.reconnect_for_s - waited))

    async def _reopen(self, exc: grpc.aio.AioRpcError, opened_at: float, delivered: bool) -> None:
        """Before a broken stream is opened again from its cursor (see QUIET_REOPEN_AFTER_S)."""
        lived = asyncio.get_running_loop().time() - opened_at
        if delivered and lived >= QUIET_REOPEN_AFTER_S and self._outage_since is None:
            return
        await self._wait_out(exc)

    def _reached(self) -> None:
        if self._outage_since is not None:
            waited = asyncio.get_running_loop().time() - self._outage_since
            self._outage_since = None
            if self.on_back is not None:
                self.on_back(waited)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                result = await attempt()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise
                await self._wait_out(exc)
            else:
                self._reached()
                return result

    async def call(self, method: str, request: Any) -> Any:
        """One unary call of the public API (`"GetJob"`, ...) under the client's deadline,
        retried while the gateway is out of reach (reconnect_for_s=0: not retried)."""
        return await self._retrying(
            lambda: getattr(self.stub, method)(
                request, timeout=self.unary_timeout_s, metadata=self._metadata
            )
        )

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    async def submit(
        self, job: LocalJob, *, profile: str | None = None, idempotency_key: str = ""
    ) -> gateway_pb2.Job:
        """Submits the job, again while the gateway is out of reach. Without a key of the
        caller's, a fresh one makes a retry whose first attempt did arrive return that job."""
        spec = gateway_pb2.JobSpec(
            job_yaml=job.text,
            variables=job.variables,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            profile=profile or "",
            filename=job.path.name,
            files=job.files,
        )
        input_path = job.spec.input_file_path()

        async def requests() -> AsyncIterator[gateway_pb2.SubmitJobRequest]:
            yield gateway_pb2.SubmitJobRequest(spec=spec)
            if input_path is not None:
                with input_path.open("rb") as handle:
                    while chunk := handle.read(UPLOAD_CHUNK):
                        yield gateway_pb2.SubmitJobRequest(input_chunk=chunk)

        response = await self._retrying(
            lambda: self.stub.SubmitJob(
                requests(), timeout=self.submit_timeout_s, metadata=self._metadata
            )
        )
        return response.job

    async def validate(
        self,
        spec: gateway_pb2.JobSpec,
        input_path: Path | None,
        show_tasks: int = 3,
    ) -> gateway_pb2.ValidateJobResponse:
        """The gateway's dry run of the job (ValidateJob); INVALID_ARGUMENT lists its problems."""

        async def requests() -> AsyncIterator[gateway_pb2.ValidateJobRequest]:
            yield gateway_pb2.ValidateJobRequest(spec=spec, show_tasks=show_tasks)
            if input_path is not None:
                with input_path.open("rb") as handle:
                    while chunk := handle.read(UPLOAD_CHUNK):
                        yield gateway_pb2.ValidateJobRequest(input_chunk=chunk)

        return await self._retrying(  # type: ignore[no-any-return]
            lambda: self.stub.ValidateJob(
                requests(), timeout=self.submit_timeout_s, metadata=self._metadata
            )
        )

    async def list_jobs(self, limit: int, tenant: str = "") -> list[gateway_pb2.Job]:
        """The newest `limit` jobs, newest first, following ListJobs pages (a page stops
        early when its jobs are large: huge idempotency keys)."""
        jobs: list[gateway_pb2.Job] = []
        token = ""
        while len(jobs) < limit:
            request = gateway_pb2.ListJobsRequest(
                tenant=tenant, limit=min(limit - len(jobs), LIST_PAGE), page_token=token
            )
            response = await self.call("ListJobs", request)
            jobs.extend(response.jobs)
            token = response.next_page_token
            if not token:
                break
        return jobs[:limit]

    async def get(self, job_id: str) -> gateway_pb2.Job:
        response = await self.call("GetJob", gateway_pb2.GetJobRequest(job_id=job_id))
        return response.job

    async def follow_results(
        self,
        job_id: str,
        out: IO[str],
        on_result: Callable[[dict[str, Any]], None] | None = None,
        after_seq: int = 0,
        sink: ResultSink | None = None,
    ) -> int:
        """Writes every result line of the job to `out` once, in completion order,
        reconnecting from its cursor while the gateway is away. Returns the last seq.
        With a `sink`, it writes each result instead (in another shape, to other files)."""
        cursor = after_seq
        while True:
            opened_at, delivered = asyncio.get_running_loop().time(), False
            try:
                request = gateway_pb2.StreamResultsRequest(job_id=job_id, after_seq=cursor)
                async for response in self.stub.StreamResults(request, metadata=self._metadata):
                    self._reached()
                    delivered = True
                    for item in response.results:
                        if item.seq <= cursor:
                            continue
                        line = result_line(item)
                        if sink is not None:
                            sink.write(item, line)
                        else:
                            out.write(json.dumps(line, ensure_ascii=False) + "\n")
                        cursor = item.seq
                        if on_result is not None:
                            on_result(line)
                    (sink or out).flush()
                self._reached()
                return cursor
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RECONNECT_CODES:
                    raise
                await self._reopen(exc, opened_at, delivered)

    async def watch(self, job_id: str, interval_ms: int = 500) -> AsyncIterator[gateway_pb2.Job]:
        """Job snapshots until the job ends; reconnects while the gateway is away."""
        while True:
            opened_at, delivered = asyncio.get_running_loop().time(), False
            try:
                request = gateway_pb2.WatchJobRequest(job_id=job_id, interval_ms=interval_ms)
                async for response in self.stub.WatchJob(request, metadata=self._metadata):
                    self._reached()
                    delivered = True
                    yield response.job
                    if response.job.state >= gateway_pb2.JOB_STATE_COMPLETED:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RECONNECT_CODES:
                    raise
                await self._reopen(exc, opened_at, delivered)
