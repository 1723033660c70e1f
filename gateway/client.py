"""A client of the public API, used by the CLI: submit a job file with what it
refers to, follow its progress, and write its results exactly once each, even
across gateway restarts and from one replica to the next when a replica dies (the
StreamResults cursor survives both).

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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import grpc
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.channels import (
    INITIAL_BACKOFF_S,
    MAX_BACKOFF_S,
    NO_CREDENTIALS,
    Credentials,
    channel,
    gateway_targets,
)
from gateway.convert import result_line
from gateway.jobfile import JobSpec, load_job

UNARY_TIMEOUT_S = 30.0
SUBMIT_TIMEOUT_S = 600.0  # the upload of a large input file and the job's admission
UPLOAD_CHUNK = 256 * 1024
LIST_PAGE = 100  # jobs per ListJobs call at most (the gateway's cap)
RECONNECT_FOR_S = 30.0  # per outage of the gateway
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


class GatewayClient:
    def __init__(
        self,
        address: str | Sequence[str],
        unary_timeout_s: float = UNARY_TIMEOUT_S,
        submit_timeout_s: float = SUBMIT_TIMEOUT_S,
        *,
        reconnect_for_s: float = RECONNECT_FOR_S,
        on_wait: Callable[[str, float], None] | None = None,
        on_back: Callable[[float], None] | None = None,
        on_move: Callable[[str, str, str], None] | None = None,
        credentials: Credentials = NO_CREDENTIALS,
    ) -> None:
        """`address`: one gateway, or the replicas of one service ("a:1,b:2" or a list).
        The client talks to one at a time and moves to the next when a call or stream
        there cannot reach it; streams go on from their cursor. `on_move(left, to, reason)`
        is told when it answers at `to` after `left`, which had answered, failed;
        `on_wait(reason, seconds)` when every address is out of reach and for how long it
        will keep trying; `on_back(waited_s)` when one answers again. `credentials`: the
        token sent with every call, and TLS."""
        self.addresses = gateway_targets([address] if isinstance(address, str) else address)
        self.unary_timeout_s = unary_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self.reconnect_for_s = reconnect_for_s
        self.on_wait = on_wait
        self.on_back = on_back
        self.on_move = on_move
        self._outage_since: float | None = None
        self._announced = False
        self._attempts = 0
        self._failed: set[int] = set()  # the addresses that failed in this outage
        self._answered: set[int] = set()  # the addresses that ever answered
        self._lost: tuple[str, str] | None = None  # one that answered, then failed: why
        self._current = 0
        self._metadata = credentials.metadata()
        several = len(self.addresses) > 1
        self._channels = [channel(a, credentials, one_of_several=several) for a in self.addresses]
        self._stubs = [gateway_pb2_grpc.BatchGatewayStub(c) for c in self._channels]

    @property
    def address(self) -> str:
        """The address the client talks to now."""
        return self.addresses[self._current]

    @property
    def stub(self) -> gateway_pb2_grpc.BatchGatewayStub:
        return self._stubs[self._current]

    @property
    def current_channel(self) -> grpc.aio.Channel:
        return self._channels[self._current]

    def _move_from(self, index: int, exc: grpc.aio.AioRpcError) -> None:
        """To the next address, unless another call already moved on from `index`."""
        if index != self._current or len(self.addresses) == 1:
            return
        if index in self._answered and self._lost is None:
            self._lost = (self.addresses[index], unreachable_reason(exc))
        self._current = (index + 1) % len(self.addresses)

    async def _failed_at(self, index: int, exc: grpc.aio.AioRpcError) -> None:
        """After a call at addresses[index] could not reach its gateway: at once on to an
        address this outage has not tried yet; once every one has failed, a backoff sleep
        before the next attempt, or GatewayUnavailable once this outage has lasted
        reconnect_for_s."""
        now = asyncio.get_running_loop().time()
        if self._outage_since is None:
            self._outage_since, self._attempts, self._failed = now, 0, set()
        self._failed.add(index)
        self._move_from(index, exc)
        if self._current not in self._failed:
            return
        if not self._announced:
            self._announced = True
            if self.on_wait is not None and self.reconnect_for_s > 0:
                self.on_wait(unreachable_reason(exc), self.reconnect_for_s)
        waited = now - self._outage_since
        if waited >= self.reconnect_for_s:
            where = ", ".join(self.addresses)
            raise GatewayUnavailable(where, unreachable_reason(exc), waited) from exc
        backoff = min(INITIAL_BACKOFF_S * 2**self._attempts, MAX_BACKOFF_S)
        self._attempts += 1
        await asyncio.sleep(min(backoff * (0.5 + random.random()), self.reconnect_for_s - waited))

    async def _reopen(
        self, index: int, exc: grpc.aio.AioRpcError, opened_at: float, delivered: bool
    ) -> None:
        """Before a broken stream is opened again from its cursor (see QUIET_REOPEN_AFTER_S)."""
        lived = asyncio.get_running_loop().time() - opened_at
        if delivered and lived >= QUIET_REOPEN_AFTER_S and self._outage_since is None:
            self._move_from(index, exc)
            return
        await self._failed_at(index, exc)

    def _reached(self, index: int) -> None:
        """A call or stream at addresses[index] got an answer."""
        self._answered.add(index)
        if self._lost is not None and self._lost[0] != self.addresses[index]:
            (left, reason), self._lost = self._lost, None
            if self.on_move is not None:
                self.on_move(left, self.addresses[index], reason)
        if self._outage_since is not None:
            waited = asyncio.get_running_loop().time() - self._outage_since
            announced, self._outage_since, self._announced = self._announced, None, False
            if announced and self.on_back is not None:
                self.on_back(waited)

    async def _retrying(
        self, attempt: Callable[[gateway_pb2_grpc.BatchGatewayStub], Awaitable[T]]
    ) -> T:
        while True:
            index = self._current
            try:
                result = await attempt(self._stubs[index])
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRY_CODES:
                    raise
                await self._failed_at(index, exc)
            else:
                self._reached(index)
                return result

    async def call(self, method: str, request: Any) -> Any:
        """One unary call of the public API (`"GetJob"`, ...) under the client's deadline,
        retried while the gateway is out of reach (reconnect_for_s=0: tried once at each
        address)."""
        return await self._retrying(
            lambda stub: getattr(stub, method)(
                request, timeout=self.unary_timeout_s, metadata=self._metadata
            )
        )

    async def close(self) -> None:
        for each in self._channels:
            await each.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.current_channel.channel_ready(), timeout)

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
            lambda stub: stub.SubmitJob(
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
            lambda stub: stub.ValidateJob(
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
            index = self._current
            try:
                request = gateway_pb2.StreamResultsRequest(job_id=job_id, after_seq=cursor)
                stream = self._stubs[index].StreamResults(request, metadata=self._metadata)
                async for response in stream:
                    self._reached(index)
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
                self._reached(index)
                return cursor
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RECONNECT_CODES:
                    raise
                await self._reopen(index, exc, opened_at, delivered)

    async def watch(self, job_id: str, interval_ms: int = 500) -> AsyncIterator[gateway_pb2.Job]:
        """Job snapshots until the job ends; reconnects while the gateway is away."""
        while True:
            opened_at, delivered = asyncio.get_running_loop().time(), False
            index = self._current
            try:
                request = gateway_pb2.WatchJobRequest(job_id=job_id, interval_ms=interval_ms)
                async for response in self._stubs[index].WatchJob(request, metadata=self._metadata):
                    self._reached(index)
                    delivered = True
                    yield response.job
                    if response.job.state >= gateway_pb2.JOB_STATE_COMPLETED:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RECONNECT_CODES:
                    raise
                await self._reopen(index, exc, opened_at, delivered)
