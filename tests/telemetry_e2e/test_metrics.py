"""The catalogue's metrics arrive over OTLP from a real job with values that add up, and
each process serves them on its Prometheus /metrics endpoint."""

from __future__ import annotations

import pytest

from collector.metrics import CATALOGUE, Emitter
from tests.telemetry_e2e.harness import GATEWAY, MAX_BATCH, SERVER, TASKS, Capture

pytestmark = pytest.mark.slow

# Only emitted on retries and duplicates, which a clean run has none of.
EVENT_ONLY = {"batchinfer.task.retries", "batchinfer.results.duplicates"}


def output_tokens(traced: Capture) -> int:
    return sum(r["usage"]["completion_tokens"] for r in traced.results)


def single(points: dict) -> object:
    assert len(points) == 1, points
    return next(iter(points.values()))


@pytest.mark.parametrize(
    ("service", "emitters"),
    [(GATEWAY, {Emitter.GATEWAY, Emitter.BOTH}), (SERVER, {Emitter.SERVER, Emitter.BOTH})],
)
def test_every_catalogue_metric_of_a_process_arrives(
    traced: Capture, service: str, emitters: set[Emitter]
) -> None:
    expected = {spec.name for spec in CATALOGUE if spec.emitter in emitters} - EVENT_ONLY
    arrived = {name for name in expected if traced.metric(service, name)}
    assert arrived == expected


def test_task_outcomes_add_up_to_the_job(traced: Capture) -> None:
    points = traced.last_points(GATEWAY, "batchinfer.tasks")
    by_status = {dict(key)["batchinfer.task.status"]: p.as_int for key, p in points.items()}
    assert by_status == {"succeeded": TASKS}
    assert {dict(key)["batchinfer.tenant"] for key in points} == {"default"}


def test_batch_sizes_on_both_sides_count_every_task_once(traced: Capture) -> None:
    for service in (GATEWAY, SERVER):
        point = single(traced.last_points(service, "batchinfer.batch.size"))
        assert point.sum == TASKS, service
        assert 1 <= point.count <= TASKS
    server = single(traced.last_points(SERVER, "batchinfer.batch.size"))
    assert server.max <= MAX_BATCH


def test_server_request_duration_has_one_sample_per_task(traced: Capture) -> None:
    point = single(traced.last_points(SERVER, "gen_ai.server.request.duration"))
    assert point.count == TASKS
    # The echo backend sleeps 50 ms per output token: at least 4 tokens' worth per task.
    assert point.sum >= TASKS * 0.05 * 4 * 0.9
    assert point.max < 60


def test_client_token_usage_matches_the_results(traced: Capture) -> None:
    points = traced.last_points(GATEWAY, "gen_ai.client.token.usage")
    by_type = {dict(key)["gen_ai.token.type"]: p for key, p in points.items()}
    assert set(by_type) == {"input", "output"}
    assert by_type["output"].sum == output_tokens(traced) > 0
    assert by_type["input"].sum == sum(r["usage"]["prompt_tokens"] for r in traced.results)
    for key in points:
        assert dict(key)["gen_ai.request.model"] == "echo-model"
        assert dict(key)["gen_ai.operation.name"] == "text_completion"


def test_server_token_counter_matches_the_results(traced: Capture) -> None:
    points = traced.last_points(SERVER, "batchinfer.server.tokens")
    by_type = {dict(key)["gen_ai.token.type"]: p.as_int for key, p in points.items()}
    assert by_type["output"] == output_tokens(traced)


def test_queue_depth_rises_with_the_job_and_drains_to_zero(traced: Capture) -> None:
    values = [p.as_int for p in traced.all_points(GATEWAY, "batchinfer.queue.depth")]
    assert values and max(values) > 0
    assert all(0 <= v <= TASKS for v in values)
    last = traced.last_points(GATEWAY, "batchinfer.queue.depth")
    assert [p.as_int for p in last.values()] == [0]


def test_server_busy_is_a_fraction_and_was_busy(traced: Capture) -> None:
    values = [p.as_double for p in traced.all_points(SERVER, "batchinfer.server.busy")]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    assert max(values) > 0.0


@pytest.mark.parametrize(
    ("service", "series"),
    [
        (GATEWAY, ("batchinfer_tasks_total", "batchinfer_queue_depth", "gen_ai_client_token_usage_bucket")),
        (SERVER, ("batchinfer_batch_size_bucket", "gen_ai_server_request_duration_seconds_bucket", "batchinfer_server_busy")),
    ],
)  # fmt: skip
def test_each_process_serves_prometheus_metrics(
    traced: Capture, service: str, series: tuple[str, ...]
) -> None:
    text = traced.scraped[service]
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")
    }
    assert set(series) <= names
    if service == GATEWAY:
        succeeded = [
            line
            for line in text.splitlines()
            if line.startswith("batchinfer_tasks_total{") and 'status="succeeded"' in line
        ]
        assert [float(line.rsplit(" ", 1)[1]) for line in succeeded] == [TASKS]
