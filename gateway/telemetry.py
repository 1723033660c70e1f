"""The gateway's spans and metrics, written against the OpenTelemetry API only
(collector.setup_telemetry installs the SDK; without it all of this is no-op)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from batchinfer.v1 import task_pb2
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from collector import capture_content, settings
from collector.metrics import instrument

if TYPE_CHECKING:
    from gateway.jobs import JobRun, TaskEntry
    from gateway.store import ResultRecord

tracer = trace.get_tracer("batchinfer.gateway")
meter = metrics.get_meter("batchinfer.gateway")
_OPERATIONS = {"chat": "chat", "embed": "embeddings"}
log = logging.getLogger("gateway.telemetry")


def operation_name(task_type: str) -> str:
    """gen_ai.operation.name of a job's task type."""
    return _OPERATIONS.get(task_type, "text_completion")


def _traces_exported() -> bool:
    # Task spans cost tens of microseconds each; without a trace exporter nobody sees them.
    return bool(
        settings.signal_endpoint("traces")
        and not settings.sdk_disabled()
        and settings.task_spans_per_s() > 0
    )


TASK_SPANS = _traces_exported()


class SpanBudget:
    """Token bucket over task spans: `rate` a second, bursts of 10 s worth.

    A task span and its export cost ~65 us of gateway CPU, a quarter of what a task
    costs otherwise; the budget keeps that bounded at any throughput while a job of
    up to `10 * rate` tasks (1000 by default) is traced whole."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, rate * 10, clock
        self._tokens, self._last = self.burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


_budget = SpanBudget(settings.task_spans_per_s() if TASK_SPANS else 0.0)


def start_job_span(job: JobRun) -> None:
    """Opens the job's trace; task spans sit under it."""
    span = tracer.start_span(
        "job",
        kind=SpanKind.SERVER,
        attributes={
            "batchinfer.job.id": job.job_id,
            "batchinfer.job.name": job.record.name,
            "batchinfer.tenant": job.record.tenant,
            "enduser.id": job.record.principal,  # who submitted it ('' without authentication)
            "gen_ai.request.model": job.record.model,
            "gen_ai.operation.name": operation_name(job.record.task_type),
        },
    )
    job.trace_context = (span, trace.set_span_in_context(span))
    # Logged inside the job span: its trace_id is how a job's trace is found from its id.
    with trace.use_span(span, end_on_exit=False):
        log.info(
            "job %s started: %s, tenant %s, principal %s, model %s",
            job.job_id,
            job.record.name,
            job.record.tenant,
            job.record.principal or "(none)",
            job.record.model,
            extra={
                "batchinfer.job.id": job.job_id,
                "batchinfer.tenant": job.record.tenant,
                "enduser.id": job.record.principal,
            },
        )


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


def start_task_span(job: JobRun, entry: TaskEntry, server: str) -> Any:
    """A task span under the job's span, within the span budget; else None."""
    if not TASK_SPANS or not _budget.take():
        return None
    task = task_pb2.Task.FromString(entry.payload)  # a traced task only: its model and prompt
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
    if not span.is_recording():
        return None
    if capture_content():
        span.set_attribute("batchinfer.prompt", task.prompt)
    return span


def trace_header(span: Any) -> tuple[str, str]:
    """The W3C traceparent and tracestate a task carries to its server ('' untraced),
    written directly: the propagator API costs ~10 us a task."""
    if span is None:
        return "", ""
    ctx = span.get_span_context()
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    return traceparent, ctx.trace_state.to_header() if ctx.trace_state else ""


def end_task_span(entry: TaskEntry, result: task_pb2.TaskResult, retried: bool) -> None:
    span = entry.span
    if span is None:
        return
    entry.span = None
    # One set_attributes call: each call takes the span's lock.
    attributes: dict[str, str | int | bool] = {
        "gen_ai.usage.input_tokens": result.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": result.usage.completion_tokens,
    }
    output = result.WhichOneof("output")
    if output == "error":
        span.set_status(Status(StatusCode.ERROR, result.error.code))
        attributes["error.type"] = result.error.code
        attributes["batchinfer.task.retried"] = retried
    elif output == "text" and capture_content():
        attributes["batchinfer.output"] = result.text.text
    span.set_attributes(attributes)
    span.end()


def dispatch_span(job: JobRun, entries: list[TaskEntry], server: str) -> None:
    """A span per TaskBatch sent with traced tasks, under the job span, linked to them."""
    if not TASK_SPANS:
        return
    links = [Link(e.span.get_span_context()) for e in entries if e.span is not None]
    if not links:
        return
    parent = job.trace_context[1] if job.trace_context is not None else None
    tracer.start_span(
        "dispatch",
        context=parent,
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            "batchinfer.job.id": job.job_id,
            "batchinfer.batch.size": len(entries),
            "gen_ai.request.model": job.record.model,
            "server.address": server,
        },
    ).end()


class GatewayMetrics:
    """The gateway's instruments (names from collector/metrics.py's catalogue)."""

    def __init__(
        self,
        jobs: Callable[[], Iterable[JobRun]],
        inflight: Callable[[], int],
        clock: Callable[[], float],
        tenants: Iterable[str] = ("default",),
        meter: metrics.Meter = meter,  # tests pass one of their own MeterProvider
    ) -> None:
        self._jobs_now, self._inflight_now, self._clock = jobs, inflight, clock
        # Gauge series seen once keep being reported (as 0) so they fall instead of going
        # stale; the known tenants' series exist from the first export, so a dashboard
        # shows 0 rather than "no data", and a job that ran between exports leaves its 0.
        self._depth_keys: set[tuple[str, int]] = set()
        self._job_keys: set[tuple[str, str]] = set()
        for tenant in tenants:
            self._job_keys.update({("queued", tenant), ("running", tenant)})
        self.tasks = instrument(meter, "batchinfer.tasks")
        self.retries = instrument(meter, "batchinfer.task.retries")
        self.duplicates = instrument(meter, "batchinfer.results.duplicates")
        self.batch_size = instrument(meter, "batchinfer.batch.size")
        self.batch_tokens = instrument(meter, "batchinfer.batch.tokens")
        self.token_usage = instrument(meter, "gen_ai.client.token.usage")
        self.duration = instrument(meter, "gen_ai.client.operation.duration")
        instrument(meter, "batchinfer.queue.depth", [self._queue_depth])
        instrument(meter, "batchinfer.jobs", [self._jobs])
        instrument(meter, "batchinfer.inflight", [self._inflight])

    def job_seen(self, job: JobRun) -> None:
        """A job the engine drives: its gauge series are reported from now on."""
        self._depth_keys.add((job.record.tenant, job.record.priority))
        self._job_keys.add((job.record.state.name.lower(), job.record.tenant))

    def job_ended(self, job: JobRun) -> None:
        self._job_keys.add((job.record.state.name.lower(), job.record.tenant))

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
        model = {
            "gen_ai.request.model": job.record.model,
            "gen_ai.operation.name": operation_name(job.record.task_type),
        }
        inputs, outputs = (
            {**model, "gen_ai.token.type": "input"},
            {**model, "gen_ai.token.type": "output"},
        )
        for record in recorded:
            self.token_usage.record(record.prompt_tokens, inputs)
            self.token_usage.record(record.completion_tokens, outputs)
        now = self._clock()
        for entry, _ in items:
            if entry.sent_at:
                self.duration.record(now - entry.sent_at, model)

    def _queue_depth(self, _options: CallbackOptions) -> list[Observation]:
        depth: Counter[tuple[str, int]] = Counter(dict.fromkeys(self._depth_keys, 0))
        for job in self._jobs_now():
            counters = job.counters
            unfinished = max(counters.total - counters.done - counters.running, 0)
            depth[(job.record.tenant, job.record.priority)] += unfinished
        self._depth_keys.update(depth)
        return [
            Observation(n, {"batchinfer.tenant": tenant, "batchinfer.priority": priority})
            for (tenant, priority), n in depth.items()
        ]

    def _jobs(self, _options: CallbackOptions) -> list[Observation]:
        count: Counter[tuple[str, str]] = Counter(dict.fromkeys(self._job_keys, 0))
        for job in self._jobs_now():
            count[(job.record.state.name.lower(), job.record.tenant)] += 1
        self._job_keys.update(count)
        return [
            Observation(n, {"batchinfer.job.state": state, "batchinfer.tenant": tenant})
            for (state, tenant), n in count.items()
        ]

    def _inflight(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._inflight_now(), {"batchinfer.component": "gateway"})]
