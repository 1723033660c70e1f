"""OTLP exporters for each signal, gRPC or HTTP, only where an endpoint is configured.

The exporter classes read their endpoint, headers, timeout and TLS settings from the
standard OTEL_EXPORTER_OTLP_* variables themselves; this module only picks the class.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from collector import settings

# (protocol, signal) -> (module, class); imported lazily so an unused transport costs nothing.
EXPORTERS: dict[tuple[str, str], tuple[str, str]] = {
    ("grpc", "traces"): ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter"),
    ("grpc", "metrics"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("grpc", "logs"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    ("http/protobuf", "traces"): ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter"),
    ("http/protobuf", "metrics"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("http/protobuf", "logs"): ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
}  # fmt: skip


def exporter_class(signal: str, protocol: str) -> type[Any]:
    """The OTLP exporter class for a signal over a protocol."""
    try:
        module_name, class_name = EXPORTERS[(protocol, signal)]
    except KeyError:
        raise ValueError(f"no OTLP exporter for signal={signal!r} protocol={protocol!r}") from None
    cls: type[Any] = getattr(importlib.import_module(module_name), class_name)
    return cls


def make_exporter(signal: str, env: Mapping[str, str] | None = None) -> Any | None:
    """An exporter for `signal` ("traces", "metrics" or "logs"), or None with no endpoint."""
    if signal not in settings.SIGNALS:
        raise ValueError(f"signal={signal!r}: expected one of {', '.join(settings.SIGNALS)}")
    if settings.signal_endpoint(signal, env) is None:
        return None
    return exporter_class(signal, settings.signal_protocol(signal, env))()
