"""The gateway against scripted inference servers on 127.0.0.1:0."""

from __future__ import annotations

import time
from collections import Counter

from batchinfer.v1 import gateway_pb2

from tests.gateway.conftest import job_yaml
from tests.gateway.fake_server import Script


async def test_every_task_once_in_the_results(fleet):
    await fleet.start([Script(window=8), Script(window=8)])
    job, lines = await fleet.run_job(job_yaml(200))
    ids = Counter(line["id"] for line in lines)
    assert set(ids) == {f"t{i}" for i in range(200)}
    assert max(ids.values()) == 1
    assert all(line["status"] == "succeeded" for line in lines)
    assert lines[0]["output"]["text"].startswith("ok:p")
    assert job.state == gateway_pb2.JOB_STATE_COMPLETED
    assert job.counts.succeeded == 200 and job.counts.total == 200
    # Both servers got work, and neither got more than its credits at once.
    assert all(sum(f.received.values()) > 0 for f in fleet.fakes)
    assert all(f.max_outstanding <= 8 for f in fleet.fakes)


async def test_retryable_errors_are_retried_and_fatal_ones_fail_alone(fleet):
    script = Script(window=16, failures={"p3": ("UNAVAILABLE", 2), "p5": ("INVALID_ARGUMENT", 1)})
    await fleet.start([script])
    job, lines = await fleet.run_job(job_yaml(10))
    by_id = {line["id"]: line for line in lines}
    assert by_id["t3"]["status"] == "succeeded"
    assert by_id["t3"]["attempts"] == 3
    assert by_id["t5"]["status"] == "failed"
    assert by_id["t5"]["error"]["code"] == "INVALID_ARGUMENT"
    assert by_id["t5"]["attempts"] == 1
    assert job.counts.failed == 1 and job.counts.succeeded == 9
    assert job.state == gateway_pb2.JOB_STATE_COMPLETED


async def test_retries_stop_at_max_attempts(fleet):
    await fleet.start([Script(window=4, failures={"p1": ("UNAVAILABLE", 99)})])
    _, lines = await fleet.run_job(job_yaml(3))
    by_id = {line["id"]: line for line in lines}
    assert by_id["t1"]["status"] == "failed"
    assert by_id["t1"]["attempts"] == 3
    assert fleet.fakes[0].received["p1"] == 3


async def test_least_loaded_prefers_the_idle_server(fleet):
    # One server is slow: its credits stay used, so most tasks go to the fast one.
    await fleet.start([Script(window=4, delay_s=0.2), Script(window=4)])
    _, lines = await fleet.run_job(job_yaml(80))
    assert len(lines) == 80
    slow, fast = (sum(f.received.values()) for f in fleet.fakes)
    assert fast > slow


async def test_a_task_that_keeps_killing_its_server_fails_alone(fleet):
    # One task in flight at a time: a crash takes down only the task that caused it.
    await fleet.start(
        [Script(window=1, crash_on=frozenset({"p2"}))], max_lost_leases=2, eject_s=0.1
    )
    text = job_yaml(5).replace("max_attempts: 3", "max_attempts: 1")
    job, lines = await fleet.run_job(text)
    by_id = {line["id"]: line for line in lines}
    assert by_id["t2"]["status"] == "failed"
    assert by_id["t2"]["error"]["code"] == "LEASE_LOST"
    assert fleet.fakes[0].received["p2"] == 3  # max_attempts + max_lost_leases
    # The message and the field agree on what was spent.
    assert by_id["t2"]["attempts"] == 3
    assert by_id["t2"]["error"]["message"].startswith("gave up after 3 attempts")
    assert all(by_id[f"t{i}"]["status"] == "succeeded" for i in (0, 1, 3, 4))
    assert job.state == gateway_pb2.JOB_STATE_COMPLETED


async def test_nothing_is_sent_after_the_deadline(fleet):
    # About 40 tasks/s: most of 200 tasks are still queued when the 1 s deadline passes.
    await fleet.start([Script(window=2, delay_s=0.05)])
    started = time.time()
    _, lines = await fleet.run_job(job_yaml(200, extra="schedule: {deadline: 1s}\n"))
    statuses = Counter(line["status"] for line in lines)
    assert statuses["failed"] > 100 and statuses["succeeded"] > 0
    assert {line["error"]["code"] for line in lines if line["status"] == "failed"} == {
        "DEADLINE_EXCEEDED"
    }
    # Housekeeping ends the job within ~2 s, but dispatch stops at the deadline itself
    # (0.5 s of slack for a loaded machine; without the check ~60 tasks arrive later).
    late = [p for p, at in fleet.fakes[0].received_at.items() if at > started + 1.5]
    assert late == []
