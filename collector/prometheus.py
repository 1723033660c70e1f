"""The Prometheus /metrics endpoint of a process: an SDK reader and an HTTP server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry, start_http_server


@dataclass
class MetricsServer:
    """A running /metrics server; `port` is the bound port (useful when 0 was asked)."""

    reader: PrometheusMetricReader
    registry: CollectorRegistry
    port: int
    _httpd: Any
    _thread: Any

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(host: str, port: int) -> MetricsServer:
    """Serve the reader's metrics on host:port; a busy port raises OSError naming it."""
    # A registry of our own: several setups (tests) must not clash in the global one.
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise OSError(f"cannot serve /metrics on {host}:{port}: {error}") from error
    return MetricsServer(reader, registry, httpd.server_port, httpd, thread)
