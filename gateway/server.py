"""The gateway process: store, engine, public API, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import signal
import sys
from dataclasses import dataclass
from typing import IO

import grpc
from batchinfer.reflection import enable_reflection
from batchinfer.v1 import gateway_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.api import BatchGatewayService
from gateway.auth import Authenticator, AuthInterceptor
from gateway.dispatch import JobEngine
from gateway.errors import RequestDecoding
from gateway.links import worker_credentials
from gateway.principals import PrincipalsError, PrincipalsFile
from gateway.result_wire import add_gateway_servicer
from gateway.settings import (
    SERVER_KEEPALIVE_OPTIONS,
    GatewayConfig,
    connection_age_options,
    is_loopback,
    message_size_options,
)
from gateway.store import JobStore
from gateway.store.backends import sqlite_path
from gateway.streams import transport_options
from gateway.submission import Submitter

log = logging.getLogger(__name__)

STOP_STEP_S = 10.0  # beyond the grace period, per shutdown step
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["BatchGateway"].full_name


@dataclass
class RunningGateway:
    server: grpc.aio.Server
    engine: JobEngine
    store: JobStore
    health: health.aio.HealthServicer  # type: ignore[name-defined]
    port: int
    api: BatchGatewayService | None = None
    store_lock: IO[bytes] | None = None  # held while this process serves a SQLite store

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def drain(self, grace_s: float) -> None:
        """Health NOT_SERVING, no new submissions (UNAVAILABLE), no new leases; the results
        of tasks in flight are recorded for up to grace_s, the rest go back to the store."""
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.engine.draining = True
        await self.engine.drain(grace_s)

    async def stop(self, grace: float = 2.0) -> None:
        """Stops taking calls, then the engine, then the store; each step is bounded so a
        stuck stream cannot keep the process from exiting (the store survives a hard stop)."""
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        for name, step in (
            ("gRPC server", self.server.stop(grace)),
            ("engine", self.engine.stop()),
            ("store", self.store.close()),
        ):
            try:
                await asyncio.wait_for(step, grace + STOP_STEP_S)
            except TimeoutError:
                log.warning("stopping the %s took over %.0f s; going on", name, grace + STOP_STEP_S)
        if self.store_lock is not None:
            self.store_lock.close()  # another gateway may open the SQLite store now
            self.store_lock = None


class StoreInUse(OSError):
    """Another gateway holds this SQLite store."""


def lock_sqlite_store(url: str) -> IO[bytes] | None:
    """SQLite serves one gateway: hold an exclusive lock beside the database file for as
    long as this process serves it. None for other stores (PostgreSQL takes replicas)."""
    if "://" in url and not url.startswith("sqlite"):
        return None
    path = sqlite_path(url)
    if path == ":memory:":
        return None
    handle = open(f"{path}.gateway-lock", "ab")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreInUse(
            f"another gateway already serves the SQLite store {path}; SQLite takes one "
            "gateway: stop the other, or run several replicas on PostgreSQL "
            "(--store-url postgresql+asyncpg://USER@HOST/DB)"
        ) from None
    return handle


def server_credentials(config: GatewayConfig) -> grpc.ServerCredentials | None:
    """TLS of the public port (None: plaintext); with a client CA, client certificates are
    required by the handshake."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    pair = (config.tls_key.read_bytes(), config.tls_cert.read_bytes())
    ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=ca is not None
    )


def authenticator(config: GatewayConfig) -> Authenticator:
    principals = PrincipalsFile(config.auth_file) if config.auth_file is not None else None
    return Authenticator(principals, client_certs=config.tls_client_ca is not None)


async def serve(config: GatewayConfig) -> RunningGateway:
    """Opens the store, resumes unfinished jobs and starts serving; returns once listening."""
    credentials = server_credentials(config)  # bad files fail here, before anything starts
    auth = authenticator(config)
    worker_credentials(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_sqlite_store(config.resolved_store_url())
    store = await JobStore.open(config.resolved_store_url())
    engine = JobEngine(config, store)
    submitter = Submitter(engine)
    engine.sync.adopter = submitter.adopt
    await engine.start()
    resumed = await submitter.resume_all()
    if resumed:
        log.info("resumed %d unfinished jobs", resumed)
    options = [*SERVER_KEEPALIVE_OPTIONS, *message_size_options(config.max_message_bytes)]
    options += connection_age_options(
        config.max_connection_age_s, config.max_connection_age_grace_s
    )
    options += transport_options(config.limits)
    # Interceptors: who is calling (and the audit log), then a request that does not parse
    # is INVALID_ARGUMENT, not UNKNOWN.
    interceptors = [AuthInterceptor(auth), RequestDecoding()]
    server = grpc.aio.server(options=options, interceptors=interceptors)
    api = BatchGatewayService(engine, submitter)
    add_gateway_servicer(api, server)  # StreamResults sends pre-encoded bytes
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)  # v1 and v1alpha
    target = f"{config.host}:{config.port}"
    port = (
        server.add_secure_port(target, credentials)
        if credentials is not None
        else server.add_insecure_port(target)
    )
    if port == 0:
        raise OSError(f"cannot bind the gateway to {config.host}:{config.port}")
    if config.auth_file is not None and credentials is None and not is_loopback(config.host):
        log.warning("bearer tokens travel in plaintext on %s: add --tls-cert and --tls-key", target)
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "gateway listening on %s:%d (%s, %s), store %s",
        config.host,
        port,
        "TLS" if credentials is not None else "plaintext",
        _auth_mode(config),
        config.resolved_store_url(),
    )
    return RunningGateway(server, engine, store, health_servicer, port, api, lock)


def _auth_mode(config: GatewayConfig) -> str:
    modes = [f"principals {config.auth_file}"] if config.auth_file else []
    if config.tls_client_ca is not None:
        modes.append("client certificates")
    return " + ".join(modes) or "no authentication"


async def run_until_signalled(config: GatewayConfig, announce: bool = True) -> int:
    """Serves until SIGTERM or SIGINT, then drains (see RunningGateway.drain) and exits 0.
    A second signal cuts the drain short."""
    running = await serve(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    if announce:  # after the handlers: a SIGTERM right after this line still drains
        print(f"LISTENING {config.host}:{running.port}", flush=True)
    await stop.wait()
    stop.clear()
    log.info("draining the gateway (grace %.0f s)", config.grace_s)
    draining = asyncio.ensure_future(running.drain(config.grace_s))
    again = asyncio.ensure_future(stop.wait())
    await asyncio.wait({draining, again}, return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        log.warning("second signal: stopping without waiting for tasks in flight")
        draining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await draining
        await running.engine.drain(0)  # give the leases back at once
    again.cancel()
    log.info("stopping the gateway")
    await running.stop()
    return 0


def main(config: GatewayConfig) -> int:
    try:
        return asyncio.run(run_until_signalled(config))
    except (OSError, PrincipalsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
