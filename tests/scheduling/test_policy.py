"""Unit tests of each policy on hand-built state."""

from __future__ import annotations

import pytest

from gateway.scheduling import (
    INFLIGHT_CAP,
    LOWER_PRIORITY,
    PAUSED,
    RATE_LIMITED,
    JobPolicy,
    RateLimit,
    Scheduler,
    SchedulerConfig,
)

from .helpers import job, sent, server, tasks


def test_higher_priority_goes_first() -> None:
    s = Scheduler(SchedulerConfig(aging_per_s=0))
    s.add_job(job("low", priority=7))
    s.add_job(job("high", priority=1))
    s.enqueue("low", tasks(10), 0.0)
    s.enqueue("high", tasks(20), 0.0)
    out = s.schedule(1.0, [server("s", free=10)])
    assert sent(out, "high") == 10 and sent(out, "low") == 0
    assert s.wait_reason("low", 1.0, [server("s", free=10)]) == LOWER_PRIORITY


def test_aging_lifts_a_waiting_job_to_the_top_level() -> None:
    s = Scheduler(SchedulerConfig(aging_per_s=1.0, max_batch_tasks=5))
    s.add_job(job("low", tenant="a", priority=9))
    s.add_job(job("high", tenant="b", priority=0))
    s.enqueue("low", tasks(10), 0.0)
    s.enqueue("high", tasks(100), 0.0)
    assert sent(s.schedule(5.0, [server("s", free=5)]), "low") == 0  # level 4 vs 0
    out = s.schedule(9.0, [server("s", free=5)])  # level 0 vs 0, and tenant a is owed its share
    assert sent(out, "low") == 5


def test_a_job_that_keeps_being_served_does_not_age_past_its_peers() -> None:
    s = Scheduler(SchedulerConfig(aging_per_s=1 / 60, max_batch_tasks=5))
    s.add_job(job("bulk", tenant="a", priority=5))
    s.add_job(job("fresh", tenant="b", priority=5))
    s.enqueue("bulk", tasks(10_000), 0.0)
    for t in range(1, 600):  # ten minutes: its oldest task waited ten levels' worth
        s.schedule(float(t), [server("s", free=10)])
    s.enqueue("fresh", tasks(100), 599.0)
    out = s.schedule(600.0, [server("s", free=10)])
    assert sent(out, "fresh") == 5 and sent(out, "bulk") == 5


def test_fair_share_counts_tokens_not_tasks() -> None:
    s = Scheduler(SchedulerConfig(max_batch_tasks=1))
    s.add_job(job("big", tenant="a"))
    s.add_job(job("small", tenant="b"))
    s.enqueue("big", tasks(100, tokens=100), 0.0)
    s.enqueue("small", tasks(100, tokens=10), 0.0)
    out = s.schedule(1.0, [server("s", free=44)])
    assert sent(out, "big") == 4 and sent(out, "small") == 40


def test_weights_split_tokens_and_unknown_tenants_weigh_one() -> None:
    s = Scheduler(SchedulerConfig(tenant_weights={"gold": 3.0}, max_batch_tasks=1))
    s.add_job(job("g", tenant="gold"))
    s.add_job(job("u", tenant="unlisted"))
    s.enqueue("g", tasks(100), 0.0)
    s.enqueue("u", tasks(100), 0.0)
    out = s.schedule(1.0, [server("s", free=40)])
    assert sent(out, "g") == 30 and sent(out, "u") == 10


def test_an_idle_tenant_banks_no_credit() -> None:
    s = Scheduler(SchedulerConfig(max_batch_tasks=1))
    s.add_job(job("a", tenant="a"))
    s.add_job(job("b", tenant="b"))
    s.enqueue("a", tasks(1000), 0.0)
    for r in range(50):  # a runs alone for a while
        s.schedule(float(r), [server("s", free=10)])
    s.enqueue("b", tasks(1000), 50.0)
    out = s.schedule(51.0, [server("s", free=20)])
    assert sent(out, "a") == 10 and sent(out, "b") == 10


def test_finished_settles_the_charge_on_real_tokens() -> None:
    s = Scheduler(SchedulerConfig(max_batch_tasks=1))
    s.add_job(job("a", tenant="a"))
    s.add_job(job("b", tenant="b"))
    s.enqueue("a", tasks(100, tokens=10), 0.0)
    s.enqueue("b", tasks(100, tokens=10), 0.0)
    s.schedule(1.0, [server("s", free=2)])
    s.finished("a", 1, 110)  # a used 100 more tokens than estimated
    out = s.schedule(2.0, [server("s", free=10)])
    assert sent(out, "b") == 10


def test_earliest_deadline_first_across_jobs_of_one_tenant_and_level() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("late"))
    s.add_job(job("soon"))
    s.enqueue("late", tasks(5, deadline=100.0), 0.0)
    s.enqueue("soon", tasks(5, deadline=50.0), 0.0)
    out = s.schedule(1.0, [server("s", free=5)])
    assert [d.job_id for d in out] == ["soon"]


def test_job_bucket_limits_requests_and_says_when_it_refills() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", rate=RateLimit(requests_per_s=10.0, burst=5.0)))
    s.enqueue("j", tasks(20), 0.0)
    assert sent(s.schedule(0.0, [server("s")])) == 5
    assert s.wait_reason("j", 0.0, [server("s")]) == RATE_LIMITED
    assert s.next_wakeup(0.0) == pytest.approx(0.1)
    assert sent(s.schedule(0.25, [server("s")])) == 2


def test_a_replicas_share_covers_existing_and_new_jobs_and_tenants() -> None:
    cfg = SchedulerConfig(tenant_rate_limits={"t": RateLimit(requests_per_s=30.0)})
    s = Scheduler(cfg)
    s.add_job(job("j", tenant="free", rate=RateLimit(requests_per_s=30.0)))
    s.set_share(1 / 3)
    s.add_job(job("k", tenant="t"))
    s.enqueue("j", tasks(40), 0.0)
    s.enqueue("k", tasks(40), 0.0)
    out = s.schedule(0.0, [server("s", free=100)])
    assert sent(out, "j") == 10 and sent(out, "k") == 10  # a third of each burst
    with pytest.raises(ValueError, match="share"):
        s.set_share(0)


def test_tasks_another_replica_leased_first_give_their_rate_back() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", rate=RateLimit(requests_per_s=10.0, burst=5.0)))
    s.enqueue("j", tasks(20), 0.0)
    assert sent(s.schedule(0.0, [server("s")])) == 5
    s.not_sent("j", 3, 30)  # their leases went to another replica: nothing was sent
    assert s.inflight("j") == 2
    assert sent(s.schedule(0.0, [server("s")])) == 3


def test_token_bucket_shrinks_the_batch() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", rate=RateLimit(tokens_per_s=100.0, token_burst=250.0)))
    s.enqueue("j", tasks(10, tokens=100), 0.0)
    out = s.schedule(0.0, [server("s")])
    assert [len(d.keys) for d in out] == [2]
    assert s.next_wakeup(0.0) == pytest.approx(0.5)


def test_tenant_bucket_covers_all_its_jobs() -> None:
    cfg = SchedulerConfig(tenant_rate_limits={"t": RateLimit(requests_per_s=1.0, burst=6.0)})
    s = Scheduler(cfg)
    s.add_job(job("j1", tenant="t"))
    s.add_job(job("j2", tenant="t"))
    s.add_job(job("free", tenant="other"))
    for j in ("j1", "j2", "free"):
        s.enqueue(j, tasks(10), 0.0)
    out = s.schedule(0.0, [server("s")])
    assert sent(out, "j1") + sent(out, "j2") == 6 and sent(out, "free") == 10


def test_in_flight_cap_holds_a_job_until_tasks_finish() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", max_inflight=3))
    s.enqueue("j", tasks(10), 0.0)
    assert sent(s.schedule(0.0, [server("s")])) == 3
    assert s.wait_reason("j", 0.0, [server("s")]) == INFLIGHT_CAP
    assert s.schedule(1.0, [server("s")]) == []
    s.finished("j", 2, 20)
    assert sent(s.schedule(2.0, [server("s")])) == 2


def test_batches_respect_task_and_token_limits_and_send_an_oversize_task_alone() -> None:
    s = Scheduler(SchedulerConfig(max_batch_tasks=4, max_batch_tokens=100))
    s.add_job(job("j"))
    s.enqueue("j", tasks(1, tokens=500) + tasks(6, tokens=30), 0.0)
    out = s.schedule(0.0, [server("s")])
    assert [(len(d.keys), d.est_tokens) for d in out] == [(1, 500), (3, 90), (3, 90)]


def test_a_batch_never_exceeds_the_free_slots() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j"))
    s.enqueue("j", tasks(100), 0.0)
    out = s.schedule(0.0, [server("a", free=7), server("b", free=3)])
    assert sorted((d.server_id, len(d.keys)) for d in out) == [("a", 7), ("b", 3)]


def test_pause_and_resume() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j"))
    s.enqueue("j", tasks(5), 0.0)
    s.update_job("j", paused=True)
    assert s.schedule(0.0, [server("s")]) == []
    assert s.wait_reason("j", 0.0, [server("s")]) == PAUSED
    s.update_job("j", paused=False)
    assert sent(s.schedule(1.0, [server("s")])) == 5
    assert s.wait_reason("j", 1.0, [server("s")]) is None


def test_cancel_returns_queued_keys_and_the_tenant_comes_back_without_credit() -> None:
    # Admission caps are the store's (tests/store/test_admission.py); here the tenant's
    # queued count must fall with the cancel, or its next job would count as no return
    # from idle and keep the virtual time it had before the other tenant ran.
    s = Scheduler(SchedulerConfig(max_batch_tasks=1))
    s.add_job(job("j", tenant="b"))
    s.add_job(job("a", tenant="a"))
    batch = tasks(10)
    s.enqueue("j", batch, 0.0)
    sent_keys = {k for d in s.schedule(0.0, [server("s", free=4)]) for k in d.keys}
    keys = s.remove_job("j")
    assert sorted(keys + sorted(sent_keys)) == sorted(t.key for t in batch)
    s.finished("j", 4, 40)  # in-flight tasks of a cancelled job may still report: ignored
    s.enqueue("a", tasks(1000), 1.0)
    for r in range(50):  # a runs alone for a while
        s.schedule(float(r + 1), [server("s", free=10)])
    s.add_job(job("k", tenant="b"))
    s.enqueue("k", tasks(1000), 51.0)
    out = s.schedule(52.0, [server("s", free=20)])
    assert sent(out, "a") == 10 and sent(out, "k") == 10


def test_changing_priority_reorders_running_jobs() -> None:
    s = Scheduler(SchedulerConfig(aging_per_s=0))
    s.add_job(job("a", priority=3))
    s.add_job(job("b", priority=5))
    s.enqueue("a", tasks(10), 0.0)
    s.enqueue("b", tasks(10), 0.0)
    s.update_job("b", priority=0)
    assert [d.job_id for d in s.schedule(0.0, [server("s", free=10)])] == ["b"]
    with pytest.raises(ValueError, match="priority"):
        s.update_job("b", priority=10)


def test_expired_reports_and_removes_overdue_queued_tasks() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", tenant="t"))
    due = tasks(3, deadline=10.0)
    s.enqueue("j", due + tasks(2, deadline=20.0), 0.0)
    assert s.expired(5.0) == []
    assert s.expired(10.0) == [("j", [t.key for t in due])]
    assert s.queued("j") == 2


def test_no_server_for_the_model_is_a_wait_reason() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j"))
    s.enqueue("j", tasks(1), 0.0)
    servers = [server("s", models=("other",))]
    assert s.schedule(0.0, servers) == []
    assert s.wait_reason("j", 0.0, servers) == "no server for model m"


def test_interface_errors_name_the_job_or_field() -> None:
    s = Scheduler(SchedulerConfig())
    with pytest.raises(KeyError, match="nope"):
        s.enqueue("nope", tasks(1), 0.0)
    s.add_job(job("j"))
    with pytest.raises(ValueError, match="already"):
        s.add_job(job("j"))
    with pytest.raises(ValueError, match="shard"):
        JobPolicy("x", "t", 1, "m", "chat", shard="random")
    with pytest.raises(ValueError, match="tenant_weights"):
        SchedulerConfig(tenant_weights={"a": 0.0})
