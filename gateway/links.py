"""Connections from the gateway to inference servers.

One `ServerLink` per server holds one long `Process` stream: it sends task
batches within the credits the server grants, hands results to the engine as
they arrive, and reconnects with backoff when the stream breaks. `WorkerPool`
keeps one link per address, from a fixed list or a DNS name resolved again
periodically, and ejects a server that keeps failing for a while.

A server that cannot be reached (restarting, still loading its model) is only
retried, with jittered backoff capped at `reconnect_max_s`: being down is no
failure. Ejection is for a server that accepts streams and then drops them, again
and again. When a server says it is draining, the link sends nothing more on that
stream, half-closes it, keeps reading the results of what it had sent, and the
engine sends elsewhere (the drain handshake in inference.proto).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

import grpc
from batchinfer.v1 import inference_pb2, inference_pb2_grpc, task_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.convert import TASK_TYPE_NAMES
from gateway.settings import KEEPALIVE_OPTIONS, GatewayConfig, message_size_options
from gateway.task_wire import batch_request

log = logging.getLogger(__name__)


FIRST_BACKOFF_S = 0.1
# After its connection goes IDLE, a stream still open this much later was told GOAWAY; a
# broken connection has failed its streams by then.
GOAWAY_SETTLE_S = 0.25

# A ProcessRequest on the stream: serialised already (a task batch) or a message (cancel).
Request: TypeAlias = inference_pb2.ProcessRequest | bytes
ResultsHandler = Callable[["ServerLink", list[task_pb2.TaskResult]], None]
DownHandler = Callable[["ServerLink", dict[int, int]], None]


@dataclass
class InFlight:
    """What a link has sent and not yet heard back about: key -> estimated tokens."""

    tokens: dict[int, int] = field(default_factory=dict)
    total_tokens: int = 0
    last_progress: float = 0.0

    def add(self, key: int, tokens: int) -> None:
        self.tokens[key] = tokens
        self.total_tokens += tokens

    def pop(self, key: int) -> bool:
        tokens = self.tokens.pop(key, None)
        if tokens is None:
            return False
        self.total_tokens -= tokens
        return True

    def clear(self) -> dict[int, int]:
        lost, self.tokens, self.total_tokens = self.tokens, {}, 0
        return lost


class ServerLink:
    """One inference server: its Info, its Process stream, its credits."""

    def __init__(
        self,
        address: str,
        config: GatewayConfig,
        on_results: ResultsHandler,
        on_down: DownHandler,
        on_ready: Callable[[], None],
        owner_prefix: str = "",
    ) -> None:
        self.address = address
        self._owner_prefix = owner_prefix
        self._config = config
        self._on_results = on_results
        self._on_down = on_down
        self._on_ready = on_ready
        self.generation = 0
        self.models: frozenset[str] = frozenset()
        self.task_types: frozenset[str] = frozenset()
        self.credits = 0
        self.inflight = InFlight()
        self.ready = False
        self.draining = False
        self.told_to_drain = False  # the server's own notice, not only a GOAWAY
        self._cut_freely = False  # break_stream(free=True): the gateway's doing, not the server's
        self.lost_is_free = False  # what the last stream left in flight costs no attempt
        self.failures = 0
        self.ejected_until = 0.0
        # One queue per stream: an ended stream's request generator gets None and returns.
        self._outbox: asyncio.Queue[Request | None] = asyncio.Queue()
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._call: grpc.aio.StreamStreamCall | None = None
        self._broken: str | None = None  # why break_stream cancelled the current call
        self._accepted_at: float | None = None  # when the current stream got its first credits

    @property
    def owner(self) -> str:
        """Lease owner name: a new stream is a new owner, so a late result of the old one loses."""
        return f"{self._owner_prefix}{self.address}#{self.generation}"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"link {self.address}"
        )

    async def close(self) -> None:
        self._closing = True
        self.ready = False
        self._outbox.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._channel is not None:
            await self._channel.close(grace=None)

    def send(
        self, tasks: list[bytes], tokens: Iterable[tuple[int, int]], first: bool = False
    ) -> None:
        """Queue one TaskBatch of serialised Tasks (task_wire; `first`: the server runs it
        ahead of what it holds); the caller has checked credits."""
        for key, est in tokens:
            self.inflight.add(key, est)
        if not self.inflight.last_progress:
            self.inflight.last_progress = time.monotonic()
        self.credits -= len(tasks)
        self._outbox.put_nowait(batch_request(tasks, first))

    def cancel(self, wire_ids: list[str]) -> None:
        if self.ready and wire_ids:
            cancel = inference_pb2.CancelTasks(task_ids=wire_ids)
            self._outbox.put_nowait(inference_pb2.ProcessRequest(cancel=cancel))

    def serves(self, model: str, task_type: str) -> bool:
        return ("*" in self.models or model in self.models) and task_type in self.task_types

    def stalled(self, now: float) -> bool:
        """True when tasks are out and nothing came back for a whole lease."""
        return (
            bool(self.inflight.tokens) and now - self.inflight.last_progress > self._config.lease_s
        )

    def break_stream(self, reason: str, free: bool = False) -> None:
        """Cancel the current stream. free: its tasks in flight cost no attempt (the gateway
        cut it for a reason of its own, not because the server misbehaved)."""
        log.warning("dropping stream to %s: %s", self.address, reason)
        self._cut_freely = self._cut_freely or free
        self._outbox.put_nowait(None)
        # Half-closing is not enough: a frozen server never ends its side, so cancel the call.
        if self._call is not None and self._broken is None:
            self._broken = reason
            self._call.cancel()

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        unreachable_since: float | None = None
        while not self._closing:
            if time.monotonic() < self.ejected_until:
                await asyncio.sleep(self.ejected_until - time.monotonic())
            self._accepted_at = None
            failed = False
            try:
                await self._connect_and_stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = True
                if self._accepted_at is not None or unreachable_since is None:
                    log.warning("stream to %s failed: %s", self.address, _describe(exc))
                else:  # still down: said once already
                    log.debug("stream to %s failed: %s", self.address, _describe(exc))
            # Free only when the server said it was draining, or when a GOAWAY'd stream
            # ended cleanly: a connection that breaks (a killed server also shows as a
            # GOAWAY-like IDLE) went away with its tasks, which spends their attempt.
            self.lost_is_free = (
                self.told_to_drain or self._cut_freely or (self.draining and not failed)
            )
            self._went_down()
            if self._closing:
                return
            accepted_at = self._accepted_at
            if accepted_at is not None:
                unreachable_since, backoff = None, FIRST_BACKOFF_S
                # A stream that ran well for a while before failing starts a fresh count.
                if time.monotonic() - accepted_at > self._config.eject_s:
                    self.failures = 0
                if failed:
                    self.failures += 1
            elif unreachable_since is None:
                unreachable_since = time.monotonic()
            if self.failures >= self._config.eject_after_failures:
                log.warning(
                    "ejecting %s for %.0f s: it dropped %d streams in a row after accepting them",
                    self.address,
                    self._config.eject_s,
                    self.failures,
                )
                self.ejected_until = time.monotonic() + self._config.eject_s
                self.failures = 0
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._config.reconnect_max_s)

    async def _open_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            config = self._config
            options: list[tuple[str, int | str]] = [
                *KEEPALIVE_OPTIONS,
                *message_size_options(config.max_message_bytes),
            ]
            credentials = worker_credentials(config)
            if credentials is None:
                self._channel = grpc.aio.insecure_channel(self.address, options=options)
            else:
                if config.worker_tls_server_name:
                    options.append(("grpc.ssl_target_name_override", config.worker_tls_server_name))
                self._channel = grpc.aio.secure_channel(self.address, credentials, options=options)
        return self._channel

    async def _connect_and_stream(self) -> None:
        channel = await self._open_channel()
        timeout = self._config.unary_timeout_s
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout
        )
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            raise ConnectionError(
                f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}"
            )
        stub = inference_pb2_grpc.InferenceServerStub(channel)
        info = await stub.Info(inference_pb2.InfoRequest(), timeout=timeout)
        self.models = frozenset(m.name for m in info.models)
        self.task_types = frozenset(
            TASK_TYPE_NAMES[t] for m in info.models for t in m.task_types if t in TASK_TYPE_NAMES
        )
        outbox: asyncio.Queue[Request | None] = asyncio.Queue()
        self._outbox = outbox
        self.generation += 1
        self.credits = 0
        self.draining = self.told_to_drain = self._cut_freely = False
        call = _process(channel)(_requests(outbox))
        self._call, self._broken = call, None
        goaway = asyncio.get_running_loop().create_task(self._watch_goaway(channel, call))
        try:
            await self._consume(call)
        except asyncio.CancelledError:
            if self._broken is None:
                raise
            raise ConnectionError(f"stream dropped: {self._broken}") from None
        finally:
            goaway.cancel()
            self._call = None
            outbox.put_nowait(None)  # ends the request generator, whatever ended the call
            if not call.done():
                call.cancel()

    async def _watch_goaway(self, channel: grpc.aio.Channel, call: grpc.aio.Call) -> None:
        """A connection that goes IDLE under an open stream got a GOAWAY (the server's
        max connection age, a proxy reloading): the stream still works until the peer's
        grace runs out, so treat it as a drain notice and re-open on a new connection.
        A connection that broke goes IDLE too, but its stream fails with it at once: that
        is a server gone away (an attempt spent), not a drain."""
        ready = grpc.ChannelConnectivity.READY
        state = channel.get_state(try_to_connect=False)
        seen_ready = state == ready
        while not (seen_ready and state == grpc.ChannelConnectivity.IDLE):
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=False)
            seen_ready = seen_ready or state == ready
        await asyncio.sleep(GOAWAY_SETTLE_S)
        if call.done():
            return
        self._start_draining("closes its connection (GOAWAY); re-opening the stream")

    async def _consume(self, call: grpc.aio.StreamStreamCall) -> None:
        async for response in call:
            if response.credits:
                self.credits += response.credits
                if self._accepted_at is None:
                    self._accepted_at = time.monotonic()
                if not self.ready and not self.draining:
                    # failures is not reset here: a server that accepts streams and then
                    # drops them every time must still be ejected.
                    self.ready = True
                    log.info("server %s ready: models %s", self.address, sorted(self.models))
            if response.draining:
                self.told_to_drain = True
                self._start_draining("is draining")
            if response.results:
                self.inflight.last_progress = time.monotonic()
                self._on_results(self, list(response.results))
            self._on_ready()
        # A stream that ends while tasks are out lost them: count it as a failure, unless
        # the server said it was draining (its grace ran out; not the tasks' fault).
        if self.inflight.tokens and not self.draining:
            raise ConnectionError("stream ended with tasks in flight")

    def _start_draining(self, why: str) -> None:
        """The handshake: send nothing more, half-close, read the rest; the server answers
        what was already on the wire and ends the stream. Tasks it still held when the
        stream ends are given back at no cost (not their fault)."""
        if self.draining:
            return
        log.info("server %s %s", self.address, why)
        self.draining = True
        self.ready = False
        self._outbox.put_nowait(None)

    def _went_down(self) -> None:
        self.ready = False
        self.credits = 0
        lost = self.inflight.clear()
        self.inflight.last_progress = 0.0
        self._on_down(self, lost)


def worker_credentials(config: GatewayConfig) -> grpc.ChannelCredentials | None:
    """TLS towards the inference servers (None: plaintext): their CA, and the gateway's own
    certificate for servers that require one. Read when a link opens its channel."""
    if config.worker_tls_ca is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=config.worker_tls_ca.read_bytes(),
        private_key=config.worker_tls_key.read_bytes() if config.worker_tls_key else None,
        certificate_chain=config.worker_tls_cert.read_bytes() if config.worker_tls_cert else None,
    )


def _serialize(request: Request) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def _process(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable:
    """The stub's Process, with requests that may come serialised already (task batches)."""
    return channel.stream_stream(
        "/batchinfer.v1.InferenceServer/Process",
        request_serializer=_serialize,
        response_deserializer=inference_pb2.ProcessResponse.FromString,
        _registered_method=True,
    )


async def _requests(outbox: asyncio.Queue[Request | None]):  # type: ignore[no-untyped-def]
    while True:
        request = await outbox.get()
        if request is None:
            return
        yield request


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


class WorkerPool:
    """Keeps one ServerLink per inference server address."""

    def __init__(
        self,
        config: GatewayConfig,
        on_results: ResultsHandler,
        on_down: DownHandler,
        on_ready: Callable[[], None],
        owner_prefix: str = "",
    ) -> None:
        self._config = config
        self._handlers = (on_results, on_down, on_ready)
        self._owner_prefix = owner_prefix
        self.links: dict[str, ServerLink] = {}
        self._dns_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for address in self._config.workers:
            self._add(address)
        if self._config.workers_dns:
            await self._resolve_once()
            self._dns_task = asyncio.get_running_loop().create_task(self._resolve_forever())

    async def close(self) -> None:
        if self._dns_task is not None:
            self._dns_task.cancel()
        await asyncio.gather(*(link.close() for link in self.links.values()))
        self.links.clear()

    def ready_links(self) -> list[ServerLink]:
        return [link for link in self.links.values() if link.ready and not link.draining]

    def add(self, address: str) -> None:
        if address not in self.links:
            self._add(address)

    def _add(self, address: str) -> None:
        link = ServerLink(address, self._config, *self._handlers, self._owner_prefix)
        self.links[address] = link
        link.start()

    async def _remove(self, address: str) -> None:
        link = self.links.pop(address, None)
        if link is not None:
            await link.close()

    async def _resolve_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.dns_refresh_s)
            try:
                await self._resolve_once()
            except Exception as exc:
                log.warning("resolving %s failed: %s", self._config.workers_dns, exc)

    async def _resolve_once(self) -> None:
        assert self._config.workers_dns
        host, _, port = self._config.workers_dns.rpartition(":")
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM
        )
        wanted = set(self._config.workers)
        for family, _type, _proto, _name, sockaddr in infos:
            ip = sockaddr[0]
            wanted.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
        for address in wanted - self.links.keys():
            self._add(address)
        for address in self.links.keys() - wanted:
            await self._remove(address)
