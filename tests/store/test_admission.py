"""Admission caps count the tenant's unfinished tasks in the store, whichever gateway
replica accepted them: each store below stands for a replica on the same database."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import JobState, Outcome, OverCap, TaskState
from tests.store.conftest import OpenStore, make_job, make_tasks


async def test_the_cap_counts_jobs_accepted_through_another_store(open_store: OpenStore) -> None:
    one, two = await open_store(), await open_store()
    await one.create_job(make_job("job-a", total=6), cap=10)
    with pytest.raises(OverCap) as refused:
        await two.create_job(make_job("job-b", total=5), cap=10)
    assert refused.value.unfinished == 6 and refused.value.tenant == "team-a"
    assert await two.get_job("job-b") is None
    # Another tenant's work does not count, and no cap means no check.
    await two.create_job(make_job("job-c", tenant="team-b", total=9), cap=10)
    await two.create_job(make_job("job-d", total=50))


async def test_finished_tasks_and_finished_jobs_leave_the_count(open_store: OpenStore) -> None:
    one, two = await open_store(), await open_store()
    await one.create_job(make_job("job-a", total=6), cap=10)
    await one.add_tasks("job-a", make_tasks(6))
    leased = await one.lease("job-a", ["t0", "t1"], "r1/srv#1", 100.0)
    outcomes = [
        Outcome(task_id, attempt, TaskState.SUCCEEDED, b"r") for task_id, attempt, _ in leased
    ]
    await one.record_outcomes("job-a", outcomes, 1.0)
    await two.create_job(make_job("job-b", total=6), cap=10)  # 4 + 6
    with pytest.raises(OverCap):
        await two.create_job(make_job("job-c", total=1), cap=10)
    await one.set_job_state("job-b", JobState.CANCELLED)
    await two.create_job(make_job("job-c", total=6), cap=10)


async def test_concurrent_submissions_through_two_stores_share_the_room(
    open_store: OpenStore,
) -> None:
    """Ten jobs of 3 tasks against a cap of 10, five through each store at once: exactly
    three get in (the check and the insert are one transaction, turns taken per tenant)."""
    stores = [await open_store(), await open_store()]

    async def submit(i: int) -> bool:
        try:
            await stores[i % 2].create_job(make_job(f"job-{i}", total=3), cap=10)
        except OverCap:
            return False
        return True

    admitted = await asyncio.gather(*(submit(i) for i in range(10)))
    assert sum(admitted) == 3
