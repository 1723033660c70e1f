"""Settings of one inference server, and every environment variable it reads."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

# All environment variable names the inference server reads, in one place.
ENV_CACHE_DIR = "BATCHINFER_CACHE_DIR"

BACKENDS = ("transformers", "echo")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A setting has a value the server cannot use; the message names the field."""


@dataclass
class ServerConfig:
    """How one inference server listens, which model it serves and how it batches."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = 0
    """Port to bind; 0 picks a free one (see RunningServer.port)."""
    backend: str = "transformers"
    """transformers (a real model) or echo (a deterministic fake for load tests)."""
    model: str = "smollm2-135m-instruct"
    """smollm2-135m-instruct (bundled), tiny-random (tests), a Hugging Face folder or a .gguf file."""
    served_name: str | None = None
    """Name the model is served under; default: derived from `model`."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda or cuda:N."""
    dtype: str = "auto"
    """auto: bfloat16 on CUDA, float32 on the CPU."""
    max_batch_size: int = 32
    """Most tasks in one model batch."""
    max_batch_tokens: int = 8192
    """Most tokens in one model batch, counted padded (rows x (longest prompt + max_new_tokens))."""
    max_wait_ms: float = 10.0
    """How long the batcher waits for a batch to fill once its first task is queued."""
    max_queued_tasks: int = 256
    """Credit window granted to each stream."""
    default_max_new_tokens: int = 256
    """max_new_tokens of a task that leaves it unset."""
    echo_delay_ms_per_token: float = 0.0
    """Echo backend only: simulated time per output token, shared by the whole batch."""
    grace_s: float = 30.0
    """On SIGTERM / drain: how long in-flight tasks may take before they are failed."""
    max_connection_age_s: float | None = None
    """Recycle connections this old (grpc.max_connection_age_ms, so a client re-resolves and
    spreads over new replicas); each Process stream is told to drain at that age, so it
    ends cleanly even through a proxy. None: never."""
    max_connection_age_grace_s: float = 30.0
    """After its max age, how long a connection's streams may go on before they are cut;
    more than the longest a window of tasks takes."""
    advertise: str | None = None
    """Address put in each result's `server` field; default host:port."""
    metrics_port: int | None = None
    """Serve Prometheus /metrics on this port (0: any free one); None: no endpoint."""
    log_level: str | None = None
    """DEBUG, INFO, ...; None: $BATCHINFER_LOG_LEVEL, else INFO (see collector.settings)."""
    threads: int | None = None
    """torch CPU threads; default: all cores."""
    tls_cert: Path | None = None
    """Certificate chain (PEM); with tls_key the port serves TLS."""
    tls_key: Path | None = None
    """Private key (PEM) of tls_cert."""
    tls_client_ca: Path | None = None
    """CA (PEM) whose client certificates are required: only holders (the gateway) may call."""
    insecure: bool = False
    """Allow a non-loopback host without client certificates (anyone may send it tasks)."""

    def validate(self) -> ServerConfig:
        def need(ok: bool, field: str, what: str, value: object) -> None:
            if not ok:
                raise ConfigError(f"{field} {what}, got {value!r}")

        need(self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}", self.backend)
        need(
            self.device in DEVICES or self.device.startswith("cuda:"),
            "device",
            "must be auto, cpu, cuda or cuda:N",
            self.device,
        )
        need(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}", self.dtype)
        need(0 <= self.port <= 65535, "port", "must be in 0..65535", self.port)
        need(self.max_batch_size >= 1, "max_batch_size", "must be >= 1", self.max_batch_size)
        need(self.max_batch_tokens >= 1, "max_batch_tokens", "must be >= 1", self.max_batch_tokens)
        need(self.max_wait_ms >= 0, "max_wait_ms", "must be >= 0", self.max_wait_ms)
        need(self.max_queued_tasks >= 1, "max_queued_tasks", "must be >= 1", self.max_queued_tasks)
        need(
            self.default_max_new_tokens >= 1,
            "default_max_new_tokens",
            "must be >= 1",
            self.default_max_new_tokens,
        )
        need(
            self.echo_delay_ms_per_token >= 0,
            "echo_delay_ms_per_token",
            "must be >= 0",
            self.echo_delay_ms_per_token,
        )
        need(self.grace_s >= 0, "grace_s", "must be >= 0", self.grace_s)
        age = self.max_connection_age_s
        need(age is None or age > 0, "max_connection_age_s", "must be > 0", age)
        grace = self.max_connection_age_grace_s
        need(grace >= 0, "max_connection_age_grace_s", "must be >= 0", grace)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together (--tls-cert, --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key (mTLS is TLS)")
        if self.tls_client_ca is None and not self.insecure and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve on {self.host} without client certificates: anyone who "
                "reaches the port could send it tasks. Add --tls-cert, --tls-key and "
                "--tls-client-ca (the CA of the gateway's --worker-tls-cert), or --insecure "
                "to accept that (docs/security.md)"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the port on this machine ('0.0.0.0', '::', names: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cache_dir() -> Path:
    """Where converted models are cached: $BATCHINFER_CACHE_DIR or ~/.cache/batchinfer/models."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "batchinfer" / "models"
