"""setup_telemetry in a real child process, exporting to a real OTLP receiver."""

from __future__ import annotations

import json

from tests.telemetry.conftest import run_child
from tests.telemetry.otlp_receiver import OtlpReceiver, attributes_dict

FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BLRP_SCHEDULE_DELAY": "100"}


def json_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def check_emit_scenario(receiver: OtlpReceiver, stderr: str) -> None:
    # Shutdown flushes, so everything is there once the child has exited.
    [span] = [s for s in receiver.spans() if s.name == "job.submit"]
    resource = receiver.resources("traces")[0]
    assert resource["service.name"] == "batchinfer-gateway"
    assert resource["service.version"] == "9.9.9"
    assert resource["service.instance.id"]
    assert resource["deployment.environment"] == "test"

    names = {m.name for m in receiver.metrics()}
    assert {"batchinfer.tasks", "batchinfer.batch.size"} <= names
    [size] = [m for m in receiver.metrics() if m.name == "batchinfer.batch.size"]
    assert list(size.histogram.data_points[0].explicit_bounds)[:4] == [1.0, 2.0, 4.0, 8.0]

    [inside] = [r for r in receiver.logs() if r.body.string_value == "job accepted"]
    assert inside.trace_id == span.trace_id and inside.span_id == span.span_id
    assert attributes_dict(inside.attributes)["job_id"] == "job-1"
    [outside] = [r for r in receiver.logs() if r.body.string_value == "outside any span"]
    assert outside.trace_id == b""

    [line] = [e for e in json_lines(stderr) if e["message"] == "job accepted"]
    assert line["trace_id"] == span.trace_id.hex() and line["span_id"] == span.span_id.hex()
    assert line["service"] == "batchinfer-gateway" and line["job_id"] == "job-1"


def test_grpc_export_of_span_metrics_and_log(otlp_receiver: OtlpReceiver) -> None:
    done = run_child(
        "emit",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        **FAST,
    )
    check_emit_scenario(otlp_receiver, done.stderr)


def test_http_protobuf_export(otlp_http_receiver: OtlpReceiver) -> None:
    done = run_child(
        "emit",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_http_receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
        **FAST,
    )
    check_emit_scenario(otlp_http_receiver, done.stderr)


def test_per_signal_endpoint_exports_only_that_signal(otlp_receiver: OtlpReceiver) -> None:
    run_child("emit", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=otlp_receiver.endpoint, **FAST)
    assert otlp_receiver.logs()
    assert otlp_receiver.spans() == [] and otlp_receiver.metrics() == []


def test_no_endpoint_exports_nothing_and_fails_nothing() -> None:
    done = run_child("emit")
    lines = json_lines(done.stderr)
    [inside] = [e for e in lines if e["message"] == "job accepted"]
    assert len(inside["trace_id"]) == 32  # trace context still flows into log lines
    assert not [e for e in lines if e["level"] == "ERROR"]
    assert not [line for line in done.stderr.splitlines() if "Traceback" in line]


def test_sdk_disabled_sends_nothing(otlp_receiver: OtlpReceiver) -> None:
    done = run_child(
        "emit", OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, OTEL_SDK_DISABLED="true"
    )
    assert otlp_receiver.requests("traces") == []
    assert otlp_receiver.requests("metrics") == []
    assert otlp_receiver.requests("logs") == []
    assert any(e["message"] == "job accepted" for e in json_lines(done.stderr))


def test_sampler_comes_from_the_environment(otlp_receiver: OtlpReceiver) -> None:
    run_child(
        "emit",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_TRACES_SAMPLER="always_off",
        **FAST,
    )
    assert otlp_receiver.spans() == []
    assert {m.name for m in otlp_receiver.metrics()} >= {"batchinfer.tasks"}
    [log] = [r for r in otlp_receiver.logs() if r.body.string_value == "job accepted"]
    assert len(log.trace_id) == 16 and log.flags & 0x1 == 0  # ids flow, marked not sampled


def test_grpc_aio_server_and_client_are_traced(otlp_receiver: OtlpReceiver) -> None:
    run_child("grpc", OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, **FAST)
    names = [s.name for s in otlp_receiver.spans()]
    assert names.count("/test.Echo/Say") == 2, names  # client span and server span
    assert not [n for n in names if "Health" in n], names
    pair = [s for s in otlp_receiver.spans() if s.name == "/test.Echo/Say"]
    assert pair[0].trace_id == pair[1].trace_id
    assert {s.kind for s in pair} == {2, 3}  # SERVER, CLIENT
    [handler_log] = [r for r in otlp_receiver.logs() if r.body.string_value == "handling Say"]
    server_span = next(s for s in pair if s.kind == 2)
    assert handler_log.span_id == server_span.span_id
