"""Deadlines (relative and absolute) and per-tenant admission, on echo servers."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from batchinfer.v1 import gateway_pb2
from google.rpc import error_details_pb2

from tests.scheduling_e2e.conftest import job_text
from tests.status_details import status_detail


def _in_one_second() -> str:
    return (datetime.now(UTC) + timedelta(seconds=1)).isoformat()


@pytest.mark.parametrize("deadline", ["1s", "timestamp"])
async def test_undone_tasks_fail_at_the_deadline_and_the_job_completes(echo_fleet, deadline):
    # About 40 tasks/s: 200 tasks cannot finish within a second.
    await echo_fleet.start(delay_ms=25, window=2, batch=2, lease_s=3.0)
    when = _in_one_second() if deadline == "timestamp" else deadline
    job = await echo_fleet.submit(job_text("dl", 200, schedule=f", deadline: '{when}'"))
    lines = await echo_fleet.results(job.job_id)
    final = await echo_fleet.wait_done(job.job_id)

    assert final.state == gateway_pb2.JOB_STATE_COMPLETED
    ids = Counter(line["id"] for line in lines)
    assert len(ids) == 200 and max(ids.values()) == 1
    statuses = Counter(line["status"] for line in lines)
    assert statuses["succeeded"] > 0 and statuses["failed"] > 0
    assert statuses["succeeded"] + statuses["failed"] == 200
    codes = {line["error"]["code"] for line in lines if line["status"] == "failed"}
    assert codes == {"DEADLINE_EXCEEDED"}
    assert final.counts.succeeded == statuses["succeeded"]
    assert final.counts.failed == statuses["failed"]


async def test_tenant_over_its_queued_cap_is_refused_with_retry_info(echo_fleet):
    # A wide credit window: the first job's tasks leave the scheduler's queue at once,
    # but they are unfinished, and the cap counts them until they end.
    await echo_fleet.start(delay_ms=100, window=64, batch=64, tenant_max_queued=50)
    first = await echo_fleet.submit(job_text("big", 40, tenant="t1"))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo_fleet.submit(job_text("more", 20, tenant="t1"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "t1" in err.value.details()
    assert status_detail(err.value, error_details_pb2.RetryInfo).retry_delay.ToNanoseconds() > 0

    # Another tenant has its own cap; a job alone over the cap can never be admitted.
    other = await echo_fleet.submit(job_text("other", 20, tenant="t2"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await echo_fleet.submit(job_text("huge", 51, tenant="t3"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Once t1's job has finished, t1 may queue again.
    await echo_fleet.wait_done(first.job_id)
    again = await echo_fleet.submit(job_text("more", 20, tenant="t1"))
    done = await echo_fleet.wait_done(again.job_id)
    assert done.counts.succeeded == 20
    assert (await echo_fleet.wait_done(other.job_id)).counts.succeeded == 20
