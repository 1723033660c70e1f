"""Jobs, idempotency, templates, deletion and restart, on every backend."""

from __future__ import annotations

import pytest

from gateway.store import (
    JobState,
    JobStore,
    Outcome,
    TaskState,
    TemplateConflict,
    TemplateRecord,
)
from tests.store.conftest import OpenStore, make_job, make_tasks, template_body


async def test_create_and_get_round_trips_every_field(store: JobStore) -> None:
    job = make_job(idempotency_key="k1", priority=7, spec={"files": {"a.jsonl": "x"}})
    created, is_new = await store.create_job(job)
    assert is_new and created == job
    assert await store.get_job("job-1") == job
    assert await store.get_job("missing") is None


async def test_same_idempotency_key_returns_the_first_job(store: JobStore) -> None:
    first, _ = await store.create_job(make_job("job-1", idempotency_key="k"))
    again, created = await store.create_job(make_job("job-2", idempotency_key="k", name="other"))
    assert not created
    assert again.job_id == "job-1" and again.name == first.name
    assert await store.get_job("job-2") is None


async def test_duplicate_job_id_without_key_is_an_error(store: JobStore) -> None:
    await store.create_job(make_job("job-1"))
    with pytest.raises(ValueError, match="job-1"):
        await store.create_job(make_job("job-1"))


async def test_list_jobs_newest_first_and_by_tenant(store: JobStore) -> None:
    await store.create_job(make_job("a", created_at=1.0, tenant="x"))
    await store.create_job(make_job("b", created_at=3.0, tenant="y"))
    await store.create_job(make_job("c", created_at=2.0, tenant="x"))
    assert [j.job_id for j in await store.list_jobs()] == ["b", "c", "a"]
    assert [j.job_id for j in await store.list_jobs(tenant="x")] == ["c", "a"]
    assert [j.job_id for j in await store.list_jobs(limit=1)] == ["b"]


async def test_job_state_cas_and_finished_at(store: JobStore) -> None:
    await store.create_job(make_job())
    assert await store.set_job_state("job-1", JobState.RUNNING, expected=[JobState.QUEUED])
    # A second QUEUED -> RUNNING loses: the job is no longer QUEUED.
    assert not await store.set_job_state("job-1", JobState.PAUSED, expected=[JobState.QUEUED])
    assert (await store.get_job("job-1")).state == JobState.RUNNING
    assert await store.set_job_state("job-1", JobState.FAILED, error="boom", now=55.0)
    job = await store.get_job("job-1")
    assert (job.state, job.finished_at, job.error) == (JobState.FAILED, 55.0, "boom")
    assert not await store.set_job_state("missing", JobState.RUNNING)


async def test_unfinished_jobs_are_the_non_final_ones(store: JobStore) -> None:
    for job_id, state in [("q", JobState.QUEUED), ("r", JobState.RUNNING), ("p", JobState.PAUSED),
                          ("c", JobState.COMPLETED), ("x", JobState.CANCELLED), ("f", JobState.FAILED)]:  # fmt: skip
        await store.create_job(make_job(job_id, state=state))
    assert sorted(j.job_id for j in await store.unfinished_jobs()) == ["p", "q", "r"]


async def test_priority_and_mark_expanded(store: JobStore) -> None:
    await store.create_job(make_job())
    assert await store.set_job_priority("job-1", 9)
    assert not await store.set_job_priority("missing", 9)
    await store.mark_expanded("job-1", 42)
    job = await store.get_job("job-1")
    assert (job.priority, job.expanded, job.total) == (9, True, 42)
    with pytest.raises(KeyError, match="missing"):
        await store.mark_expanded("missing", 1)


async def test_templates_versioned_and_conflicting(store: JobStore) -> None:
    assert await store.register_template("base", "1", "a: 1", now=10.0) == (10.0, True)
    assert await store.register_template("base", "1", "a: 1", now=20.0) == (10.0, False)
    with pytest.raises(TemplateConflict, match="'base' version '1'"):
        await store.register_template("base", "1", "a: 2")
    await store.register_template("base", "2", "a: 2", now=30.0)
    await store.register_template("other", "1", "b: 1", now=5.0)
    assert await template_body(store, "base", "2") == "a: 2"
    assert await template_body(store, "base", "3") is None
    assert await store.list_templates("base") == [TemplateRecord("", "base", "1", "a: 1", 10.0), TemplateRecord("", "base", "2", "a: 2", 30.0)]  # fmt: skip
    assert [t.name for t in await store.list_templates()] == ["base", "base", "other"]


async def test_template_names_are_per_tenant(store: JobStore) -> None:
    await store.register_template("base", "1", "a: shared", now=1.0)
    await store.register_template("base", "1", "a: x", tenant="x", now=2.0)
    # Another tenant's body for the same name@version is no conflict.
    assert await store.register_template("base", "1", "a: y", tenant="y", now=3.0) == (3.0, True)
    assert await template_body(store, "base", "1", "x") == "a: x"
    assert await template_body(store, "base", "1") == "a: shared"
    assert await template_body(store, "base", "1", "z") is None
    listed = await store.list_templates(tenants=["", "y"])
    assert [(t.tenant, t.body) for t in listed] == [("", "a: shared"), ("y", "a: y")]


async def test_reopen_keeps_everything(open_store: OpenStore) -> None:
    store = await open_store()
    await store.create_job(make_job(idempotency_key="k"))
    await store.add_tasks("job-1", make_tasks(4))
    leased = await store.lease("job-1", ["t0", "t1"], "srv-a", 50.0)
    recorded = await store.record_outcomes("job-1", [Outcome("t0", leased[0][1], TaskState.SUCCEEDED, b"r0")], 2.0)  # fmt: skip
    await store.register_template("base", "1", "x", now=1.0)
    await store.close()  # a restart

    again = await open_store()
    assert (await again.get_job("job-1")).idempotency_key == "k"
    assert (await again.create_job(make_job("job-9", idempotency_key="k")))[1] is False
    assert await again.results_after("job-1", 0, 10) == recorded
    # The gateway's start-up path: expired leases come back as PENDING.
    assert await again.expire_leases(now=60.0) == 1
    counts = await again.counts("job-1")
    assert (counts[TaskState.PENDING], counts[TaskState.SUCCEEDED]) == (3, 1)
    assert await template_body(again, "base", "1") == "x"
    assert [j.job_id for j in await again.unfinished_jobs()] == ["job-1"]


async def test_idempotency_keys_are_per_tenant(store: JobStore) -> None:
    await store.create_job(make_job("a", tenant="x", idempotency_key="k", principal="p"))
    # The same key in another tenant is another job, not the first one back.
    other, created = await store.create_job(make_job("b", tenant="y", idempotency_key="k"))
    assert created and other.job_id == "b"
    again, created = await store.create_job(make_job("c", tenant="x", idempotency_key="k"))
    assert not created and again.job_id == "a"
    assert (await store.job_by_idempotency_key("k", tenant="y")).job_id == "b"
    assert (await store.job_by_idempotency_key("k", principal="p")).job_id == "a"
    assert await store.job_by_idempotency_key("k", principal="q") is None


async def test_principal_and_spec_hash_round_trip(store: JobStore) -> None:
    job = make_job(principal="alice", spec_sha256="ab" * 32, idempotency_key="k")
    await store.create_job(job)
    assert await store.get_job("job-1") == job
    found = await store.job_by_idempotency_key("k", spec_sha256="ab" * 32)
    assert found is not None
    assert await store.job_by_idempotency_key("k", spec_sha256="cd" * 32) is None


async def test_list_jobs_of_several_tenants(store: JobStore) -> None:
    for job_id, tenant in [("a", "x"), ("b", "y"), ("c", "z")]:
        await store.create_job(make_job(job_id, tenant=tenant))
    assert {j.job_id for j in await store.list_jobs(tenants=["x", "z"])} == {"a", "c"}
    assert await store.list_jobs(tenants=[]) == []
    # A tenant asked for outside the allowed ones gives nothing.
    assert await store.list_jobs(tenant="y", tenants=["x"]) == []


async def test_job_by_idempotency_key(store: JobStore) -> None:
    job = make_job("j1")
    job.idempotency_key = "key-1"
    await store.create_job(job)
    found = await store.job_by_idempotency_key("key-1")
    assert found is not None and found.job_id == "j1"
    assert await store.job_by_idempotency_key("key-2") is None
