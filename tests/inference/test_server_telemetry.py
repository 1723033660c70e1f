"""The server's batch spans and metrics, with SDK providers of the test's own (no globals)."""

from __future__ import annotations

from batchinfer.v1 import task_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.inference.config import ServerConfig
from services.inference.server import serve
from services.inference.telemetry import ServerTelemetry, parse_traceparent
from tests.inference.conftest import gen_task, stream_to

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def traced(task_id: str, span_id: str) -> task_pb2.Task:
    task = gen_task(task_id, "a b c", max_new_tokens=2)
    task.model = "m1"
    task.trace_context.traceparent = f"00-{TRACE_ID}-{span_id}-01"
    return task


def test_parse_traceparent() -> None:
    context = parse_traceparent(f"00-{TRACE_ID}-00f067aa0ba902b7-01")
    assert context is not None and context.is_remote and context.trace_flags.sampled
    assert context.trace_id == int(TRACE_ID, 16) and context.span_id == 0x00F067AA0BA902B7
    for bad in ("", "garbage", f"00-{TRACE_ID}-0000000000000000-01", "00-xyz-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None


async def test_a_batch_span_links_its_tasks_and_metrics_are_recorded() -> None:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = ServerTelemetry(tracer_provider, MeterProvider(metric_readers=[reader]))
    config = ServerConfig(backend="echo", port=0, max_batch_size=3, max_wait_ms=50)
    server = await serve(config, telemetry=telemetry)
    try:
        await server.wait_ready(10)
        async with stream_to(server) as client:
            client.send([traced(f"t{i}", f"00f067aa0ba902b{i}") for i in range(3)])
            client.send([gen_task("bad", max_new_tokens=0)])
            await client.wait_for(4)
    finally:
        await server.stop(0)

    batch = next(s for s in spans.get_finished_spans() if s.name == "batch")
    forward = next(s for s in spans.get_finished_spans() if s.name == "model.forward")
    assert forward.parent is not None and forward.parent.span_id == batch.context.span_id
    assert batch.attributes["batchinfer.batch.size"] == 3
    assert batch.attributes["gen_ai.request.model"] == "m1"
    assert batch.attributes["gen_ai.operation.name"] == "text_completion"
    assert batch.attributes["server.address"] == server.address
    assert forward.attributes["gen_ai.usage.output_tokens"] == 6
    assert {link.context.trace_id for link in batch.links} == {int(TRACE_ID, 16)}
    assert len(batch.links) == 3
    assert "gen_ai.prompt" not in batch.attributes  # no content unless asked

    data = reader.get_metrics_data()
    points = {
        metric.name: metric.data.data_points
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert {
        "gen_ai.server.request.duration",
        "gen_ai.server.time_to_first_token",
        "batchinfer.batch.size",
        "batchinfer.batch.tokens",
        "batchinfer.server.tokens",
        "batchinfer.inflight",
        "batchinfer.server.busy",
    } <= set(points)
    durations = points["gen_ai.server.request.duration"]
    assert sum(p.count for p in durations) == 4
    failed = [p for p in durations if p.attributes.get("error.type") == "INVALID_ARGUMENT"]
    assert len(failed) == 1 and failed[0].count == 1
    tokens = {
        p.attributes["gen_ai.token.type"]: p.value for p in points["batchinfer.server.tokens"]
    }
    assert tokens == {"input": 9, "output": 6}
    assert [p.value for p in points["batchinfer.inflight"]] == [0]
    assert 0.0 <= points["batchinfer.server.busy"][0].value <= 1.0
