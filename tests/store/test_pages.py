"""Pages bounded in bytes as well as rows (ListJobs, ListTemplates, StreamResults), on
every backend: sizes are read before rows, so a row past the budget is never loaded."""

from __future__ import annotations

from gateway.store import JobStore, Outcome, TaskState
from tests.store.conftest import make_job, make_tasks

MB = 1 << 20


async def test_job_pages_follow_each_other_and_stop_at_the_byte_budget(store: JobStore) -> None:
    # job-4 newest; job-1 and job-3 have 1 MB errors (a key that long cannot be indexed in
    # PostgreSQL, and the gateway refuses keys over max_idempotency_key_chars; old SQLite
    # stores may hold them: the gateway's test with 20 MB keys)
    for i in range(5):
        error = "e" * MB if i in (1, 3) else None
        await store.create_job(make_job(f"job-{i}", created_at=float(i), error=error))
    seen, before, pages = [], None, 0
    while True:
        jobs, more = await store.job_page(limit=10, before=before, max_bytes=MB + 1000)
        pages += 1
        seen += [j.job_id for j in jobs]
        assert all(j.spec == {} for j in jobs)  # a listing carries no spec
        if not more:
            break
        before = (jobs[-1].created_at, jobs[-1].job_id)
    assert seen == ["job-4", "job-3", "job-2", "job-1", "job-0"]
    assert pages == 2  # [4, 3 (1 MB), 2] then [1 (1 MB), 0]: cut before the second big key


async def test_job_page_counts_limit_tenant_and_one_big_job_alone(store: JobStore) -> None:
    await store.create_job(make_job("a", created_at=1.0, tenant="x", name="é" * MB))
    await store.create_job(make_job("b", created_at=2.0, tenant="y"))
    await store.create_job(make_job("c", created_at=3.0, tenant="x"))
    jobs, more = await store.job_page(limit=1)
    assert [j.job_id for j in jobs] == ["c"] and more
    jobs, more = await store.job_page(tenant="x", before=(3.0, "c"), max_bytes=10)
    assert [j.job_id for j in jobs] == ["a"] and not more  # bigger than the budget: alone
    assert jobs[0].name == "é" * MB
    # 2 bytes a character: 1 MB of them is past a 1.5 MB budget with the job before it
    jobs, more = await store.job_page(tenant="x", max_bytes=3 * MB // 2)
    assert [j.job_id for j in jobs] == ["c"] and more


async def test_template_pages_by_name_then_age(store: JobStore) -> None:
    await store.register_template("b", "1", "x: 1", now=1.0)
    await store.register_template("a", "2", "y: " + "z" * MB, now=2.0)
    await store.register_template("a", "1", "y: 1", now=3.0)
    rows, more = await store.template_page(limit=10, max_bytes=MB)
    assert [(t.name, t.version) for t in rows] == [("a", "2")] and more
    last = rows[-1]
    after = (last.name, last.created_at, last.version, last.tenant)
    rows, more = await store.template_page(after=after, max_bytes=MB)
    assert [(t.name, t.version) for t in rows] == [("a", "1"), ("b", "1")] and not more
    rows, more = await store.template_page(name="b")
    assert [(t.name, t.version, t.body) for t in rows] == [("b", "1", "x: 1")] and not more


async def test_template_and_job_pages_of_some_tenants(store: JobStore) -> None:
    await store.register_template("a", "1", "x: shared", now=1.0)
    await store.register_template("a", "1", "x: t", tenant="t", now=2.0)
    await store.register_template("a", "1", "x: u", tenant="u", now=3.0)
    rows, more = await store.template_page(tenants=["", "t"], limit=1)
    assert [t.body for t in rows] == ["x: shared"] and more
    last = rows[-1]
    after = (last.name, last.created_at, last.version, last.tenant)
    rows, more = await store.template_page(tenants=["", "t"], after=after)
    assert [(t.tenant, t.body) for t in rows] == [("t", "x: t")] and not more
    for job_id, tenant in (("a", "x"), ("b", "y"), ("c", "z")):
        await store.create_job(make_job(job_id, tenant=tenant))
    jobs, _ = await store.job_page(tenants=["x", "z"])
    assert {j.job_id for j in jobs} == {"a", "c"}
    jobs, _ = await store.job_page(tenant="y", tenants=["x"])
    assert jobs == []


async def test_results_after_stops_at_the_byte_budget(store: JobStore) -> None:
    await store.create_job(make_job())
    await store.add_tasks("job-1", make_tasks(4))
    leased = await store.lease("job-1", ["t0", "t1", "t2", "t3"], "srv", 50.0)
    bodies = [b"a" * MB, b"b", b"c" * MB, b"d"]
    outcomes = [
        Outcome(task_id, attempt, TaskState.SUCCEEDED, body)
        for (task_id, attempt, _), body in zip(leased, bodies, strict=True)
    ]
    await store.record_outcomes("job-1", outcomes, 1.0)
    first = await store.results_after("job-1", 0, 100, max_bytes=MB + 10)
    assert [r.result[:1] for r in first] == [b"a", b"b"]
    rest = await store.results_after("job-1", first[-1].seq, 100, max_bytes=10)
    assert [r.result[:1] for r in rest] == [b"c"]  # larger than the budget: alone
    assert len(await store.results_after("job-1", 0, 100)) == 4
