"""Settings of the gateway, and every environment variable it reads (only its own)."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gateway.limits import Limits

ENV_STORE_URL = "BATCHINFER_STORE_URL"
ENV_DATA_DIR = "BATCHINFER_DATA_DIR"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the gateway's default; clients receive as much


class SettingsError(ValueError):
    """A gateway setting has a value it cannot use; the message names the setting."""


@dataclass(frozen=True)
class TenantLimits:
    """What one tenant may use of the whole gateway; a job's own rate_limit still applies
    inside its tenant's."""

    weight: float | None = None
    """Fair-share weight (default 1)."""
    requests_per_s: float | None = None
    """Tasks a second sent for all of the tenant's jobs together."""
    burst: float | None = None
    """Bucket size of requests_per_s (default: one second's worth)."""
    tokens_per_s: float | None = None
    """Estimated tokens a second, all of the tenant's jobs together."""
    token_burst: float | None = None
    max_queued_tasks: int | None = None
    """Admission cap on the tenant's unfinished tasks (default: the gateway-wide cap)."""

    @classmethod
    def from_dict(cls, tenant: str, raw: Any) -> TenantLimits:
        if not isinstance(raw, Mapping):
            raise SettingsError(f"tenants.{tenant}: expected a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SettingsError(
                f"tenants.{tenant}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, value in raw.items():
            where = f"tenants.{tenant}.{name}"
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"{where}: expected a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{where}: expected a finite number > 0, got {value!r}")
            if name == "max_queued_tasks" and not float(value).is_integer():
                raise SettingsError(f"{where}: expected a whole number, got {value!r}")
            values[name] = int(value) if name == "max_queued_tasks" else float(value)
        return cls(**values)


def load_gateway_file(path: Path) -> dict[str, TenantLimits]:
    """The tenants section of a gateway configuration file (YAML):

    tenants:
      team-a: {weight: 2, requests_per_s: 500, tokens_per_s: 200000, max_queued_tasks: 100000}
    """
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"--config {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise SettingsError(f"--config {path}: expected a mapping at the top")
    unknown = sorted(set(raw) - {"tenants"})
    if unknown:
        raise SettingsError(f"--config {path}: unknown section {unknown[0]!r}; known: tenants")
    tenants = raw.get("tenants") or {}
    if not isinstance(tenants, Mapping):
        raise SettingsError(f"--config {path}: tenants: expected a mapping of tenant names")
    return {str(name): TenantLimits.from_dict(str(name), value) for name, value in tenants.items()}


@dataclass
class GatewayConfig:
    """How the gateway listens, where it keeps state and how it drives the fleet."""

    host: str = "127.0.0.1"
    """Address to bind the public API on."""
    port: int = 0
    """Port of the public API; 0 picks a free one."""
    data_dir: Path = Path(".batchinfer")
    """Folder for the SQLite store and uploaded input files."""
    store_url: str | None = None
    """SQLAlchemy URL of the job store; default: SQLite in data_dir."""
    workers: tuple[str, ...] = ()
    """Inference servers as HOST:PORT."""
    workers_dns: str | None = None
    """A DNS name (HOST:PORT) whose A/AAAA records are the inference servers (a headless Service)."""
    dns_refresh_s: float = 10.0
    """How often the DNS name is resolved again."""
    lease_s: float = 60.0
    """How long a task sent to a server stays leased without progress on that server."""
    batch_tasks: int = 64
    """Tasks per TaskBatch message at most."""
    batch_tokens: int = 65536
    """Estimated tokens per TaskBatch message at most."""
    queue_per_job: int = 4096
    """Pending tasks of one job held in memory at most; the rest wait in the store."""
    max_job_tasks: int = 5_000_000
    """Tasks in one job at most."""
    prevalidate_rows: int = 20_000
    """Jobs up to this many rows are fully expanded once before they are accepted."""
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    """Fair-share weights; unknown tenants get 1."""
    tenant_max_queued: int | None = None
    """Admission cap on unfinished tasks per tenant."""
    tenants: Mapping[str, TenantLimits] = field(default_factory=dict)
    """Per-tenant weight, rates and admission cap (the gateway's --config file)."""
    aging_per_s: float = 1 / 60
    """Priority levels a waiting job gains per second."""
    max_lost_leases: int = 5
    """Attempts a task may lose to servers going away, beyond its job's retry.max_attempts."""
    eject_after_failures: int = 3
    """Streams in a row that a server accepted and then dropped, after which it is ejected
    for a while. A server that refuses connections (restarting) is retried, not ejected."""
    replica_timeout_s: float = 6.0
    """A gateway replica whose heartbeat (four a timeout) is older than this is presumed dead:
    the others take its leases back (at no cost to the tasks) and drive its jobs."""
    replica_poll_s: float = 2.0
    """How often a replica reads the store for what the others did (pause, priority,
    cancel, results, jobs to take up). On PostgreSQL a notification wakes it at once; the
    poll is what still works while the listening connection is down."""
    reconnect_max_s: float = 1.0
    """Longest wait (before jitter) between attempts to reach a server that is down."""
    grace_s: float = 20.0
    """On SIGTERM: how long the gateway waits for the results of tasks in flight before it
    gives their leases back and exits."""
    eject_s: float = 10.0
    """How long an ejected server is left alone before it is health-checked again."""
    unary_timeout_s: float = 10.0
    """Deadline of the gateway's unary calls to inference servers."""
    max_connection_age_s: float | None = None
    """Recycle client connections this old (grpc.max_connection_age_ms): behind a load
    balancer, clients then spread over new replicas. Their WatchJob/StreamResults re-open
    from their cursor; None: never."""
    max_connection_age_grace_s: float = 30.0
    """After its max age, how long a connection's calls may go on before they are cut (an
    Execute stream cut then loses its tasks in flight: the client sends them again)."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest gRPC message accepted or sent; a larger one gets RESOURCE_EXHAUSTED from the
    transport ("Received message larger than max (N vs. LIMIT)"). Inputs beyond it go as an
    uploaded file, which travels in chunks."""

    # What a client may send, and the processes that work on it (docs/security.md).
    limits: Limits = field(default_factory=Limits)
    """Caps on job text, rows, templates and rendering (gateway/limits.py)."""
    render_workers: int = 2
    """Worker processes that parse, check and expand jobs, for each of the two kinds of
    step (checks, expansions); 0 does that work in threads of the gateway instead."""

    # Who may call, and how both hops are encrypted (docs/security.md, "Identity and isolation").
    auth_file: Path | None = None
    """Principals file (YAML): bearer-token digests and certificate CNs, tenants and roles.
    None, with no tls_client_ca: every caller is one trusted user."""
    tls_cert: Path | None = None
    """Certificate chain (PEM) of the public port; with tls_key it serves TLS."""
    tls_key: Path | None = None
    """Private key (PEM) of tls_cert."""
    tls_client_ca: Path | None = None
    """CA (PEM) whose client certificates the public port requires (mTLS)."""
    worker_tls_ca: Path | None = None
    """CA (PEM) that signed the inference servers' certificates; set: TLS to the servers."""
    worker_tls_cert: Path | None = None
    """The gateway's client certificate (PEM) towards inference servers that require one."""
    worker_tls_key: Path | None = None
    """Private key (PEM) of worker_tls_cert."""
    worker_tls_server_name: str | None = None
    """Name the servers' certificates are checked against instead of the dialled host
    (addresses from workers_dns are pod IPs)."""
    insecure: bool = False
    """Allow a non-loopback host without authentication (no auth_file, no tls_client_ca)."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self._check_security()
        if self.batch_tasks < 1:
            raise SettingsError(f"batch_tasks must be >= 1, got {self.batch_tasks}")
        if self.lease_s <= 0:
            raise SettingsError(f"lease_s must be > 0, got {self.lease_s}")
        if self.render_workers < 0:
            raise SettingsError(f"render_workers must be >= 0, got {self.render_workers}")
        if self.max_connection_age_s is not None and self.max_connection_age_s <= 0:
            raise SettingsError(
                f"max_connection_age_s must be > 0, got {self.max_connection_age_s}"
            )
        if self.max_connection_age_grace_s < 0:
            raise SettingsError(
                f"max_connection_age_grace_s must be >= 0, got {self.max_connection_age_grace_s}"
            )
        if self.queue_per_job < self.batch_tasks:
            raise SettingsError("queue_per_job must be >= batch_tasks")
        for weight_tenant, weight in self.tenant_weights.items():
            if weight <= 0:
                raise SettingsError(f"tenant weight of {weight_tenant!r} must be > 0, got {weight}")

    def _check_security(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise SettingsError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS)")
        if (self.worker_tls_cert is None) != (self.worker_tls_key is None):
            raise SettingsError("--worker-tls-cert and --worker-tls-key go together")
        if self.worker_tls_cert is not None and self.worker_tls_ca is None:
            raise SettingsError("--worker-tls-cert needs --worker-tls-ca")
        authenticated = self.auth_file is not None or self.tls_client_ca is not None
        if not authenticated and not self.insecure and not is_loopback(self.host):
            raise SettingsError(
                f"refusing to serve on {self.host} without authentication: anyone who reaches "
                "the port could read, change and cancel every tenant's jobs. Add --auth-file "
                "FILE (principals with token digests) and/or --tls-cert, --tls-key and "
                "--tls-client-ca (client certificates), or --insecure to accept that "
                "(docs/security.md)"
            )

    def tenant_cap(self, tenant: str) -> int | None:
        """Admission cap on the tenant's unfinished tasks, or None."""
        limits = self.tenants.get(tenant)
        if limits is not None and limits.max_queued_tasks is not None:
            return limits.max_queued_tasks
        return self.tenant_max_queued

    def resolved_store_url(self) -> str:
        if self.store_url:
            return self.store_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'batchinfer.db').resolve()}"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the port on this machine ('0.0.0.0', '::', names: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Keepalive both ends agree on: pings every 30 s on idle long streams, and the
# server allows pings that often without calling them abuse.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def connection_age_options(age_s: float | None, grace_s: float) -> list[tuple[str, int]]:
    """Server options that recycle connections older than age_s (none when None)."""
    if age_s is None:
        return []
    return [
        ("grpc.max_connection_age_ms", max(int(age_s * 1000), 1)),
        ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
    ]


def message_size_options(max_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]
