"""Hypothesis properties: no starvation under aging, fair long-run shares,
buckets never exceeded over any window, hash keys stay on their live server."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.scheduling import QueuedTask, RateLimit, Scheduler, SchedulerConfig

from .helpers import job, sent, server, tasks

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    rivals=st.lists(
        st.tuples(st.integers(0, 8), st.floats(0.5, 4.0), st.integers(1, 50)),
        min_size=1,
        max_size=5,
    ),
    low_weight=st.floats(0.5, 4.0),
    low_tokens=st.integers(1, 200),
    low_tasks=st.integers(1, 20),
    aging=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_no_task_waits_forever_under_aging(
    rivals: list[tuple[int, float, int]],
    low_weight: float,
    low_tokens: int,
    low_tasks: int,
    aging: float,
) -> None:
    weights = {f"r{i}": w for i, (_, w, _) in enumerate(rivals)} | {"low": low_weight}
    s = Scheduler(SchedulerConfig(tenant_weights=weights, aging_per_s=aging, max_batch_tasks=8))
    for i, (prio, _, _) in enumerate(rivals):
        s.add_job(job(f"r{i}", tenant=f"r{i}", priority=prio))
    s.add_job(job("low", tenant="low", priority=9))
    s.enqueue("low", tasks(low_tasks, tokens=low_tokens), 0.0)
    done = 0
    for step in range(3000):
        now = float(step)
        for i, (_, _, tok) in enumerate(rivals):  # higher-priority work never stops arriving
            if s.queued(f"r{i}") < 16:
                s.enqueue(f"r{i}", tasks(16, tokens=tok), now)
        out = s.schedule(now, [server("s", free=8)])
        for d in out:
            s.finished(d.job_id, len(d.keys), d.est_tokens)
        done += sent(out, "low")
        if done == low_tasks:
            break
    assert done == low_tasks, f"low job still has {low_tasks - done} tasks after 3000 s"


@SETTINGS
@given(
    weights=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    batch=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_long_run_token_shares_follow_the_weights(
    weights: list[int], batch: int, seed: int
) -> None:
    rng = random.Random(seed)
    names = [f"t{i}" for i in range(len(weights))]
    s = Scheduler(
        SchedulerConfig(
            tenant_weights=dict(zip(names, map(float, weights), strict=True)), max_batch_tasks=batch
        )
    )
    mean_tokens = {n: rng.randint(10, 200) for n in names}  # tenants differ in task size
    used = dict.fromkeys(names, 0)
    for n in names:
        s.add_job(job(n, tenant=n))
    for step in range(400):
        for n in names:
            if s.queued(n) < 64:
                s.enqueue(n, tasks(64, tokens=mean_tokens[n]), float(step))
        for d in s.schedule(float(step), [server("s", free=32)]):
            real = int(d.est_tokens * rng.uniform(0.5, 1.5))  # real use differs from the estimate
            used[d.job_id] += real
            s.finished(d.job_id, len(d.keys), real)
    total, wsum = sum(used.values()), sum(weights)
    for n, w in zip(names, weights, strict=True):
        assert abs(used[n] / total - w / wsum) <= 0.03, (used, weights)


def _assert_window_bound(events: list[tuple[float, int]], rate: float, burst: float) -> None:
    for i, (a, _) in enumerate(events):
        total = 0
        for b, amount in events[i:]:
            total += amount
            assert total <= burst + rate * (b - a) + 1e-6, (a, b, total)


@SETTINGS
@given(
    rps=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    tps=st.floats(50, 5000),
    token_burst=st.integers(200, 2000),
    tenant_rps=st.floats(0.5, 50),
    tenant_burst=st.integers(1, 30),
    gaps=st.lists(st.floats(0.0, 2.0), min_size=5, max_size=60),
    seed=st.integers(0, 2**16),
)
def test_a_bucket_is_never_exceeded_over_any_window(
    rps: float,
    burst: int,
    tps: float,
    token_burst: int,
    tenant_rps: float,
    tenant_burst: int,
    gaps: list[float],
    seed: int,
) -> None:
    rng = random.Random(seed)
    tenant_limit = RateLimit(requests_per_s=tenant_rps, burst=tenant_burst)
    s = Scheduler(SchedulerConfig(tenant_rate_limits={"t": tenant_limit}))
    s.add_job(job("a", tenant="t", rate=RateLimit(rps, burst, tps, token_burst)))
    s.add_job(job("b", tenant="t"))
    s.enqueue("a", [QueuedTask(i, rng.randint(1, 200)) for i in range(500)], 0.0)
    s.enqueue("b", tasks(500), 0.0)
    job_req: list[tuple[float, int]] = []
    job_tok: list[tuple[float, int]] = []
    tenant_req: list[tuple[float, int]] = []
    now = 0.0
    for gap in gaps:
        now += gap
        for d in s.schedule(now, [server("s", free=rng.randint(0, 100))]):
            tenant_req.append((now, len(d.keys)))
            if d.job_id == "a":
                job_req.append((now, len(d.keys)))
                job_tok.append((now, d.est_tokens))
    _assert_window_bound(job_req, rps, burst)
    _assert_window_bound(job_tok, tps, token_burst)
    _assert_window_bound(tenant_req, tenant_rps, tenant_burst)


@SETTINGS
@given(
    steps=st.lists(
        st.tuples(st.sets(st.sampled_from("ABCDEFG"), min_size=1), st.integers(0, 5)),
        min_size=2,
        max_size=25,
    ),
    seed=st.integers(0, 2**16),
)
def test_a_hash_key_stays_on_its_server_while_that_server_lives(
    steps: list[tuple[set[str], int]], seed: int
) -> None:
    rng = random.Random(seed)
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", shard="hash"))
    shard_of: dict[int, str] = {}
    home: dict[str, str] = {}
    live_before: set[str] = set()
    key = 0
    for live, busy in steps:
        for gone in live_before - live:  # a server that left frees its keys
            home = {k: sid for k, sid in home.items() if sid != gone}
        batch = []
        for _ in range(20):
            shard = f"k{rng.randint(0, 30)}"
            shard_of[key] = shard
            batch.append(QueuedTask(key, 10, None, shard))
            key += 1
        s.enqueue("j", batch, 0.0)
        full = set(sorted(live)[:busy])  # some live servers have no free slots this round
        servers = [server(sid, free=0 if sid in full else 1000) for sid in sorted(live)]
        for d in s.schedule(0.0, servers):
            assert d.server_id not in full
            for k in d.keys:
                shard = shard_of[k]
                assert home.setdefault(shard, d.server_id) == d.server_id, shard
        live_before = live
