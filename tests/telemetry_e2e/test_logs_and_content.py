"""Log records carry trace ids over OTLP and on stderr; prompts and outputs stay out of
telemetry unless BATCHINFER_CAPTURE_CONTENT=true."""

from __future__ import annotations

from typing import Any

import pytest

from tests.telemetry.otlp_receiver import attributes_dict
from tests.telemetry_e2e.harness import GATEWAY, MARKER, SERVER, Capture

pytestmark = pytest.mark.slow


def job_trace_id(traced: Capture) -> bytes:
    spans = [
        s
        for s in traced.spans(GATEWAY, "job")
        if attributes_dict(s.attributes).get("batchinfer.job.id") == traced.job_id
    ]
    assert len(spans) == 1
    return bytes(spans[0].trace_id)


@pytest.mark.parametrize("service", [GATEWAY, SERVER])
def test_each_service_exports_log_records_with_trace_ids(traced: Capture, service: str) -> None:
    records = traced.logs(service)
    assert records, f"{service} exported no log records"
    traced_records = [r for r in records if any(r.trace_id) and any(r.span_id)]
    assert traced_records, [r.body.string_value for r in records]


def test_the_job_log_line_is_in_the_job_trace_on_otlp_and_stderr(traced: Capture) -> None:
    trace_id = job_trace_id(traced)
    otlp = [r for r in traced.logs(GATEWAY) if traced.job_id in r.body.string_value]
    assert any(bytes(r.trace_id) == trace_id for r in otlp)
    lines = [e for e in traced.stderr[GATEWAY] if traced.job_id in e["message"]]
    assert any(e.get("trace_id") == trace_id.hex() for e in lines)
    assert all(e["service"] == GATEWAY for e in traced.stderr[GATEWAY])


def test_server_batch_log_lines_share_trace_ids_with_batch_spans(traced: Capture) -> None:
    batch_traces = {bytes(s.trace_id) for s in traced.spans(SERVER, "batch")}
    record_traces = {bytes(r.trace_id) for r in traced.logs(SERVER) if any(r.trace_id)}
    assert batch_traces & record_traces
    stderr_traces = {e["trace_id"] for e in traced.stderr[SERVER] if "trace_id" in e}
    assert {t.hex() for t in batch_traces} & stderr_traces


def strings(capture: Capture) -> list[str]:
    """Every string value the processes exported: span and log attributes, log bodies."""
    found: list[str] = []

    def add(values: dict[str, Any]) -> None:
        for value in values.values():
            found.append(str(value))

    for service in (GATEWAY, SERVER):
        for span in capture.spans(service):
            add(attributes_dict(span.attributes))
            for event in span.events:
                add(attributes_dict(event.attributes))
        for record in capture.logs(service):
            add(attributes_dict(record.attributes))
            found.append(str(record.body))
    return found


def test_no_prompt_or_output_in_telemetry_by_default(traced: Capture) -> None:
    exported = strings(traced)
    assert exported
    assert not [s for s in exported if MARKER in s]
    for service in (GATEWAY, SERVER):
        assert MARKER not in str(traced.stderr[service])


def test_content_capture_puts_prompts_and_outputs_into_spans(traced_with_content: Capture) -> None:
    tasks = [attributes_dict(s.attributes) for s in traced_with_content.spans(GATEWAY, "task")]
    assert tasks and all(MARKER in a["batchinfer.prompt"] for a in tasks)
    assert all(a["batchinfer.output"] for a in tasks)
    batches = traced_with_content.spans(SERVER, "batch") + traced_with_content.spans(
        SERVER, "model.forward"
    )
    prompts = [
        str(attributes_dict(s.attributes).get("gen_ai.prompt"))
        for s in batches
        if "gen_ai.prompt" in attributes_dict(s.attributes)
    ]
    assert prompts and all(MARKER in p for p in prompts)


def test_no_asyncio_warnings_in_any_services_log(traced: Capture) -> None:
    assert traced.asyncio_warnings == []
