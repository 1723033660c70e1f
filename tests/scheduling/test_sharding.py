from __future__ import annotations

from gateway.scheduling import Scheduler, SchedulerConfig
from gateway.scheduling.sharding import HashAffinity, rendezvous_pick

from .helpers import job, sent, server, tasks


def test_rendezvous_moves_only_keys_of_the_server_that_left() -> None:
    ids = [f"s{i}" for i in range(5)]
    keys = [f"k{i}" for i in range(500)]
    before = {k: rendezvous_pick(ids, k) for k in keys}
    assert len(set(before.values())) == 5  # keys spread over all servers
    after = {k: rendezvous_pick([s for s in ids if s != "s2"], k) for k in keys}
    for k in keys:
        if before[k] != "s2":
            assert after[k] == before[k]


def test_affinity_keeps_keys_when_a_server_joins_and_rehomes_when_one_leaves() -> None:
    aff = HashAffinity()
    old = ["s0", "s1", "s2"]
    keys = [f"k{i}" for i in range(300)]
    first = {k: aff.home("m", k, old, set(old)) for k in keys}
    assert first == {k: rendezvous_pick(old, k) for k in keys}
    grown = [*old, "s3"]
    assert {k: aff.home("m", k, grown, set(grown)) for k in keys} == first
    assert any(rendezvous_pick(grown, k) == "s3" for k in keys)  # pure rendezvous would move some
    shrunk = ["s0", "s2", "s3"]
    after = {k: aff.home("m", k, shrunk, set(shrunk)) for k in keys}
    for k in keys:
        expected = first[k] if first[k] != "s1" else rendezvous_pick(shrunk, k)
        assert after[k] == expected


def test_affinity_past_its_bound_falls_back_to_rendezvous() -> None:
    aff = HashAffinity(max_keys=10)
    ids = ["a", "b", "c"]
    for i in range(25):
        assert aff.home("m", f"k{i}", ids, set(ids)) == rendezvous_pick(ids, f"k{i}")
    assert len(aff._homes) <= 10


def test_hash_dispatch_holds_only_tasks_whose_key_maps_to_its_server() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", shard="hash"))
    shard_of = {}
    for k in ("p", "q", "r", "w", "v"):
        for t in tasks(5, shard_key=k):
            shard_of[t.key] = k
            s.enqueue("j", [t], 0.0)
    ids = ["s1", "s2", "s3"]
    out = s.schedule(1.0, [server(i) for i in ids])
    assert sent(out) == 25
    for d in out:
        assert {rendezvous_pick(ids, shard_of[key]) for key in d.keys} == {d.server_id}


def test_hash_task_waits_for_its_full_server_instead_of_moving() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j", shard="hash"))
    s.enqueue("j", tasks(3, shard_key="k"), 0.0)
    home = rendezvous_pick(["s1", "s2"], "k")
    other = "s2" if home == "s1" else "s1"
    out = s.schedule(1.0, [server(home, free=0), server(other, free=100)])
    assert out == []
    assert s.queued("j") == 3
    out = s.schedule(2.0, [server(home, free=100), server(other, free=100)])
    assert [(d.server_id, len(d.keys)) for d in out] == [(home, 3)]


def test_least_loaded_picks_the_server_with_fewest_outstanding_tokens() -> None:
    s = Scheduler(SchedulerConfig(max_batch_tasks=4))
    s.add_job(job("j"))
    s.enqueue("j", tasks(8, tokens=100), 0.0)
    out = s.schedule(
        1.0, [server("busy", load=10_000), server("idle", load=0), server("mid", load=300)]
    )
    # idle takes 400 tokens, then mid (300) is lightest
    assert [d.server_id for d in out] == ["idle", "mid"]


def test_least_loaded_skips_servers_without_the_model() -> None:
    s = Scheduler(SchedulerConfig())
    s.add_job(job("j"))
    s.enqueue("j", tasks(2), 0.0)
    out = s.schedule(1.0, [server("other", models=("x",)), server("any", load=99, models=("*",))])
    assert [d.server_id for d in out] == ["any"]


def test_round_robin_rotates_per_job() -> None:
    s = Scheduler(SchedulerConfig(max_batch_tasks=2))
    s.add_job(job("j", shard="round_robin"))
    s.enqueue("j", tasks(8), 0.0)
    out = s.schedule(1.0, [server("a"), server("b"), server("c")])
    assert [d.server_id for d in out] == ["a", "b", "c", "a"]
    s.enqueue("j", tasks(2), 1.0)
    out = s.schedule(2.0, [server("a"), server("b"), server("c")])
    assert [d.server_id for d in out] == ["b"]
