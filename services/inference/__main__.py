"""`python -m services.inference`: run one inference server until SIGTERM or SIGINT.

Once the model is loaded and the server serves, it prints exactly one line to stdout,
`LISTENING <host>:<port>`, so a parent process can start it with --port 0. On SIGTERM it
drains (see server.py) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from collector.telemetry import TelemetryConfig, setup_telemetry
from services.inference.config import BACKENDS, DTYPES, ConfigError, ServerConfig
from services.inference.server import serve

SERVICE_NAME = "batchinfer-inference"

log = logging.getLogger("services.inference")


def build_parser(prog: str = "python -m services.inference") -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog=prog, description="Run a batchinfer inference server.")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend)
    p.add_argument(
        "--model",
        default=d.model,
        help="smollm2-135m-instruct (bundled), tiny-random, a Hugging Face folder or a .gguf file",
    )
    p.add_argument("--served-name", default=None, help="model name to serve it under")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPES, default=d.dtype)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens)
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    p.add_argument("--max-queued-tasks", type=int, default=d.max_queued_tasks)
    p.add_argument("--default-max-new-tokens", type=int, default=d.default_max_new_tokens)
    p.add_argument("--echo-delay-ms-per-token", type=float, default=d.echo_delay_ms_per_token)
    p.add_argument("--grace-s", type=float, default=d.grace_s, help="drain grace period on SIGTERM")
    p.add_argument(
        "--max-connection-age-s",
        type=float,
        default=None,
        help="recycle connections this old; Process streams are told to drain at that age",
    )
    p.add_argument(
        "--max-connection-age-grace-s",
        type=float,
        default=d.max_connection_age_grace_s,
        help="how long an old connection's streams may go on (default %(default)s)",
    )
    p.add_argument("--advertise", default=None, help="address put in results (default host:port)")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--log-level", default=None, help="default: $BATCHINFER_LOG_LEVEL, else INFO")
    p.add_argument("--tls-cert", type=Path, default=None, help="certificate chain (PEM): TLS")
    p.add_argument("--tls-key", type=Path, default=None, help="private key (PEM) of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        type=Path,
        default=None,
        help="require client certificates from this CA (PEM): only the gateway may send tasks",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="serve on a non-loopback address without client certificates (anyone may call)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    fields = {k: v for k, v in vars(args).items()}
    return ServerConfig(**fields).validate()


async def run(config: ServerConfig) -> int:
    running = await serve(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.ensure_future(running.wait_ready())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({ready, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.exception() is not None:
        log.error("%s", ready.exception())
        await running.stop(0)
        return 1
    if not stop.is_set():
        print(f"LISTENING {running.target}", flush=True)
        await stop.wait()
    ready.cancel()
    log.info("signal received: draining")
    finished = await running.drain()
    await running.stop()
    log.info("stopped (%s)", "all tasks finished" if finished else "grace period ran out")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run a server with these flags (the gateway CLI's `batchinfer worker` passes them on)."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Logs (stderr), traces and metrics; also switches on gRPC instrumentation, which
    # must happen before the server is created.
    telemetry = setup_telemetry(
        TelemetryConfig(
            service_name=SERVICE_NAME,
            metrics_port=config.metrics_port,
            log_level=config.log_level,
        )
    )
    try:
        return asyncio.run(run(config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
