"""The gateway's gauges report series from the first export, and a job that ended
between two exports leaves its series at 0 rather than vanishing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway.jobs import JobCounters
from gateway.store import JobState
from gateway.telemetry import GatewayMetrics


def points(reader: InMemoryMetricReader, name: str) -> dict[tuple[Any, ...], int]:
    data = reader.get_metrics_data()
    found: dict[tuple[Any, ...], int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        found[tuple(sorted(point.attributes.items()))] = point.value
    return found


def test_series_from_the_first_export_and_zero_after_a_short_job() -> None:
    reader = InMemoryMetricReader()
    jobs: list[Any] = []
    metrics = GatewayMetrics(
        jobs=lambda: jobs,
        inflight=lambda: 0,
        clock=lambda: 0.0,
        tenants=("default", "acme"),
        meter=MeterProvider(metric_readers=[reader]).get_meter("test"),
    )
    # Before any job: every known tenant's job series, at 0, and the in-flight gauge.
    first = points(reader, "batchinfer.jobs")
    for tenant in ("default", "acme"):
        for state in ("queued", "running"):
            key = (("batchinfer.job.state", state), ("batchinfer.tenant", tenant))
            assert first[key] == 0
    assert points(reader, "batchinfer.inflight") == {(("batchinfer.component", "gateway"),): 0}

    # A short job that starts and ends between two exports.
    record = SimpleNamespace(tenant="acme", priority=5, state=JobState.RUNNING)
    job = SimpleNamespace(record=record, counters=JobCounters(total=3))
    jobs.append(job)
    metrics.job_seen(job)
    record.state = JobState.COMPLETED
    jobs.remove(job)
    metrics.job_ended(job)

    depth_key = (("batchinfer.priority", 5), ("batchinfer.tenant", "acme"))
    completed = (("batchinfer.job.state", "completed"), ("batchinfer.tenant", "acme"))
    for _ in range(2):  # its series are there, at 0, and stay
        assert points(reader, "batchinfer.queue.depth")[depth_key] == 0
        assert points(reader, "batchinfer.jobs")[completed] == 0


def test_a_running_jobs_queue_depth_is_what_is_neither_done_nor_in_flight() -> None:
    reader = InMemoryMetricReader()
    record = SimpleNamespace(tenant="default", priority=0, state=JobState.RUNNING)
    job = SimpleNamespace(record=record, counters=JobCounters(total=10, succeeded=3, running=2))
    metrics = GatewayMetrics(
        jobs=lambda: [job],
        inflight=lambda: 2,
        clock=lambda: 0.0,
        meter=MeterProvider(metric_readers=[reader]).get_meter("test"),
    )
    metrics.job_seen(job)
    depth = points(reader, "batchinfer.queue.depth")
    assert depth[(("batchinfer.priority", 0), ("batchinfer.tenant", "default"))] == 5
    running = (("batchinfer.job.state", "running"), ("batchinfer.tenant", "default"))
    assert points(reader, "batchinfer.jobs")[running] == 1
