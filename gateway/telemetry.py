"""The gateway's spans and metrics, written against the OpenTelemetry API only
(collector.setup_telemetry installs the SDK; without it all of this is no-op)."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from batchinfer.v1 import task_pb2

    from gateway.engine import JobEngine
    from gateway.jobs import JobRun, TaskEntry
    from gateway.store import ResultRecord

tracer = trace.get_tracer("batchinfer.gateway")
meter = metrics.get_meter("batchinfer.gateway")
_propagator = TraceContextTextMapPropagator()
_OPERATIONS = {"chat": "chat", "embed": "embeddings"}


def _traces_exported() -> bool:
    # Task spans cost a few microseconds each; without a trace exporter nobody sees them.
    return (
        bool(
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
    )


TASK_SPANS = _traces_exported()


def capture_content() -> bool:
    return os.environ.get("BATCHINFER_CAPTURE_CONTENT", "").lower() in {"1", "true", "yes"}


def start_job_span(job: JobRun) -> None:
    """Opens the job's trace; task spans sit under it."""
    span = tracer.start_span(
        "job",
        kind=SpanKind.SERVER,
        attributes={
            "batchinfer.job.id": job.job_id,
            "batchinfer.job.name": job.record.name,
            "batchinfer.tenant": job.record.tenant,
            "gen_ai.request.model": job.record.model,
            "gen_ai.operation.name": _OPERATIONS.get(job.record.task_type, "text_completion"),
        },
    )
    job.trace_context = (span, trace.set_span_in_context(span))


def end_job_span(job: JobRun) -> None:
    if job.trace_context is None:
        return
    span, _ = job.trace_context
    counters = job.counters
    span.set_attribute("batchinfer.tasks.succeeded", counters.succeeded)
    span.set_attribute("batchinfer.tasks.failed", counters.failed)
    span.set_attribute("gen_ai.usage.input_tokens", counters.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", counters.completion_tokens)
    span.end()
    job.trace_context = None


def start_task_span(job: JobRun, entry: TaskEntry, task: task_pb2.Task, server: str) -> Any:
    """A task span under the job's span; its context travels inside the task."""
    if not TASK_SPANS:
        return None
    parent = job.trace_context[1] if job.trace_context is not None else None
    span = tracer.start_span(
        "task",
        context=parent,
        kind=SpanKind.CLIENT,
        attributes={
            "batchinfer.job.id": job.job_id,
            "batchinfer.task.id": entry.task_id,
            "batchinfer.task.attempt": entry.attempts,
            "gen_ai.request.model": task.model,
            "server.address": server,
        },
    )
    if span.is_recording():
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        task.trace_context.traceparent = carrier.get("traceparent", "")
        task.trace_context.tracestate = carrier.get("tracestate", "")
        if capture_content():
            span.set_attribute("batchinfer.prompt", task.prompt)
        return span
    return None


def end_task_span(entry: TaskEntry, result: task_pb2.TaskResult, retried: bool) -> None:
    span = entry.span
    if span is None:
        return
    entry.span = None
    span.set_attribute("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", result.usage.completion_tokens)
    if result.WhichOneof("output") == "error":
        span.set_status(Status(StatusCode.ERROR, result.error.code))
        span.set_attribute("error.type", result.error.code)
        span.set_attribute("batchinfer.task.retried", retried)
    elif capture_content() and result.WhichOneof("output") == "text":
        span.set_attribute("batchinfer.output", result.text.text)
    span.end()


def dispatch_span(job_id: str, server: str, size: int, links: list[Any]) -> Any:
    return tracer.start_as_current_span(
        "dispatch",
        links=[Link(s.get_span_context()) for s in links if s is not None],
        attributes={
            "batchinfer.job.id": job_id,
            "server.address": server,
            "batchinfer.batch.size": size,
        },
    )


def current_context() -> Any:
    return context.get_current()


class GatewayMetrics:
    """The gateway's instruments (names from collector/metrics.py's catalogue)."""

    def __init__(self, engine: JobEngine) -> None:
        self._engine = engine
        self.tasks = meter.create_counter(
            "batchinfer.tasks",
            unit="{task}",
            description="Tasks that ended or were retried, by status",
        )
        self.retries = meter.create_counter(
            "batchinfer.task.retries",
            unit="{task}",
            description="Attempts retried after a retryable error",
        )
        self.duplicates = meter.create_counter(
            "batchinfer.results.duplicates",
            unit="{result}",
            description="Late duplicate results dropped",
        )
        self.batch_size = meter.create_histogram(
            "batchinfer.batch.size", unit="{task}", description="Tasks per batch"
        )
        self.batch_tokens = meter.create_histogram(
            "batchinfer.batch.tokens", unit="{token}", description="Estimated tokens per batch"
        )
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens per task"
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Time from dispatch to result"
        )
        meter.create_observable_gauge(
            "batchinfer.queue.depth",
            [self._queue_depth],
            unit="{task}",
            description="Unfinished tasks by tenant and priority",
        )
        meter.create_observable_gauge(
            "batchinfer.inflight",
            [self._inflight],
            unit="{task}",
            description="Tasks sent and not answered",
        )

    def batch_sent(self, size: int, tokens: int) -> None:
        attributes = {"batchinfer.component": "gateway"}
        self.batch_size.record(size, attributes)
        self.batch_tokens.record(tokens, attributes)

    def tasks_ended(self, job: JobRun, state: Any, count: int) -> None:
        if count:
            self.tasks.add(
                count,
                {
                    "batchinfer.task.status": state.name.lower(),
                    "batchinfer.tenant": job.record.tenant,
                },
            )

    def retried(self, job: JobRun, count: int) -> None:
        self.retries.add(count, {"batchinfer.tenant": job.record.tenant})
        self.tasks.add(
            count, {"batchinfer.task.status": "retried", "batchinfer.tenant": job.record.tenant}
        )

    def duplicate(self) -> None:
        self.duplicates.add(1)

    def results_recorded(self, job: JobRun, recorded: list[ResultRecord], items: list[Any]) -> None:
        by_state = Counter(r.state.name.lower() for r in recorded)
        for status, count in by_state.items():
            self.tasks.add(
                count, {"batchinfer.task.status": status, "batchinfer.tenant": job.record.tenant}
            )
        model = job.record.model
        for record in recorded:
            self.token_usage.record(
                record.prompt_tokens, {"gen_ai.token.type": "input", "gen_ai.request.model": model}
            )
            self.token_usage.record(
                record.completion_tokens,
                {"gen_ai.token.type": "output", "gen_ai.request.model": model},
            )
        now = self._engine.clock()
        for entry, _ in items:
            if entry.sent_at:
                self.duration.record(now - entry.sent_at, {"gen_ai.request.model": model})

    def _queue_depth(self, _options: CallbackOptions) -> list[Observation]:
        depth: Counter[tuple[str, int]] = Counter()
        for job in self._engine.jobs.values():
            counters = job.counters
            unfinished = max(counters.total - counters.done - counters.running, 0)
            depth[(job.record.tenant, job.record.priority)] += unfinished
        return [
            Observation(n, {"batchinfer.tenant": tenant, "batchinfer.priority": priority})
            for (tenant, priority), n in depth.items()
        ]

    def _inflight(self, _options: CallbackOptions) -> list[Observation]:
        total = sum(len(link.inflight.tokens) for link in self._engine.pool.links.values())
        return [Observation(total, {"batchinfer.component": "gateway"})]
