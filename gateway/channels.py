"""The client's channels to the gateway: which addresses a user gave (several replicas,
or one name that resolves to several), the credentials, and the channel options that go
with each (keepalive, message sizes, the published service config)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from gateway.settings import KEEPALIVE_OPTIONS, MAX_MESSAGE_BYTES, message_size_options

INITIAL_BACKOFF_S, MAX_BACKOFF_S = 0.2, 3.0
# A target naming its resolver is one channel over every address it resolves to
# ("dns:///gateway:50051", "ipv4:10.0.0.1:50051,10.0.0.2:50051"): its commas are its own.
RESOLVER_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")

# The published service config (docs/api.md, "Retries"): gRPC itself retries the unary
# calls that are safe to repeat on UNAVAILABLE, a few times over a few seconds; the
# client's own loop (reconnect_for_s) covers longer outages.
SERVICE_CONFIG = (Path(__file__).parent / "service_config.json").read_text(encoding="utf-8")
# A name that resolves to several replicas spreads calls over the reachable ones
# (pick_first, gRPC's default, would hold to the first address while it connects).
ROUND_ROBIN_CONFIG = json.dumps(
    {**json.loads(SERVICE_CONFIG), "loadBalancingConfig": [{"round_robin": {}}]}
)


def gateway_targets(values: Iterable[str]) -> tuple[str, ...]:
    """The addresses of `--gateway a:1,b:2 --gateway c:3` (or BATCHINFER_GATEWAY=a:1,b:2),
    in order, each once. A value with a resolver scheme is one target, commas and all.
    Raises ValueError when none is left."""
    found: list[str] = []
    for value in values:
        value = value.strip()
        parts = [value] if value.startswith(RESOLVER_SCHEMES) else value.split(",")
        for part in map(str.strip, parts):
            if part and part not in found:
                found.append(part)
    if not found:
        raise ValueError("no gateway address given (--gateway HOST:PORT[,HOST:PORT...])")
    return tuple(found)


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


def channel(
    address: str, credentials: Credentials = NO_CREDENTIALS, *, one_of_several: bool = False
) -> grpc.aio.Channel:
    """`one_of_several`: the address is one replica of a list the client moves along, so
    gRPC's own retries are off (they would retry a dead replica for seconds before the
    client moved to the next)."""
    # gRPC's default 4 MiB receive limit is less than a page of large results.
    options: list[tuple[str, Any]] = [*KEEPALIVE_OPTIONS, *message_size_options(MAX_MESSAGE_BYTES)]
    config = ROUND_ROBIN_CONFIG if address.startswith(RESOLVER_SCHEMES) else SERVICE_CONFIG
    options += [("grpc.service_config", config), ("grpc.enable_retries", int(not one_of_several))]
    # gRPC's own reconnect backoff grows to 120 s; ours stays at 3 s, so keep its pace.
    options += [
        ("grpc.initial_reconnect_backoff_ms", int(INITIAL_BACKOFF_S * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF_S * 1000)),
    ]
    if credentials.tls:
        return grpc.aio.secure_channel(address, credentials.channel_credentials(), options=options)
    return grpc.aio.insecure_channel(address, options=options)
