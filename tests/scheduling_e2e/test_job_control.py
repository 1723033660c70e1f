"""Pause, resume, cancel and priority changes of running jobs, on echo servers."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter

from batchinfer.v1 import gateway_pb2

from tests.scheduling_e2e.conftest import job_text

QUIET_S = 0.4  # long enough for dozens of tasks on the fleet below, had any been sent


def _done(job: gateway_pb2.Job) -> int:
    return job.counts.succeeded + job.counts.failed + job.counts.cancelled


async def test_pause_stops_dispatch_and_resume_finishes_every_task_once(echo_fleet):
    await echo_fleet.start(delay_ms=10, window=4, batch=4)
    job = await echo_fleet.submit(job_text("pr", 150))
    await echo_fleet.wait_for(job.job_id, lambda j: j.counts.succeeded >= 8, "8 results")

    paused = await echo_fleet.stub.PauseJob(gateway_pb2.PauseJobRequest(job_id=job.job_id))
    assert paused.job.state == gateway_pb2.JOB_STATE_PAUSED
    # What was in flight finishes; then nothing more is sent.
    settled = await echo_fleet.wait_for(job.job_id, lambda j: j.counts.running == 0, "idle")
    await asyncio.sleep(QUIET_S)
    still = await echo_fleet.get(job.job_id)
    assert still.state == gateway_pb2.JOB_STATE_PAUSED
    assert still.wait_reason == "paused"
    assert still.counts.succeeded == settled.counts.succeeded < 150

    resumed = await echo_fleet.stub.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=job.job_id))
    assert resumed.job.state == gateway_pb2.JOB_STATE_RUNNING
    lines = await echo_fleet.results(job.job_id)
    final = await echo_fleet.wait_done(job.job_id)
    assert final.state == gateway_pb2.JOB_STATE_COMPLETED
    assert final.counts.succeeded == 150
    ids = Counter(line["id"] for line in lines)
    assert set(ids) == {f"pr-{n}" for n in range(150)} and max(ids.values()) == 1


async def test_cancel_ends_queued_and_inflight_tasks_and_keeps_results(echo_fleet):
    await echo_fleet.start(delay_ms=20, window=4, batch=4)
    job = await echo_fleet.submit(job_text("cx", 200))
    await echo_fleet.wait_for(
        job.job_id, lambda j: j.counts.succeeded >= 8 and j.counts.running > 0, "8 results"
    )

    cancelled = await echo_fleet.stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id))
    at_cancel = cancelled.job
    assert at_cancel.state == gateway_pb2.JOB_STATE_CANCELLED
    assert at_cancel.counts.cancelled > 0
    assert _done(at_cancel) == 200 and at_cancel.counts.running == 0
    # The tasks that were in flight answer later: their results are dropped, not recorded.
    await asyncio.sleep(QUIET_S)
    later = await echo_fleet.get(job.job_id)
    assert later.counts.succeeded == at_cancel.counts.succeeded
    assert later.counts.cancelled == at_cancel.counts.cancelled

    lines = await echo_fleet.results(job.job_id)
    ids = Counter(line["id"] for line in lines)
    assert len(ids) == 200 and max(ids.values()) == 1
    statuses = Counter(line["status"] for line in lines)
    assert statuses["succeeded"] == at_cancel.counts.succeeded >= 8
    assert statuses["cancelled"] == at_cancel.counts.cancelled
    codes = {line["error"]["code"] for line in lines if line["status"] == "cancelled"}
    assert codes == {"CANCELLED"}
    # A cancelled job is no longer controllable.
    again = await echo_fleet.stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id))
    assert again.job.state == gateway_pb2.JOB_STATE_CANCELLED


async def test_update_job_raises_a_later_job_past_an_earlier_one(echo_fleet):
    # B starts below A (7 vs 5), so it would run only after A, until it is raised to 0.
    await echo_fleet.start(delay_ms=10, window=2, batch=2)
    first = await echo_fleet.submit(job_text("a", 60))
    await echo_fleet.wait_for(first.job_id, lambda j: j.counts.running > 0, "dispatch")
    second = await echo_fleet.submit(job_text("b", 30, priority=7))

    reply = await echo_fleet.stub.UpdateJob(
        gateway_pb2.UpdateJobRequest(job_id=second.job_id, priority=0)
    )
    assert reply.job.priority == 0
    a = await echo_fleet.wait_done(first.job_id)
    b = await echo_fleet.wait_done(second.job_id)
    assert a.counts.succeeded == 60 and b.counts.succeeded == 30
    assert b.finished_at.ToNanoseconds() < a.finished_at.ToNanoseconds()


async def _cli(address: str, *args: str) -> tuple[int, str]:
    # A child process: the gateway runs on this event loop and must keep serving.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        "--gateway",
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_cli_pause_status_priority_resume(echo_fleet):
    # About 50 tasks/s: the job outlives a CLI start even on a loaded machine.
    await echo_fleet.start(delay_ms=10, window=2, batch=2)
    job = await echo_fleet.submit(job_text("cli", 400, priority=7))
    address = echo_fleet.gateway.address

    code, out = await _cli(address, "pause", job.job_id)
    assert code == 0, out
    code, out = await _cli(address, "status", job.job_id)
    assert code == 0, out
    assert "waiting because" in out and "paused" in out

    code, out = await _cli(address, "priority", job.job_id, "1")
    assert code == 0, out
    assert (await echo_fleet.get(job.job_id)).priority == 1
    code, out = await _cli(address, "priority", job.job_id, "12")
    assert code != 0 and "INVALID_ARGUMENT" in out

    code, out = await _cli(address, "resume", job.job_id)
    assert code == 0, out
    final = await echo_fleet.wait_done(job.job_id)
    assert final.state == gateway_pb2.JOB_STATE_COMPLETED and final.counts.succeeded == 400
