"""Task transitions, compare-and-set races, leases and duplicate ids, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store import DuplicateTaskId, JobStore, NewTask, Outcome, TaskState
from tests.store.conftest import OpenStore, make_job, make_tasks

S = TaskState


async def _job(store: JobStore, n: int = 5, job_id: str = "job-1") -> None:
    await store.create_job(make_job(job_id))
    await store.add_tasks(job_id, make_tasks(n))


def ok(task_id: str, attempt: int, body: bytes = b"r", **kw) -> Outcome:
    return Outcome(task_id, attempt, S.SUCCEEDED, body, **kw)


async def test_add_tasks_stores_every_field(store: JobStore) -> None:
    await store.create_job(make_job())
    await store.add_tasks("job-1", make_tasks(2))
    first, second = await store.pending_tasks("job-1", after_idx=-1, limit=10, now=0.0)
    assert (first.task_id, first.idx, first.input_hash, first.payload, first.est_tokens) == ("t0", 0, "h0", b"p0", 10)  # fmt: skip
    assert (first.state, first.attempts, first.lease_owner) == (S.PENDING, 0, None)
    assert second.task_id == "t1"


async def test_duplicate_task_id_inside_one_chunk_names_both_rows(store: JobStore) -> None:
    await store.create_job(make_job())
    tasks = [*make_tasks(3), NewTask("t1", 7, "h7", b"", 1)]
    with pytest.raises(DuplicateTaskId, match=r"'t1'.*row 1.*row 7") as err:
        await store.add_tasks("job-1", tasks)
    assert (err.value.task_id, err.value.first_idx, err.value.second_idx) == ("t1", 1, 7)
    assert sum((await store.counts("job-1")).values()) == 0  # nothing of the chunk stored


async def test_duplicate_task_id_across_chunks_names_both_rows(store: JobStore) -> None:
    await store.create_job(make_job())
    await store.add_tasks("job-1", make_tasks(3))
    clash = [*make_tasks(2, start=3), NewTask("t2", 5, "h", b"", 1)]
    with pytest.raises(DuplicateTaskId) as err:
        await store.add_tasks("job-1", clash)
    assert (err.value.task_id, err.value.first_idx, err.value.second_idx) == ("t2", 2, 5)
    assert "input row 2" in str(err.value) and "input row 5" in str(err.value)
    # The failed chunk left nothing behind; the same ids in another job are fine.
    assert (await store.counts("job-1"))[S.PENDING] == 3
    await _job(store, 3, "job-2")


async def test_lease_is_cas_and_counts_attempts(store: JobStore) -> None:
    await _job(store)
    assert await store.lease("job-1", ["t0", "t1", "nope"], "srv-a", 10.0) == [
        ("t0", 1, 0),
        ("t1", 1, 0),
    ]
    # Already RUNNING: a second lease wins nothing.
    assert await store.lease("job-1", ["t1", "t2"], "srv-b", 10.0) == [("t2", 1, 0)]
    running = {t.task_id for t in await store.pending_tasks("job-1", after_idx=-1, limit=10, now=0)}
    assert running == {"t3", "t4"}
    counts = await store.counts("job-1")
    assert (counts[S.RUNNING], counts[S.PENDING]) == (3, 2)


async def test_record_outcome_once_and_drop_stale_attempt(store: JobStore) -> None:
    await _job(store)
    await store.lease("job-1", ["t0", "t1"], "srv", 10.0)
    recorded = await store.record_outcomes(
        "job-1",
        [ok("t0", 1, prompt_tokens=3, completion_tokens=4), ok("t1", 2), ok("t9", 1)],
        now=5.0,
    )
    # t1 reported attempt 2 while it runs attempt 1; t9 does not exist.
    assert [(r.task_id, r.state, r.attempts, r.finished_at, r.reused) for r in recorded] == [
        ("t0", S.SUCCEEDED, 1, 5.0, False)
    ]
    assert await store.record_outcomes("job-1", [ok("t0", 1, b"late")], now=6.0) == []
    assert [r.result for r in await store.results_after("job-1", 0, 10)] == [b"r"]
    assert await store.usage("job-1") == (3, 4)


async def test_failed_and_cancelled_outcomes_keep_the_error(store: JobStore) -> None:
    await _job(store)
    await store.lease("job-1", ["t0", "t1", "t2"], "srv", 10.0)
    outcomes = [
        Outcome("t0", 1, S.FAILED, b"f", error="INVALID_ARGUMENT: bad"),
        Outcome("t1", 1, S.CANCELLED, b"c"),
        ok("t2", 1),
        Outcome("t0", 1, S.SUCCEEDED, b"dup"),  # the same attempt twice: the first report wins
    ]
    recorded = await store.record_outcomes("job-1", outcomes, now=1.0)
    assert sorted((r.task_id, r.state) for r in recorded) == [("t0", S.FAILED), ("t1", S.CANCELLED), ("t2", S.SUCCEEDED)]  # fmt: skip
    assert [r.seq for r in recorded] == sorted(r.seq for r in recorded)
    with pytest.raises(ValueError, match=r"'t3'.*RUNNING"):
        await store.record_outcomes("job-1", [Outcome("t3", 1, S.RUNNING, b"")], now=1.0)


async def test_requeue_to_retry_wait_then_pending_after_not_before(store: JobStore) -> None:
    await _job(store, 2)
    await store.lease("job-1", ["t0", "t1"], "srv", 10.0)
    assert await store.requeue("job-1", [("t0", 1), ("t1", 7)], not_before=100.0, error="UNAVAILABLE") == 1  # fmt: skip
    assert await store.pending_tasks("job-1", after_idx=-1, limit=10, now=99.0) == []
    (waiting,) = await store.pending_tasks("job-1", after_idx=-1, limit=10, now=100.0)
    assert (waiting.task_id, waiting.state, waiting.last_error, waiting.not_before) == ("t0", S.RETRY_WAIT, "UNAVAILABLE", 100.0)  # fmt: skip
    assert await store.lease("job-1", ["t0"], "srv", 20.0) == [("t0", 2, 0)]
    # The old attempt's late result is dropped; the new attempt's is recorded.
    assert await store.record_outcomes("job-1", [ok("t0", 1)], now=1.0) == []
    assert len(await store.record_outcomes("job-1", [ok("t0", 2)], now=1.0)) == 1
    assert await store.requeue("job-1", [("t0", 2)], not_before=None, error=None) == 0  # final


async def test_requeue_without_not_before_is_pending(store: JobStore) -> None:
    await _job(store, 1)
    await store.lease("job-1", ["t0"], "srv", 10.0)
    assert await store.requeue("job-1", [("t0", 1)], not_before=None, error="lost") == 1
    (task,) = await store.pending_tasks("job-1", after_idx=-1, limit=10, now=0.0)
    assert (task.state, task.attempts, task.lease_owner) == (S.PENDING, 1, None)


async def test_pending_tasks_merges_retry_wait_by_idx_and_honours_cursor(store: JobStore) -> None:
    await _job(store, 6)
    await store.lease("job-1", ["t1", "t3"], "srv", 10.0)
    await store.requeue("job-1", [("t1", 1), ("t3", 1)], not_before=5.0, error=None)
    page = await store.pending_tasks("job-1", after_idx=0, limit=3, now=5.0)
    assert [t.task_id for t in page] == ["t1", "t2", "t3"]
    page = await store.pending_tasks("job-1", after_idx=3, limit=3, now=5.0)
    assert [t.task_id for t in page] == ["t4", "t5"]


async def test_lease_expiry_and_renewal(store: JobStore) -> None:
    await _job(store, 3)
    await store.lease("job-1", ["t0", "t1"], "srv-a", 10.0)
    await store.lease("job-1", ["t2"], "srv-b", 10.0)
    assert await store.renew_leases("srv-a", 30.0) == 2
    assert await store.expire_leases(now=20.0) == 1  # only srv-b's lease ran out
    states = {
        t.task_id: t for t in await store.pending_tasks("job-1", after_idx=-1, limit=9, now=0)
    }
    assert list(states) == ["t2"] and states["t2"].lease_owner is None
    assert await store.expire_leases(now=20.0) == 0


async def test_release_owner_requeues_only_that_servers_tasks(store: JobStore) -> None:
    await _job(store, 4)
    await store.lease("job-1", ["t0", "t1"], "srv-a", 10.0)
    await store.lease("job-1", ["t2"], "srv-b", 10.0)
    await store.record_outcomes("job-1", [ok("t1", 1)], now=1.0)
    assert await store.release_owner("srv-a") == 1  # t1 already finished
    counts = await store.counts("job-1")
    assert (counts[S.PENDING], counts[S.RUNNING], counts[S.SUCCEEDED]) == (2, 1, 1)
    # A result arriving from the dead server's stream is dropped.
    assert await store.record_outcomes("job-1", [ok("t0", 1)], now=2.0) == []


async def test_finish_unfinished_closes_every_open_task_once(store: JobStore) -> None:
    await _job(store, 4)
    await store.lease("job-1", ["t0", "t1", "t2"], "srv", 10.0)
    await store.record_outcomes("job-1", [ok("t0", 1)], now=1.0)
    await store.requeue("job-1", [("t2", 1)], not_before=50.0, error=None)
    built: list[tuple[str, int]] = []

    def result_for(task_id: str, attempts: int) -> bytes:
        built.append((task_id, attempts))
        return f"cancelled {task_id}".encode()

    ended = await store.finish_unfinished("job-1", S.CANCELLED, result_for, now=9.0)
    assert [(r.task_id, r.state, r.result) for r in ended] == [
        ("t1", S.CANCELLED, b"cancelled t1"), ("t2", S.CANCELLED, b"cancelled t2"),
        ("t3", S.CANCELLED, b"cancelled t3"),
    ]  # fmt: skip
    assert sorted(built) == [("t1", 1), ("t2", 1), ("t3", 0)]
    assert await store.finish_unfinished("job-1", S.FAILED, result_for, now=9.0) == []
    assert await store.record_outcomes("job-1", [ok("t1", 1)], now=10.0) == []  # late result
    assert (await store.counts("job-1"))[S.CANCELLED] == 3


async def test_results_after_is_a_stable_cursor(store: JobStore) -> None:
    await _job(store, 10)
    for batch in (["t3", "t1"], ["t0", "t9", "t5"]):
        leased = await store.lease("job-1", batch, "srv", 10.0)
        await store.record_outcomes("job-1", [ok(t, a) for t, a, _ in leased], now=1.0)
    everything = await store.results_after("job-1", 0, 100)
    assert [r.seq for r in everything] == sorted({r.seq for r in everything})
    assert {r.task_id for r in everything[:2]} == {"t1", "t3"}  # completion order
    first = await store.results_after("job-1", 0, 2)
    rest = await store.results_after("job-1", first[-1].seq, 100)
    assert first + rest == everything


async def test_concurrent_record_outcomes_record_once(store: JobStore) -> None:
    await _job(store, 20)
    leased = await store.lease("job-1", [f"t{i}" for i in range(20)], "srv", 10.0)
    batches = [[ok(t, a, f"{k}".encode()) for t, a, _ in leased] for k in range(4)]
    recorded = await asyncio.gather(*(store.record_outcomes("job-1", b, 1.0) for b in batches))
    # Result inserts of one job are serialised, so one report wins whole and the rest lose.
    assert sorted(len(r) for r in recorded) == [0, 0, 0, 20]
    assert len(await store.results_after("job-1", 0, 100)) == 20


async def test_two_stores_on_one_database_record_once(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    await _job(a, 50)
    leased = await a.lease("job-1", [f"t{i}" for i in range(50)], "srv", 10.0)
    # Each store sees every outcome, interleaved in opposite orders, racing batch by batch.
    outs = [ok(t, n) for t, n, _ in leased]
    runs = [a.record_outcomes("job-1", outs[i : i + 5], 1.0) for i in range(0, 50, 5)]
    runs += [b.record_outcomes("job-1", outs[::-1][i : i + 5], 1.0) for i in range(0, 50, 5)]
    recorded = await asyncio.gather(*runs)
    tasks = [r.task_id for batch in recorded for r in batch]
    assert sorted(tasks) == sorted(t for t, _, _ in leased)  # each exactly once
    assert len(await b.results_after("job-1", 0, 100)) == 50


async def test_two_stores_race_to_lease(open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    await _job(a, 30)
    ids = [f"t{i}" for i in range(30)]
    got_a, got_b = await asyncio.gather(a.lease("job-1", ids, "a", 10.0), b.lease("job-1", ids[::-1], "b", 10.0))  # fmt: skip
    assert sorted(t for t, _, _ in got_a + got_b) == sorted(ids)


async def test_large_batches_cross_the_in_list_limit(store: JobStore) -> None:
    await store.create_job(make_job())
    await store.add_tasks("job-1", make_tasks(12_000))
    ids = [f"t{i}" for i in range(12_000)]
    leased = await store.lease("job-1", ids, "srv", 10.0)
    assert len(leased) == 12_000 and leased[0] == ("t0", 1, 0)
    recorded = await store.record_outcomes("job-1", [ok(t, a) for t, a, _ in leased], now=1.0)
    assert len(recorded) == 12_000


async def test_finish_unfinished_in_chunks_by_index(store: JobStore) -> None:
    await store.create_job(make_job("j"))
    await store.add_tasks("j", make_tasks(7))

    def result_for(task_id: str, attempts: int) -> bytes:
        return f"cancelled {task_id}".encode()

    first = await store.finish_unfinished("j", TaskState.CANCELLED, result_for, 1.0, limit=3)
    assert [r.task_id for r in first] == ["t0", "t1", "t2"]
    rest = await store.finish_unfinished("j", TaskState.CANCELLED, result_for, 1.0, limit=3)
    assert [r.task_id for r in rest] == ["t3", "t4", "t5"]
    last = await store.finish_unfinished("j", TaskState.CANCELLED, result_for, 1.0, limit=3)
    assert [r.task_id for r in last] == ["t6"]
    assert await store.finish_unfinished("j", TaskState.CANCELLED, result_for, 1.0, limit=3) == []
    assert (await store.counts("j"))[TaskState.CANCELLED] == 7


async def test_free_requeues_are_counted_apart_from_spent_attempts(store: JobStore) -> None:
    await _job(store, 3)
    await store.lease("job-1", ["t0", "t1", "t2"], "gw-1", 10.0)
    assert await store.release_owner("gw-1", free=True) == 3  # the gateway drained
    assert await store.lease("job-1", ["t0", "t1", "t2"], "srv", 10.0) == [
        ("t0", 2, 1),
        ("t1", 2, 1),
        ("t2", 2, 1),
    ]
    assert await store.expire_leases(float("inf"), free=True) == 3  # the gateway restarted
    await store.lease("job-1", ["t0", "t1", "t2"], "srv", 10.0)
    assert await store.release_owner("srv") == 3  # the server died with them: spent
    pending = {
        t.task_id: t for t in await store.pending_tasks("job-1", after_idx=-1, limit=9, now=0)
    }
    assert {t.attempts for t in pending.values()} == {3}
    assert {t.requeues for t in pending.values()} == {2}
    assert {t.spent for t in pending.values()} == {1}
    leased = await store.lease("job-1", ["t0", "t1"], "srv", 10.0)
    assert await store.requeue("job-1", [("t1", 4)], not_before=None, error="UNAVAILABLE", free=True) == 1  # fmt: skip
    recorded = await store.record_outcomes(
        "job-1", [ok("t0", leased[0][1], requeues=leased[0][2])], now=1.0
    )
    # The result says what was spent (2: the dead server's lease and this run) and what was free.
    assert [(r.attempts, r.requeues) for r in recorded] == [(2, 2)]
    ended = await store.finish_unfinished("job-1", S.CANCELLED, lambda tid, n: f"{tid}:{n}".encode(), 2.0)  # fmt: skip
    assert {r.task_id: (r.attempts, r.requeues, r.result) for r in ended} == {
        "t1": (1, 3, b"t1:1"),
        "t2": (1, 2, b"t2:1"),
    }


async def test_reclaiming_a_dead_replica_names_the_tasks_it_gives_back(store: JobStore) -> None:
    await _job(store, 6)
    await store.register_replica("dead", 0.0)
    await store.register_replica("live", 0.0)
    await store.lease("job-1", ["t3", "t1"], "dead/srv#0", 50.0)
    await store.lease("job-1", ["t2"], "live/srv#0", 50.0)
    await store.heartbeat("live", 20.0)
    reclaimed = await store.reclaim_dead_replicas(since=10.0)
    assert {r: {j: sorted(ids) for j, ids in by.items()} for r, by in reclaimed.items()} == {
        "dead": {"job-1": ["t1", "t3"]}
    }
    assert await store.live_replicas(10.0) == ["live"]
    # Given back free (an attempt taken, a requeue counted), PENDING again, by idx; the live
    # replica's lease and the ids never leased are not among them.
    loaded = await store.pending_by_id("job-1", ["t3", "t2", "t1", "nope"])
    assert [(r.task_id, r.state, r.attempts, r.requeues) for r in loaded] == [
        ("t1", S.PENDING, 1, 1),
        ("t3", S.PENDING, 1, 1),
    ]
    assert await store.reclaim_dead_replicas(since=10.0) == {}
