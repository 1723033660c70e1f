"""GetJob's per-model reports never wait long on reading a job's results: the read runs
in the background, a caller waits for it only a bounded time and sees the pages read so
far, and the ended job's report is whole once the read is through. A real store (SQLite)
whose results_after is held at a gate stands in for a read slowed by a busy store."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from batchinfer.v1 import task_pb2

from gateway.evaluation import reports
from gateway.evaluation.reports import JobReports
from gateway.store import JobState, JobStore, Outcome, TaskState
from tests.store.conftest import make_job, make_tasks


class GatedStore:
    """The real store, with each results_after held until `gate` lets one page through."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.gate = asyncio.Semaphore(0)
        self.pages_read = 0

    async def results_after(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        await self.gate.acquire()
        self.pages_read += 1
        return await self.store.results_after(*args, **kwargs)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.store, name)


async def _job_with_results(tmp_path, n: int) -> tuple[JobStore, object]:
    store = await JobStore.open(f"sqlite+aiosqlite:///{tmp_path}/jobs.db")
    job = make_job(model="m", task_type="generate", state=JobState.RUNNING)
    await store.create_job(job)
    await store.add_tasks(job.job_id, make_tasks(n))
    ids = [f"t{i}" for i in range(n)]
    await store.lease(job.job_id, ids, "srv", 10.0)
    body = task_pb2.TaskResult(text=task_pb2.TextOutput(text="ok")).SerializeToString()
    outcomes = [Outcome(t, 1, TaskState.SUCCEEDED, body) for t in ids]
    await store.record_outcomes(job.job_id, outcomes, now=1.0)
    return store, job


@pytest.mark.asyncio
async def test_a_slow_read_does_not_hold_the_caller_and_shows_what_is_read(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(reports, "PAGE", 2)
    store, job = await _job_with_results(tmp_path, 5)
    gated = GatedStore(store)
    view = JobReports(gated, wait_s=0.05, ended_wait_s=0.05)  # type: ignore[arg-type]
    try:
        ended = dataclasses.replace(job, state=JobState.COMPLETED)
        # Nothing read yet: the caller gets the empty report back, not a wait.
        (first,) = await asyncio.wait_for(view.of(ended), timeout=5)
        assert (first.model, first.finished) == ("m", 0)
        # One page through: the next caller sees it, the read is still going.
        gated.gate.release()
        while gated.pages_read < 1:
            await asyncio.sleep(0.01)
        (partial,) = await asyncio.wait_for(view.of(ended), timeout=5)
        assert partial.finished in (0, 2)  # the page may still be folding
        # The other pages through (of 2, 2 and 1 rows): the report is whole and final.
        for _ in range(2):
            gated.gate.release()
        while True:
            (whole,) = await asyncio.wait_for(view.of(ended), timeout=5)
            if whole.finished == 5:
                break
            await asyncio.sleep(0.01)
        assert (whole.succeeded, whole.failed) == (5, 0)
        pages = gated.pages_read
        (again,) = await view.of(ended)  # final: no further read
        assert again.finished == 5 and gated.pages_read == pages
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_callers_share_one_read(tmp_path) -> None:
    store, job = await _job_with_results(tmp_path, 3)
    gated = GatedStore(store)
    view = JobReports(gated, wait_s=0.05, ended_wait_s=0.05)  # type: ignore[arg-type]
    try:
        ended = dataclasses.replace(job, state=JobState.COMPLETED)
        await asyncio.gather(*(view.of(ended) for _ in range(5)))
        gated.gate.release()
        while (await view.of(ended))[0].finished != 3:
            await asyncio.sleep(0.01)
        assert gated.pages_read == 1  # five callers, one read of the one page
    finally:
        await store.close()
