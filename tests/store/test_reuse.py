"""Incremental runs: results of an earlier job with the same name are reused by (id, input hash)."""

from __future__ import annotations

from gateway.store import JobStore, Outcome, TaskState
from tests.store.conftest import make_job, make_tasks

S = TaskState


async def _finished_job(store: JobStore, job_id: str, name: str, n: int) -> None:
    await store.create_job(make_job(job_id, name=name))
    await store.add_tasks(job_id, make_tasks(n))
    leased = await store.lease(job_id, [f"t{i}" for i in range(n)], "srv", 10.0)
    outcomes = [
        Outcome(t, a, S.FAILED if t == "t3" else S.SUCCEEDED, f"out-{t}".encode(), 5, 7)
        for t, a, _ in leased
    ]
    await store.record_outcomes(job_id, outcomes, now=1.0)


async def test_reuse_copies_only_unchanged_successes(store: JobStore) -> None:
    await _finished_job(store, "old", "summarize", 5)
    await _finished_job(store, "other-name", "translate", 5)
    await store.create_job(make_job("new", name="summarize"))
    # t1's input changed; t3 failed before; t5 is new.
    changed = make_tasks(6, hash_of=lambda i: "changed" if i == 1 else f"h{i}")
    await store.add_tasks("new", changed)
    reused = await store.reuse_results("new", "summarize", [(t.task_id, t.input_hash) for t in changed], 2.0)  # fmt: skip
    assert reused == {"t0", "t2", "t4"}
    rows = await store.results_after("new", 0, 100)
    assert [(r.task_id, r.result, r.reused, r.prompt_tokens, r.finished_at) for r in rows] == [
        ("t0", b"out-t0", True, 5, 2.0), ("t2", b"out-t2", True, 5, 2.0),
        ("t4", b"out-t4", True, 5, 2.0),
    ]  # fmt: skip
    pending = await store.pending_tasks("new", after_idx=-1, limit=10, now=0.0)
    assert [t.task_id for t in pending] == ["t1", "t3", "t5"]
    assert await store.usage("new") == (15, 21)


async def test_reuse_skips_tasks_already_leased_and_is_idempotent(store: JobStore) -> None:
    await _finished_job(store, "old", "summarize", 3)
    await store.create_job(make_job("new", name="summarize"))
    tasks = make_tasks(3)
    await store.add_tasks("new", tasks)
    await store.lease("new", ["t0"], "srv", 10.0)
    keys = [(t.task_id, t.input_hash) for t in tasks]
    assert await store.reuse_results("new", "summarize", keys, 2.0) == {"t1", "t2"}
    assert await store.reuse_results("new", "summarize", keys, 3.0) == set()
    assert len(await store.results_after("new", 0, 100)) == 2


async def test_reuse_of_a_third_run_takes_the_reused_results(store: JobStore) -> None:
    await _finished_job(store, "run-1", "summarize", 2)
    for job_id in ("run-2", "run-3"):
        await store.create_job(make_job(job_id, name="summarize"))
        await store.add_tasks(job_id, make_tasks(2))
        keys = [(t.task_id, t.input_hash) for t in make_tasks(2)]
        assert await store.reuse_results(job_id, "summarize", keys, 2.0) == {"t0", "t1"}
    assert (await store.counts("run-3"))[S.SUCCEEDED] == 2


async def test_has_earlier_results_only_for_other_jobs_of_the_name(store: JobStore) -> None:
    await store.create_job(make_job("first", name="summarize"))
    assert not await store.has_earlier_results("first", "summarize")
    await _finished_job(store, "old", "summarize", 2)
    assert await store.has_earlier_results("new", "summarize")
    assert not await store.has_earlier_results("old", "summarize")  # its own results do not count
    assert not await store.has_earlier_results("new", "translate")


async def test_add_tasks_reusing_in_one_transaction_and_reused_count(store: JobStore) -> None:
    await _finished_job(store, "old", "summarize", 4)
    await store.create_job(make_job("new", name="summarize"))
    reused = await store.add_tasks("new", make_tasks(5), reuse_from="summarize", now=2.0)
    assert reused == {"t0", "t1", "t2"}  # t3 failed before, t4 is new
    pending = await store.pending_tasks("new", after_idx=-1, limit=10, now=0.0)
    assert [t.task_id for t in pending] == ["t3", "t4"]
    assert await store.reused_count("new") == 3
    assert await store.reused_count("old") == 0
