"""A client of the public API, used by the CLI: submit a job file with what it
refers to, follow its progress, and write its results exactly once each, even
across gateway restarts (the StreamResults cursor survives them)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.convert import result_line
from gateway.jobfile import JobSpec, load_job
from gateway.settings import KEEPALIVE_OPTIONS, MAX_MESSAGE_BYTES, message_size_options

UNARY_TIMEOUT_S = 30.0
SUBMIT_TIMEOUT_S = 600.0  # the upload of a large input file and the job's admission
UPLOAD_CHUNK = 256 * 1024
RECONNECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


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


def channel(address: str) -> grpc.aio.Channel:
    # gRPC's default 4 MiB receive limit is less than a page of large results.
    options = [*KEEPALIVE_OPTIONS, *message_size_options(MAX_MESSAGE_BYTES)]
    return grpc.aio.insecure_channel(address, options=options)


class GatewayClient:
    def __init__(
        self,
        address: str,
        unary_timeout_s: float = UNARY_TIMEOUT_S,
        submit_timeout_s: float = SUBMIT_TIMEOUT_S,
    ) -> None:
        self.address = address
        self.unary_timeout_s = unary_timeout_s
        self.submit_timeout_s = submit_timeout_s
        self._channel = channel(address)
        self.stub = gateway_pb2_grpc.BatchGatewayStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    async def submit(
        self, job: LocalJob, *, profile: str | None = None, idempotency_key: str = ""
    ) -> gateway_pb2.Job:
        spec = gateway_pb2.JobSpec(
            job_yaml=job.text,
            variables=job.variables,
            idempotency_key=idempotency_key,
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

        response = await self.stub.SubmitJob(requests(), timeout=self.submit_timeout_s)
        return response.job

    async def get(self, job_id: str) -> gateway_pb2.Job:
        response = await self.stub.GetJob(
            gateway_pb2.GetJobRequest(job_id=job_id), timeout=self.unary_timeout_s
        )
        return response.job

    async def follow_results(
        self,
        job_id: str,
        out: IO[str],
        on_result: Callable[[dict[str, Any]], None] | None = None,
        after_seq: int = 0,
        reconnect_for_s: float = 120.0,
    ) -> int:
        """Writes every result line of the job to `out` once, in completion order,
        reconnecting with backoff while the gateway is away. Returns the last seq."""
        cursor = after_seq
        backoff = 0.2
        give_up_at = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                request = gateway_pb2.StreamResultsRequest(job_id=job_id, after_seq=cursor)
                async for response in self.stub.StreamResults(request):
                    for item in response.results:
                        if item.seq <= cursor:
                            continue
                        line = result_line(item)
                        out.write(json.dumps(line, ensure_ascii=False) + "\n")
                        cursor = item.seq
                        if on_result is not None:
                            on_result(line)
                    out.flush()
                    give_up_at, backoff = None, 0.2
                return cursor
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RECONNECT_CODES:
                    raise
                give_up_at = give_up_at or loop.time() + reconnect_for_s
                if loop.time() > give_up_at:
                    raise
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 3.0)

    async def watch(self, job_id: str, interval_ms: int = 500) -> AsyncIterator[gateway_pb2.Job]:
        """Job snapshots until the job ends; reconnects while the gateway is away."""
        backoff = 0.2
        while True:
            try:
                request = gateway_pb2.WatchJobRequest(job_id=job_id, interval_ms=interval_ms)
                async for response in self.stub.WatchJob(request):
                    backoff = 0.2
                    yield response.job
                    if response.job.state >= gateway_pb2.JOB_STATE_COMPLETED:
                        return
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RECONNECT_CODES:
                    raise
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 3.0)
