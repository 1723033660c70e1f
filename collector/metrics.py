"""The metric catalogue: every metric batchinfer emits, as data.

Gateway and server code create their instruments with the OpenTelemetry API using
these names; tests check that dashboards query only metrics listed here, and
docs/observability.md is generated from the table (`python -m collector.metrics`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View


class Kind(enum.StrEnum):
    COUNTER = "counter"
    UP_DOWN_COUNTER = "up_down_counter"
    HISTOGRAM = "histogram"
    OBSERVABLE_GAUGE = "observable_gauge"


class Emitter(enum.StrEnum):
    GATEWAY = "gateway"
    SERVER = "server"
    BOTH = "both"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what it is called, how it is measured and who emits it."""

    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...]
    emitter: Emitter
    buckets: tuple[float, ...] | None = None

    @property
    def prometheus_name(self) -> str:
        return prometheus_name(self.name, self.kind, self.unit)


# Bucket boundaries (the SDK's defaults stop at 10000 and start at 0, useless for tokens).
DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
TOKEN_BUCKETS = tuple(float(2**i) for i in range(15))  # 1, 2, 4, ... 16384
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(10))  # 1, 2, 4, ... 512
BATCH_TOKEN_BUCKETS = tuple(float(2**i) for i in range(19))  # 1, 2, ... 262144

COMPONENT = "batchinfer.component"  # gateway | server
TENANT = "batchinfer.tenant"
PRIORITY = "batchinfer.priority"
TASK_STATUS = "batchinfer.task.status"  # succeeded | failed | cancelled | retried
JOB_STATE = "batchinfer.job.state"
MODEL = "gen_ai.request.model"
OPERATION = "gen_ai.operation.name"
TOKEN_TYPE = "gen_ai.token.type"  # input | output
ERROR_TYPE = "error.type"

_G, _S, _B = Emitter.GATEWAY, Emitter.SERVER, Emitter.BOTH

CATALOGUE: tuple[MetricSpec, ...] = (
    # both processes
    MetricSpec("batchinfer.batch.size", Kind.HISTOGRAM, "{task}", "Tasks per batch (gateway: per TaskBatch sent; server: per model batch).", (COMPONENT, MODEL), _B, BATCH_SIZE_BUCKETS),
    MetricSpec("batchinfer.batch.tokens", Kind.HISTOGRAM, "{token}", "Prompt tokens per batch.", (COMPONENT, MODEL), _B, BATCH_TOKEN_BUCKETS),
    MetricSpec("batchinfer.inflight", Kind.UP_DOWN_COUNTER, "{task}", "Tasks sent to (gateway) or held by (server) an inference server and not yet answered.", (COMPONENT,), _B),
    # inference server
    MetricSpec("gen_ai.server.request.duration", Kind.HISTOGRAM, "s", "Time from a task entering the server to its result.", (MODEL, OPERATION, ERROR_TYPE), _S, DURATION_BUCKETS_S),
    MetricSpec("gen_ai.server.time_to_first_token", Kind.HISTOGRAM, "s", "Time from a task entering the server to its first output token.", (MODEL, OPERATION), _S, DURATION_BUCKETS_S),
    MetricSpec("batchinfer.server.tokens", Kind.COUNTER, "{token}", "Tokens processed by the model.", (MODEL, TOKEN_TYPE), _S),
    # Unit left empty on purpose: "1" becomes a `_ratio` suffix through the Collector but not here.
    MetricSpec("batchinfer.server.busy", Kind.OBSERVABLE_GAUGE, "", "Fraction (0..1) of wall time the model spent running batches since the last reading.", (MODEL,), _S),
    # gateway
    MetricSpec("batchinfer.tasks", Kind.COUNTER, "{task}", "Task outcomes.", (TASK_STATUS, TENANT), _G),
    MetricSpec("batchinfer.queue.depth", Kind.OBSERVABLE_GAUGE, "{task}", "Tasks waiting to be dispatched.", (TENANT, PRIORITY), _G),
    MetricSpec("batchinfer.task.retries", Kind.COUNTER, "{retry}", "Task attempts scheduled again after a retryable error.", (TENANT, ERROR_TYPE), _G),
    MetricSpec("gen_ai.client.token.usage", Kind.HISTOGRAM, "{token}", "Tokens per task, as reported in its result.", (TOKEN_TYPE, MODEL, OPERATION), _G, TOKEN_BUCKETS),
    MetricSpec("gen_ai.client.operation.duration", Kind.HISTOGRAM, "s", "Time from dispatching a task to receiving its result.", (MODEL, OPERATION, ERROR_TYPE), _G, DURATION_BUCKETS_S),
    MetricSpec("batchinfer.results.duplicates", Kind.COUNTER, "{result}", "Late duplicate results dropped by compare-and-set.", (), _G),
    MetricSpec("batchinfer.jobs", Kind.UP_DOWN_COUNTER, "{job}", "Jobs by state.", (JOB_STATE, TENANT), _G),
)  # fmt: skip

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}

# Mirrors opentelemetry-exporter-prometheus (checked in tests against the real exporter).
_UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}
_ANNOTATION = re.compile(r"\{.*\}")
_INVALID = re.compile(r"[^a-zA-Z0-9:]+")


def prometheus_name(name: str, kind: Kind, unit: str) -> str:
    """The series name Prometheus shows for an OTel metric (histograms: add _bucket etc.)."""
    base = _INVALID.sub("_", name)
    suffix = _UNIT_SUFFIXES.get(_ANNOTATION.sub("", unit), _ANNOTATION.sub("", unit))
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    if kind is Kind.COUNTER:
        base = f"{base}_total"
    return base


def prometheus_series_names() -> frozenset[str]:
    """Every series name a PromQL query may use (histograms: only _bucket, _count, _sum)."""
    names: set[str] = set()
    for spec in CATALOGUE:
        base = spec.prometheus_name
        if spec.kind is Kind.HISTOGRAM:
            names.update({f"{base}_bucket", f"{base}_count", f"{base}_sum"})
        else:
            names.add(base)
    return frozenset(names)


def views() -> list[View]:
    """Explicit bucket boundaries for the histograms of the catalogue."""
    return [
        View(
            instrument_name=spec.name,
            aggregation=ExplicitBucketHistogramAggregation(boundaries=spec.buckets),
        )
        for spec in CATALOGUE
        if spec.buckets is not None
    ]


def markdown_table() -> str:
    """The catalogue as a Markdown table, for docs/observability.md."""
    rows = [
        "| metric (OTLP) | Prometheus | kind | unit | emitted by | attributes | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in CATALOGUE:
        attrs = ", ".join(f"`{a}`" for a in s.attributes) or "—"
        rows.append(
            f"| `{s.name}` | `{s.prometheus_name}` | {s.kind.value} | `{s.unit or '-'}` "
            f"| {s.emitter.value} | {attrs} | {s.description} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())


def instrument(meter: Any, name: str, callbacks: Sequence[Any] = ()) -> Any:
    """Creates the catalogue's instrument `name` on `meter`, with its unit and description,
    so a process cannot emit a metric the catalogue (and so the dashboards) do not know.
    With `callbacks`, counters and up-down counters become their observable variants."""
    spec = BY_NAME[name]
    args = {"name": spec.name, "unit": spec.unit, "description": spec.description}
    if spec.kind == Kind.HISTOGRAM:
        return meter.create_histogram(**args)
    if spec.kind == Kind.OBSERVABLE_GAUGE:
        return meter.create_observable_gauge(callbacks=list(callbacks), **args)
    if spec.kind == Kind.COUNTER:
        if callbacks:
            return meter.create_observable_counter(callbacks=list(callbacks), **args)
        return meter.create_counter(**args)
    if callbacks:
        return meter.create_observable_up_down_counter(callbacks=list(callbacks), **args)
    return meter.create_up_down_counter(**args)
