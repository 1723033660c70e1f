"""The process's resource: its attributes, and a hash computed once that agrees with the
SDK's (the OTLP encoders group spans and log records by resource)."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from collector.telemetry import build_resource


def test_the_resource_hashes_and_compares_as_the_sdks_own() -> None:
    resource = build_resource("batchinfer-test", "1.2.3")
    plain = Resource(resource.attributes, resource.schema_url)
    assert resource == plain and hash(resource) == hash(plain)
    assert resource.attributes["service.name"] == "batchinfer-test"
    assert resource.attributes["service.version"] == "1.2.3"
    other = build_resource("batchinfer-other", "1.2.3")
    assert other != resource and hash(other) != hash(resource)


def test_spans_of_one_process_encode_under_one_resource() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=build_resource("batchinfer-test", "1"))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in ("a", "b", "c"):
        provider.get_tracer("t").start_span(name).end()
    encoded = encode_spans(exporter.get_finished_spans())
    assert len(encoded.resource_spans) == 1
    assert len(encoded.resource_spans[0].scope_spans[0].spans) == 3
