"""The Prometheus side: /metrics of a real child process, and the name translation."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import CATALOGUE, Kind, prometheus_series_names, views
from tests.telemetry.conftest import CHILD, REPO, child_env


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_serves_batchinfer_metrics_on_a_free_port() -> None:
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "serve"],
        env=child_env(),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(child.stdout.readline())  # type: ignore[union-attr]
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        child.communicate("", timeout=60)
    assert child.returncode == 0
    families = {f.name: f for f in text_string_to_metric_families(text)}
    tasks = families["batchinfer_tasks"]  # the parser strips _total from the family name
    [sample] = [s for s in tasks.samples if s.name == "batchinfer_tasks_total"]
    assert sample.value == 3 and sample.labels["batchinfer_task_status"] == "succeeded"
    buckets = [
        s.labels["le"] for s in families["batchinfer_batch_size"].samples if "le" in s.labels
    ]
    assert buckets[:3] == ["1.0", "2.0", "4.0"] and "512.0" in buckets
    target = families["target_info"].samples[0].labels
    assert target["service_name"] == "batchinfer-inference"


def record_every_catalogue_metric(provider: MeterProvider) -> None:
    meter = provider.get_meter("catalogue")
    for spec in CATALOGUE:
        if spec.kind is Kind.COUNTER:
            meter.create_counter(spec.name, unit=spec.unit).add(1)
        elif spec.kind is Kind.UP_DOWN_COUNTER:
            meter.create_up_down_counter(spec.name, unit=spec.unit).add(1)
        elif spec.kind is Kind.HISTOGRAM:
            meter.create_histogram(spec.name, unit=spec.unit).record(1)
        else:
            meter.create_observable_gauge(
                spec.name, callbacks=[lambda _: [Observation(0.5)]], unit=spec.unit
            )


def test_catalogue_prometheus_names_match_the_real_exporter() -> None:
    registry = CollectorRegistry(auto_describe=True)
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], views=views()
    )
    record_every_catalogue_metric(provider)
    exported = sample_names(generate_latest(registry).decode()) - {"target_info"}
    provider.shutdown()
    assert exported == set(prometheus_series_names())
