"""batchinfer telemetry: the setup every process calls, the metric catalogue, the config."""

from __future__ import annotations

from collector.telemetry import (
    Telemetry,
    TelemetryConfig,
    capture_content,
    instrument_grpc,
    setup_telemetry,
)

__all__ = [
    "Telemetry",
    "TelemetryConfig",
    "capture_content",
    "instrument_grpc",
    "setup_telemetry",
]
