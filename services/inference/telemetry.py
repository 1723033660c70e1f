"""Spans and metrics of the inference server, through the OpenTelemetry API only.

The process's telemetry setup (collector/) installs the SDK providers; without them
every call here is a no-op. Prompts and outputs never go into telemetry unless
BATCHINFER_CAPTURE_CONTENT=true.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanContext, TraceFlags

from collector import capture_content
from collector.metrics import instrument
from services.inference.types import InferTask, Outcome, TaskKind

SCOPE = "batchinfer.inference"
COMPONENT = {"batchinfer.component": "server"}
MODEL = "gen_ai.request.model"
OPERATION_NAME = "gen_ai.operation.name"
MAX_LINKS = 128

OPERATION = {
    TaskKind.GENERATE: "text_completion",
    TaskKind.CHAT: "chat",
    TaskKind.CLASSIFY: "text_completion",
    TaskKind.SCORE: "text_completion",
    TaskKind.EMBED: "embeddings",
}


log = logging.getLogger(__name__)


def operation_name(kind: int) -> str:
    return OPERATION.get(kind, "text_completion")  # type: ignore[call-overload]


def parse_traceparent(value: str) -> SpanContext | None:
    """The span context of a W3C traceparent header ("00-<trace>-<span>-<flags>"), or None."""
    parts = value.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


class BusyClock:
    """Fraction of wall time spent in model calls since the last observation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0.0
        self._since = time.perf_counter()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._busy += seconds

    def take(self) -> float:
        with self._lock:
            now = time.perf_counter()
            wall, busy = now - self._since, self._busy
            self._since, self._busy = now, 0.0
        return min(1.0, busy / wall) if wall > 0 else 0.0


class ServerTelemetry:
    """The server's instruments; one per process (instruments are created once)."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        """Providers default to the global ones (what collector.setup_telemetry installs)."""
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self.busy = BusyClock()
        self.model = ""
        """The served model's name, for the busy gauge."""
        self.duration = instrument(meter, "gen_ai.server.request.duration")
        self.ttft = instrument(meter, "gen_ai.server.time_to_first_token")
        self.batch_size = instrument(meter, "batchinfer.batch.size")
        self.batch_tokens = instrument(meter, "batchinfer.batch.tokens")
        self.tokens = instrument(meter, "batchinfer.server.tokens")
        self.inflight = instrument(meter, "batchinfer.inflight")
        instrument(meter, "batchinfer.server.busy", [self._observe_busy])

    def _observe_busy(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.busy.take(), {MODEL: self.model})

    @contextmanager
    def batch_span(self, batch: Sequence[InferTask], model: str, server: str) -> Iterator[None]:
        """A `batch` span linked to each task's span, with a `model.forward` child span."""
        attributes: dict[str, str | int] = {
            "batchinfer.batch.size": len(batch),
            "gen_ai.request.model": model,
            "gen_ai.operation.name": operation_name(batch[0].kind),
            "server.address": server,
        }
        links = [
            trace.Link(context, {"batchinfer.task.id": task.task_id})
            for task in batch[:MAX_LINKS]
            if task.traceparent and (context := parse_traceparent(task.traceparent)) is not None
        ]
        # Links given at the start: add_link takes the span's lock once per link.
        with self.tracer.start_as_current_span("batch", attributes=attributes, links=links):
            # Inside the span, so the record carries the batch's trace and span ids.
            log.debug("batch of %d %s tasks for %s", len(batch), batch[0].kind, model)
            yield

    @contextmanager
    def forward_span(self) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span("model.forward") as span:
            yield span

    def batch_done(
        self,
        batch: Sequence[InferTask],
        outcomes: Sequence[Outcome],
        span: trace.Span,
        model: str,
        compute_s: float,
    ) -> None:
        self.busy.add(compute_s)
        input_tokens = sum(o.prompt_tokens for o in outcomes)
        output_tokens = sum(o.completion_tokens for o in outcomes)
        if span.is_recording():
            span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
            if capture_content():
                span.set_attribute("gen_ai.prompt", [t.prompt for t in batch])
                span.set_attribute("gen_ai.completion", [o.text or "" for o in outcomes])
        batch_attrs = {**COMPONENT, MODEL: model}
        self.batch_size.record(len(batch), batch_attrs)
        self.batch_tokens.record(input_tokens, batch_attrs)
        self.tokens.add(input_tokens, {MODEL: model, "gen_ai.token.type": "input"})
        self.tokens.add(output_tokens, {MODEL: model, "gen_ai.token.type": "output"})

    def tasks_queued(self, count: int) -> None:
        self.inflight.add(count, COMPONENT)

    def tasks_finished(self, outcomes: Sequence[Outcome], queued: bool) -> None:
        """Per-task metrics once results are ready; `queued` when they were counted in-flight.

        A non-streamed batch yields its first token when it ends, so time to first token
        is the task's whole time in the server: queue plus compute."""
        if queued:
            self.inflight.add(-len(outcomes), COMPONENT)
        for o in outcomes:
            attrs = {MODEL: o.task.model, OPERATION_NAME: operation_name(o.task.kind)}
            seconds = (o.queue_ms + o.compute_ms) / 1000.0
            if o.error is not None:
                attrs["error.type"] = o.error.code
            elif queued:
                self.ttft.record(seconds, attrs)
            self.duration.record(seconds, attrs)


_instance: ServerTelemetry | None = None


def server_telemetry() -> ServerTelemetry:
    global _instance
    if _instance is None:
        _instance = ServerTelemetry()
    return _instance
