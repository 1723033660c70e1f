"""Cost of the pure scheduler per scheduled task, and its fair shares in a pure simulation.

100,000 tasks queued across 100 tenants (3 jobs each, mixed priorities, some
with deadlines, one in ten hash-sharded); 8 servers with enough capacity per
round; schedule() is timed until the queue drains. The dispatcher's side
(finished() for every dispatched batch) is done between rounds, untimed.

Run: .venv/bin/python benchmarks/scheduler_cost.py [--tasks N] [--tenants N]
Last line: sched_us_per_task=W
"""

from __future__ import annotations

import argparse
import random
import time

from gateway.scheduling import JobPolicy, QueuedTask, Scheduler, SchedulerConfig, ServerState

MODEL, TASK = "smollm2", "chat"


def servers(n: int, free: int, load: dict[str, int]) -> list[ServerState]:
    return [
        ServerState(f"s{i}", free, load.get(f"s{i}", 0), frozenset({MODEL}), frozenset({TASK}))
        for i in range(n)
    ]


def build(n_tasks: int, n_tenants: int, jobs_per_tenant: int, seed: int) -> Scheduler:
    rng = random.Random(seed)
    weights = {f"t{i}": float(1 + i % 4) for i in range(n_tenants)}
    sched = Scheduler(SchedulerConfig(tenant_weights=weights))
    n_jobs = n_tenants * jobs_per_tenant
    key = 0
    for j in range(n_jobs):
        job_id = f"j{j}"
        shard = "hash" if j % 10 == 0 else "least_loaded"
        sched.add_job(
            JobPolicy(job_id, f"t{j % n_tenants}", rng.randint(0, 9), MODEL, TASK, shard=shard)
        )
        deadline = 3600.0 if j % 3 == 0 else None
        count = n_tasks // n_jobs + (1 if j < n_tasks % n_jobs else 0)
        tasks = [
            QueuedTask(key + i, rng.randint(20, 400), deadline, f"prefix-{rng.randint(0, 50)}")
            for i in range(count)
        ]
        key += count
        sched.enqueue(job_id, tasks, 0.0)
    return sched


def cost(n_tasks: int, n_tenants: int, n_servers: int, free: int) -> float:
    sched = build(n_tasks, n_tenants, 3, seed=7)
    now, scheduled, spent, rounds = 1.0, 0, 0.0, 0
    while scheduled < n_tasks:
        snapshot = servers(n_servers, free, {})
        t0 = time.perf_counter()
        out = sched.schedule(now, snapshot)
        spent += time.perf_counter() - t0
        rounds += 1
        if not out:
            raise SystemExit(f"stalled after {scheduled} tasks in round {rounds}")
        for d in out:
            scheduled += len(d.keys)
            sched.finished(d.job_id, len(d.keys), d.est_tokens)
        now += 0.01
    print(f"tasks scheduled={scheduled} rounds={rounds} schedule_seconds={spent:.3f}")
    return spent / scheduled * 1e6


def shares(weights: dict[str, float], rounds: int) -> dict[str, float]:
    """Token shares of always-backlogged tenants through one server of 64 slots per round."""
    rng = random.Random(3)
    sched = Scheduler(SchedulerConfig(tenant_weights=weights))
    used = dict.fromkeys(weights, 0)
    key = 0
    for tenant in weights:
        sched.add_job(JobPolicy(tenant, tenant, 5, MODEL, TASK))
    for r in range(rounds):
        for tenant in weights:
            if sched.queued(tenant) < 256:  # keep every tenant backlogged
                tasks = [QueuedTask(key + i, rng.randint(10, 300)) for i in range(256)]
                key += 256
                sched.enqueue(tenant, tasks, float(r))
        for d in sched.schedule(float(r), servers(1, 64, {})):
            used[d.job_id] += d.est_tokens
            sched.finished(d.job_id, len(d.keys), d.est_tokens)
    total = sum(used.values())
    return {t: used[t] / total for t in weights}


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--servers", type=int, default=8)
    parser.add_argument("--free", type=int, default=1024, help="free slots per server per round")
    args = parser.parse_args()

    weighted = shares({"a": 1.0, "b": 2.0, "c": 4.0}, rounds=2000)
    print(
        "token shares for weights 1:2:4 (ideal 0.143 0.286 0.571):",
        " ".join(f"{t}={s:.3f}" for t, s in weighted.items()),
    )
    equal = shares({"x": 1.0, "y": 1.0, "z": 1.0}, rounds=2000)
    print(f"jain_index_equal_tenants={jain(list(equal.values())):.4f}")

    us = cost(args.tasks, args.tenants, args.servers, args.free)
    print(f"sched_us_per_task={us:.2f}")


if __name__ == "__main__":
    main()
