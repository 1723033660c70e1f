"""JSON log lines: fields, extras, and the ids of the current span."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from collector.logs import JsonFormatter
from collector.telemetry import TelemetryConfig


def format_one(formatter: JsonFormatter, **extra: object) -> dict:
    record = logging.LogRecord("batchinfer.x", logging.INFO, __file__, 1, "n=%d", (7,), None)
    record.__dict__.update(extra)
    return json.loads(formatter.format(record))


def test_json_line_carries_the_current_span_ids() -> None:
    formatter = JsonFormatter("batchinfer-gateway")
    tracer = TracerProvider().get_tracer("test")  # not global: nothing else is touched
    with tracer.start_as_current_span("s") as span:
        entry = format_one(formatter, job_id="j-1")
    context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    assert entry["message"] == "n=7" and entry["level"] == "INFO"
    assert entry["logger"] == "batchinfer.x" and entry["service"] == "batchinfer-gateway"
    assert entry["job_id"] == "j-1" and "ts" in entry


def test_json_line_outside_a_span_has_no_ids_and_shows_exceptions() -> None:
    formatter = JsonFormatter("svc")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("batchinfer.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    entry = json.loads(stream.getvalue())
    assert "trace_id" not in entry and "RuntimeError: boom" in entry["exception"]


def test_config_errors_name_the_field() -> None:
    import pytest

    with pytest.raises(ValueError, match="metrics_port=70000"):
        TelemetryConfig("svc", metrics_port=70000)
    with pytest.raises(ValueError, match="service_name"):
        TelemetryConfig("")
