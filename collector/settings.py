"""Every environment variable the telemetry setup reads, and how it reads them.

Precedence everywhere: explicit argument, then environment variable, then default.
The OTLP exporters and the SDK sampler read their own standard ``OTEL_*`` variables;
they are named here too so that one module lists all of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# --- ours
BATCHINFER_LOG_LEVEL = "BATCHINFER_LOG_LEVEL"
BATCHINFER_CAPTURE_CONTENT = "BATCHINFER_CAPTURE_CONTENT"
BATCHINFER_METRICS_HOST = "BATCHINFER_METRICS_HOST"
BATCHINFER_TASK_SPANS_PER_S = "BATCHINFER_TASK_SPANS_PER_S"

# --- standard OpenTelemetry variables read by this package
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
OTEL_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
# Read by the SDK itself (TracerProvider picks the sampler from them).
OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
OTEL_TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"

SIGNALS = ("traces", "metrics", "logs")

PROTOCOL_GRPC = "grpc"
PROTOCOL_HTTP = "http/protobuf"
PROTOCOLS = (PROTOCOL_GRPC, PROTOCOL_HTTP)

DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_TASK_SPANS_PER_S = 100.0
DEFAULT_METRIC_EXPORT_INTERVAL_MS = 10_000

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def signal_endpoint_var(signal: str) -> str:
    """OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT."""
    return f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"


def signal_protocol_var(signal: str) -> str:
    """OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_PROTOCOL."""
    return f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"


def env_bool(name: str, env: Mapping[str, str] | None = None) -> bool | None:
    """A boolean variable, None when unset; an unreadable value names the variable."""
    raw = (os.environ if env is None else env).get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r}: expected true or false")


def env_int(name: str, env: Mapping[str, str] | None = None) -> int | None:
    """An integer variable, None when unset or empty."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer") from None


def sdk_disabled(env: Mapping[str, str] | None = None) -> bool:
    """OTEL_SDK_DISABLED=true switches every signal off."""
    return bool(env_bool(OTEL_SDK_DISABLED, env))


def signal_endpoint(signal: str, env: Mapping[str, str] | None = None) -> str | None:
    """The endpoint for one signal: its own variable first, then the generic one."""
    source = os.environ if env is None else env
    return (
        source.get(signal_endpoint_var(signal), "").strip()
        or source.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
        or None
    )


def signal_protocol(signal: str, env: Mapping[str, str] | None = None) -> str:
    """grpc (default) or http/protobuf; anything else is an error naming the variable."""
    source = os.environ if env is None else env
    for name in (signal_protocol_var(signal), OTEL_EXPORTER_OTLP_PROTOCOL):
        raw = source.get(name, "").strip()
        if raw:
            if raw not in PROTOCOLS:
                raise ValueError(f"{name}={raw!r}: expected one of {', '.join(PROTOCOLS)}")
            return raw
    return PROTOCOL_GRPC


def log_level(argument: str | None, env: Mapping[str, str] | None = None) -> str:
    """The flag, else BATCHINFER_LOG_LEVEL, else INFO; an unknown level names its source."""
    source = os.environ if env is None else env
    raw, origin = argument, "log_level"
    if not raw:
        raw, origin = source.get(BATCHINFER_LOG_LEVEL, "").strip(), BATCHINFER_LOG_LEVEL
    if not raw:
        return DEFAULT_LOG_LEVEL
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{origin}={raw!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def capture_content(argument: bool | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether prompts and outputs may go into telemetry: the argument, else the variable."""
    if argument is not None:
        return argument
    return bool(env_bool(BATCHINFER_CAPTURE_CONTENT, env))


def metric_export_interval_ms(argument: int | None, env: Mapping[str, str] | None = None) -> int:
    """How often the OTLP metric reader exports, in milliseconds."""
    if argument is not None:
        value, origin = argument, "metric_export_interval_ms"
    else:
        from_env = env_int(OTEL_METRIC_EXPORT_INTERVAL, env)
        if from_env is None:
            return DEFAULT_METRIC_EXPORT_INTERVAL_MS
        value, origin = from_env, OTEL_METRIC_EXPORT_INTERVAL
    if value <= 0:
        raise ValueError(f"{origin}={value}: expected a positive number of milliseconds")
    return value


def metrics_host(argument: str | None, env: Mapping[str, str] | None = None) -> str:
    """Bind address of /metrics: the argument, else BATCHINFER_METRICS_HOST, else 127.0.0.1."""
    if argument:
        return argument
    source = os.environ if env is None else env
    return source.get(BATCHINFER_METRICS_HOST, "").strip() or DEFAULT_METRICS_HOST


def task_spans_per_s(env: Mapping[str, str] | None = None) -> float:
    """How many task spans a gateway records a second (bursts of 10 s worth); 0 = none."""
    raw = (os.environ if env is None else env).get(BATCHINFER_TASK_SPANS_PER_S, "").strip()
    if not raw:
        return DEFAULT_TASK_SPANS_PER_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{BATCHINFER_TASK_SPANS_PER_S}={raw!r}: expected a number") from None
    if not value >= 0:
        raise ValueError(f"{BATCHINFER_TASK_SPANS_PER_S}={raw!r}: expected 0 or more")
    return value
