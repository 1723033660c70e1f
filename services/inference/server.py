"""The gRPC inference server: InferenceServer, health, reflection, and graceful drain.

Process streams. On open the server grants `max_queued_tasks` credits; each response
that carries results grants as many credits as it carries results, so a client that
keeps to its credits never has more than that window outstanding on a stream. A client
that sends beyond its credits is not refused: its tasks are queued all the same.

Draining (drain() or SIGTERM) is a handshake, like HTTP/2's GOAWAY: every open stream
gets a response with draining=true at once; the server keeps reading, answers every task
that arrives after that with UNAVAILABLE (retryable: it was not run), and finishes what
it had queued or running. A stream ends when the client has half-closed it and every task
it sent is answered, or when the grace period is over, whichever comes first. So a task
in flight on the wire when the drain began is answered, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from batchinfer.reflection import enable_reflection
from batchinfer.v1 import inference_pb2, inference_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.inference.backends.base import Backend
from services.inference.batcher import Batcher
from services.inference.batching import BatchLimits
from services.inference.config import ServerConfig
from services.inference.telemetry import ServerTelemetry
from services.inference.types import Code, InferTask, Outcome

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceServer"].full_name
VERSION = "0.1.0"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def make_backend(config: ServerConfig) -> Backend:
    if config.backend == "echo":
        from services.inference.backends.echo import EchoBackend

        return EchoBackend(config.echo_delay_ms_per_token, config.default_max_new_tokens)
    from services.inference import models
    from services.inference.backends.hf import HFBackend

    return HFBackend(
        models.resolve(config.model, config.served_name),
        config.device,
        config.dtype,
        config.threads,
        config.default_max_new_tokens,
    )


class _Stream:
    """One Process stream: outcomes wait here until its writer sends them."""

    def __init__(self) -> None:
        self.pending: list[Outcome] = []
        self.wake = asyncio.Event()
        self.outstanding = 0
        self.reader_done = False
        self.finish = False
        self.drain_notice = False
        self.recycled = False  # told to drain because of its age, not the server's
        self.closed = False

    def deliver(self, outcomes: list[Outcome]) -> None:
        if not self.closed:
            self.pending.extend(outcomes)
            self.wake.set()

    @property
    def done(self) -> bool:
        # finish: the grace period is over, so the client's half-close is not awaited.
        return (self.reader_done or self.finish) and self.outstanding <= 0 and not self.pending


class InferenceServicer(inference_pb2_grpc.InferenceServerServicer):
    def __init__(self, config: ServerConfig, backend: Backend, batcher: Batcher, address: str):
        self.config = config
        self.backend = backend
        self.batcher = batcher
        self.address = address
        self.streams: set[_Stream] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    async def Info(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not self.batcher.started:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        c = self.config
        return inference_pb2.InfoResponse(
            models=[
                inference_pb2.ModelInfo(
                    name=m.name,
                    task_types=list(m.task_types),
                    context_length=m.context_length,
                    modalities=list(m.modalities),
                )
                for m in self.backend.served_models()
            ],
            backend=self.backend.name,
            device=self.backend.device,
            limits=inference_pb2.BatchLimits(
                max_batch_size=c.max_batch_size,
                max_batch_tokens=c.max_batch_tokens,
                max_wait_ms=round(c.max_wait_ms),
                max_queued_tasks=c.max_queued_tasks,
            ),
            version=VERSION,
        )

    async def Process(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        stream = _Stream()
        self.streams.add(stream)
        self._all_closed.clear()
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            stream.drain_notice = self.batcher.draining
            yield inference_pb2.ProcessResponse(
                credits=self.config.max_queued_tasks, draining=stream.drain_notice
            )
            notified = stream.drain_notice
            age = self.config.max_connection_age_s
            recycle_at = None if age is None else time.monotonic() + age
            while not stream.done:
                if recycle_at is not None and not stream.drain_notice:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stream.wake.wait(), recycle_at - time.monotonic())
                    if time.monotonic() >= recycle_at:
                        # Ends before its connection's grace runs out, even behind a proxy
                        # that does not pass GOAWAY on: the client re-opens elsewhere.
                        stream.drain_notice = stream.recycled = True
                        stream.wake.set()
                else:
                    await stream.wake.wait()
                stream.wake.clear()
                results, stream.pending = stream.pending, []
                stream.outstanding -= len(results)
                notice = stream.drain_notice and not notified
                if results or notice:
                    notified = notified or notice
                    address = self.address
                    yield inference_pb2.ProcessResponse(
                        results=[o.to_pb(address) for o in results],
                        credits=len(results),
                        draining=notice,
                    )
            if reader.done() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            stream.closed = True
            self.streams.discard(stream)
            if not self.streams:
                self._all_closed.set()
            reader.cancel()
            self.batcher.forget(stream)

    async def _read(self, requests: Any, stream: _Stream) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "batch":
                    tasks = [InferTask.from_pb(t) for t in request.batch.tasks]
                    stream.outstanding += len(tasks)
                    if stream.recycled:  # sent after the notice: not run, send it elsewhere
                        message = "this stream is being recycled (its age); send it on a new one"
                        stream.deliver(
                            [
                                Outcome.failed(t, Code.UNAVAILABLE, message, retryable=True)
                                for t in tasks
                            ]
                        )
                        continue
                    self.batcher.submit(tasks, stream, first=request.batch.first)
                elif kind == "cancel":
                    self.batcher.cancel(stream, set(request.cancel.task_ids))
        finally:
            stream.reader_done = True
            stream.wake.set()

    def notify_draining(self) -> None:
        for stream in self.streams:
            stream.drain_notice = True
            stream.wake.set()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait until every stream has ended; True if they did within timeout."""
        try:
            await asyncio.wait_for(self._all_closed.wait(), max(timeout, 0.0))
            return True
        except TimeoutError:
            return False

    def finish_streams(self) -> None:
        for stream in self.streams:
            stream.finish = True
            stream.wake.set()


def connection_age_options(age_s: float | None, grace_s: float) -> list[tuple[str, int]]:
    """gRPC server options that recycle connections older than age_s (none when None)."""
    if age_s is None:
        return []
    return [
        ("grpc.max_connection_age_ms", max(int(age_s * 1000), 1)),
        ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
    ]


def advertised_address(config: ServerConfig, port: int) -> str:
    if config.advertise:
        return config.advertise
    host = config.host
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


@dataclass
class RunningServer:
    """A started server; the model loads in the background (health NOT_SERVING until then)."""

    config: ServerConfig
    server: grpc.aio.Server
    port: int
    address: str
    backend: Backend
    batcher: Batcher
    servicer: InferenceServicer
    health: Any
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    load_error: BaseException | None = None
    _load_task: asyncio.Task[None] | None = None
    _drain_task: asyncio.Task[bool] | None = None
    _stopped: bool = False
    owns_backend: bool = True

    @property
    def target(self) -> str:
        """Where a client on this machine connects."""
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self.backend.load)
        except BaseException as exc:
            log.exception("loading the model failed")
            self.load_error = exc
        else:
            if not self.batcher.draining:
                self.batcher.telemetry.model = self.backend.served_models()[0].name
                self.batcher.start()
                await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        finally:
            self.ready.set()

    async def _set_health(self, status: Any) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the model is loaded; raise what stopped it from loading."""
        await asyncio.wait_for(self.ready.wait(), timeout)
        if self.load_error is not None:
            raise RuntimeError(f"loading the model failed: {self.load_error}") from self.load_error

    async def drain(self, grace_s: float | None = None) -> bool:
        """Stop taking tasks, finish the queued and running ones, end the streams.

        True if everything finished within the grace period. Calling it again waits
        for the same drain."""
        if self._drain_task is None:
            grace = self.config.grace_s if grace_s is None else grace_s
            self._drain_task = asyncio.create_task(self._drain(grace))
        return await asyncio.shield(self._drain_task)

    async def _drain(self, grace_s: float) -> bool:
        log.info("draining (grace %.1f s)", grace_s)
        deadline = time.monotonic() + grace_s
        # Refuse and tell every stream first: a client that learns late keeps sending.
        self.batcher.draining = True
        self.servicer.notify_draining()
        await self.health.enter_graceful_shutdown()
        finished = await self.batcher.drain(max(deadline - time.monotonic(), 0.0))
        # Clients half-close once told; what they sent meanwhile is answered UNAVAILABLE.
        closed = await self.servicer.wait_closed(deadline - time.monotonic())
        if not closed:
            log.warning("grace period over: ending %d streams", len(self.servicer.streams))
        self.servicer.finish_streams()
        await self.servicer.wait_closed(1.0)
        return finished

    async def stop(self, grace_s: float = 1.0) -> None:
        """Close the port and free the model; streams still open get cancelled after grace_s."""
        if self._stopped:
            return
        self._stopped = True
        await self.server.stop(grace_s)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.batcher.close()
        if self.owns_backend:
            self.backend.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS of the port (None: plaintext); with a client CA the handshake requires a client
    certificate it signed, so only the gateway can open a stream."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
    ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=ca is not None
    )


async def serve(
    config: ServerConfig,
    backend: Backend | None = None,
    telemetry: ServerTelemetry | None = None,
) -> RunningServer:
    """Start serving on config.host:config.port and begin loading the model.

    A backend passed in (tests share a loaded one) stays the caller's: stop() leaves it open.
    """
    config.validate()
    owns_backend = backend is None
    backend = backend or make_backend(config)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            # Allow the gateway's keepalive pings (every 30 s) on idle Process streams; gRPC's
            # default (one per 5 min, then GOAWAY) would cut a stream that waits on a long batch.
            ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            *connection_age_options(config.max_connection_age_s, config.max_connection_age_grace_s),
        ]
    )
    credentials = server_credentials(config)
    target = f"{config.host}:{config.port}"
    port = (
        server.add_secure_port(target, credentials)
        if credentials is not None
        else server.add_insecure_port(target)
    )
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    address = advertised_address(config, port)
    limits = BatchLimits(config.max_batch_size, config.max_batch_tokens, config.max_wait_ms / 1000)
    batcher = Batcher(backend, limits, telemetry, server_address=address)
    servicer = InferenceServicer(config, backend, batcher, address)
    inference_pb2_grpc.add_InferenceServerServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)  # v1 and v1alpha
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    running = RunningServer(
        config, server, port, address, backend, batcher, servicer, health_servicer
    )
    running.owns_backend = owns_backend
    running._load_task = asyncio.create_task(running._load(), name="load-model")
    log.info(
        "listening on %s:%d (%s backend, %s); loading the model",
        config.host,
        port,
        backend.name,
        "mTLS" if config.tls_client_ca else "TLS" if credentials is not None else "plaintext",
    )
    return running
