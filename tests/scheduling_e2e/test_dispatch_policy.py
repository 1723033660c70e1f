"""Why jobs wait, priority order, rate limits and hash sharding, on echo servers."""

from __future__ import annotations

from collections import defaultdict

from batchinfer.v1 import gateway_pb2

from tests.gateway.fake_server import Script
from tests.scheduling_e2e.conftest import job_text


async def test_wait_reasons_rate_limited_and_lower_priority(echo_fleet):
    await echo_fleet.start(delay_ms=20, window=2, batch=2)
    limited = await echo_fleet.submit(
        job_text("slow", 30, schedule=", rate_limit: {requests_per_s: 2, burst: 1}")
    )
    await echo_fleet.wait_for(limited.job_id, lambda j: j.wait_reason == "rate limited", "rate")

    urgent = await echo_fleet.submit(job_text("urgent", 120, priority=0))
    background = await echo_fleet.submit(job_text("background", 20, priority=9))
    await echo_fleet.wait_for(
        background.job_id, lambda j: j.wait_reason == "lower priority", "lower priority"
    )
    hurry = await echo_fleet.get(urgent.job_id)
    assert hurry.wait_reason != "lower priority"
    await echo_fleet.stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=limited.job_id))


async def test_wait_reason_no_server_for_the_model(echo_fleet):
    await echo_fleet.start(servers=0, fakes=(Script(models=("other-model",)),))
    job = await echo_fleet.submit(job_text("lost", 5, model="echo-model"))
    seen = await echo_fleet.wait_for(
        job.job_id, lambda j: j.wait_reason.startswith("no server for model"), "no server"
    )
    assert "echo-model" in seen.wait_reason
    assert seen.counts.succeeded == 0


async def test_high_priority_submitted_later_finishes_first_on_a_saturated_fleet(echo_fleet):
    await echo_fleet.start(servers=2, delay_ms=10, window=2, batch=2)
    low = await echo_fleet.submit(job_text("low", 80, priority=9))
    await echo_fleet.wait_for(low.job_id, lambda j: j.counts.succeeded > 0, "a first result")
    high = await echo_fleet.submit(job_text("high", 30, priority=0))

    lo = await echo_fleet.wait_done(low.job_id)
    hi = await echo_fleet.wait_done(high.job_id)
    assert lo.counts.succeeded == 80 and hi.counts.succeeded == 30
    assert hi.finished_at.ToNanoseconds() < lo.finished_at.ToNanoseconds()


async def test_rate_limited_job_is_held_to_its_rate(echo_fleet):
    # Fast servers: only the job's bucket (20 tasks/s, burst 1) holds it back.
    await echo_fleet.start(servers=1, delay_ms=0, window=64, batch=64)
    n, rate = 41, 20.0
    job = await echo_fleet.submit(
        job_text("rl", n, schedule=f", rate_limit: {{requests_per_s: {rate:g}, burst: 1}}")
    )
    lines = await echo_fleet.results(job.job_id)
    assert len(lines) == n and all(line["status"] == "succeeded" for line in lines)
    stored = await echo_fleet.gateway.store.results_after(job.job_id, 0, 1000)
    times = sorted(r.finished_at for r in stored)
    # A bucket of burst 1 lets n tasks through in no less than (n - 1) / rate seconds;
    # only a lower bound is asserted (a slow machine makes it longer, never shorter).
    assert times[-1] - times[0] >= 0.8 * (n - 1) / rate


async def test_hash_sharding_keeps_each_key_on_one_server(echo_fleet):
    await echo_fleet.start(servers=3, delay_ms=2, window=4, batch=4)
    text = job_text("sh", 90, extra="shard: {strategy: hash, key: 'k{{ n % 7 }}'}\n")
    job = await echo_fleet.submit(text)
    await echo_fleet.wait_done(job.job_id)

    servers_of: dict[str, set[str]] = defaultdict(set)
    request = gateway_pb2.StreamResultsRequest(job_id=job.job_id, no_follow=True)
    async for page in echo_fleet.stub.StreamResults(request):
        for item in page.results:
            assert item.state == gateway_pb2.TASK_STATE_SUCCEEDED and item.result.server
            key = f"k{int(item.task_id.split('-')[1]) % 7}"
            servers_of[key].add(item.result.server)
    assert len(servers_of) == 7
    assert all(len(s) == 1 for s in servers_of.values()), dict(servers_of)
    used = set().union(*servers_of.values())
    assert len(used) >= 2  # the keys are spread, not all on one server
