"""Settings precedence (argument > environment > default) and errors that name the source."""

from __future__ import annotations

import pytest

from collector import settings
from collector.exporters import exporter_class, make_exporter


def test_endpoint_per_signal_wins_over_generic() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://b:4318/v1/logs",
    }
    assert settings.signal_endpoint("logs", env) == "http://b:4318/v1/logs"
    assert settings.signal_endpoint("traces", env) == "http://a:4317"
    assert settings.signal_endpoint("traces", {}) is None


def test_no_endpoint_means_no_exporter() -> None:
    assert [make_exporter(s, {}) for s in settings.SIGNALS] == [None, None, None]


def test_protocol_picks_the_exporter_module() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
    }
    assert settings.signal_protocol("metrics", env) == "http/protobuf"
    assert settings.signal_protocol("traces", env) == "grpc"
    assert settings.signal_protocol("logs", {}) == "grpc"
    assert ".http." in exporter_class("metrics", "http/protobuf").__module__
    assert ".grpc." in exporter_class("traces", "grpc").__module__


def test_bad_protocol_names_the_variable() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL='http/json'"):
        settings.signal_protocol("traces", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_log_level_flag_then_environment_then_default() -> None:
    env = {"BATCHINFER_LOG_LEVEL": "debug"}
    assert settings.log_level("warning", env) == "WARNING"
    assert settings.log_level(None, env) == "DEBUG"
    assert settings.log_level(None, {}) == "INFO"
    with pytest.raises(ValueError, match="BATCHINFER_LOG_LEVEL='loud'"):
        settings.log_level(None, {"BATCHINFER_LOG_LEVEL": "loud"})


def test_capture_content_defaults_to_off() -> None:
    assert settings.capture_content(None, {}) is False
    assert settings.capture_content(None, {"BATCHINFER_CAPTURE_CONTENT": "true"}) is True
    assert settings.capture_content(False, {"BATCHINFER_CAPTURE_CONTENT": "true"}) is False
    with pytest.raises(ValueError, match="BATCHINFER_CAPTURE_CONTENT='maybe'"):
        settings.capture_content(None, {"BATCHINFER_CAPTURE_CONTENT": "maybe"})


def test_metric_export_interval() -> None:
    assert settings.metric_export_interval_ms(None, {}) == 10_000
    assert settings.metric_export_interval_ms(None, {"OTEL_METRIC_EXPORT_INTERVAL": "500"}) == 500
    assert settings.metric_export_interval_ms(250, {"OTEL_METRIC_EXPORT_INTERVAL": "500"}) == 250
    with pytest.raises(ValueError, match="OTEL_METRIC_EXPORT_INTERVAL='soon'"):
        settings.metric_export_interval_ms(None, {"OTEL_METRIC_EXPORT_INTERVAL": "soon"})


def test_sdk_disabled() -> None:
    assert settings.sdk_disabled({"OTEL_SDK_DISABLED": "true"}) is True
    assert settings.sdk_disabled({}) is False
