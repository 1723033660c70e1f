"""Scheduling policy through a real gateway: weighted fair shares, Jain's index for
equal tenants, a rate-limited tenant's achieved rate, and the scheduler's cost.

A local fleet (LocalFleet: echo inference servers and a gateway as subprocesses)
where the servers are the bottleneck: a per-token delay and a small credit window
keep the backlog in the gateway's scheduler. Phases, one after another:

1. Tenants a, b, c (gateway weights 1:2:4) each submit a large job at the same
   moment. The results' seq (one counter for all jobs: the order they completed)
   gives a steady window (the first 20% and the last 5% of completions dropped;
   ended early if a job ran out of tasks) over which each tenant's share of
   completed tokens is compared with w / sum(w).
2. The same with tenants x, y, z of equal weight: Jain's fairness index of their
   completed tokens.
3. A tenant whose job is limited to 200 tasks/s runs beside a backlogged one; with
   weight 4:1 its fair share is above 200/s, so the bucket is what holds it. Its
   achieved rate is measured from result arrival times over a steady window.
4. The pure scheduler's cost per scheduled task with 100,000 tasks queued across
   100 tenants (benchmarks/scheduler_cost.py).

Run: .venv/bin/python benchmarks/fairness.py [--servers 2] [--phase-s 20]
Last line: max_share_error=X jain_equal=Y rate_limit_error=Z sched_us_per_task=W
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]

import scheduler_cost  # noqa: E402
from batchinfer.v1 import gateway_pb2  # noqa: E402

from gateway.client import GatewayClient, read_local_job  # noqa: E402
from gateway.local import LocalFleet  # noqa: E402

WEIGHTS = {"a": 1.0, "b": 2.0, "c": 4.0}
EQUAL = ("x", "y", "z")
RATE_TENANT, RATE = "r", 200.0
RATE_WEIGHT = 4.0  # its fair share of the fleet (4/5) is above the limit: the bucket binds


@dataclass
class Completion:
    seq: int
    tokens: int
    at: float  # time.monotonic() when the client received it


@dataclass
class Followed:
    """The succeeded results of one job as they arrived."""

    tenant: str
    job_id: str
    done: list[Completion] = field(default_factory=list)
    ran_out: bool = False  # the job completed (no longer backlogged) before it was cancelled


def job_yaml(name: str, tenant: str, tasks: int, schedule: str = "") -> str:
    # Eight-word prompts and max_new_tokens 8: every task costs the same 16 tokens.
    b = max(tasks // 100, 1)
    return (
        f"version: 1\nname: {name}\nmodel: echo-model\ntask: generate\n"
        "template: 'item {{ a }} {{ b }} x x x x x'\nparams: {max_new_tokens: 8}\n"
        f"inputs:\n  matrix: {{a: {list(range(100))}, b: {list(range(b))}}}\n"
        "  id: 't{{ a }}-{{ b }}'\n"
        f"schedule: {{tenant: {tenant}{schedule}}}\n"
    )


async def submit(client: GatewayClient, folder: Path, name: str, text: str) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    job = await client.submit(read_local_job(path, {}, None))
    return job.job_id


async def follow(client: GatewayClient, followed: Followed) -> None:
    request = gateway_pb2.StreamResultsRequest(job_id=followed.job_id)
    async for page in client.stub.StreamResults(request):
        now = time.monotonic()
        for item in page.results:
            if item.state == gateway_pb2.TASK_STATE_SUCCEEDED:
                usage = item.result.usage
                tokens = usage.prompt_tokens + usage.completion_tokens
                followed.done.append(Completion(item.seq, tokens, now))


async def run_jobs(
    client: GatewayClient, folder: Path, jobs: dict[str, str], seconds: float
) -> list[Followed]:
    """Submits the jobs at the same moment, follows them for `seconds`, then cancels them."""
    ids = await asyncio.gather(*(submit(client, folder, t, text) for t, text in jobs.items()))
    runs = [Followed(tenant, job_id) for tenant, job_id in zip(jobs, ids, strict=True)]
    followers = [asyncio.create_task(follow(client, run)) for run in runs]
    await asyncio.sleep(seconds)
    for run in runs:
        job = await client.get(run.job_id)
        run.ran_out = job.state == gateway_pb2.JOB_STATE_COMPLETED
        if not run.ran_out:
            await client.stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=run.job_id))
    await asyncio.wait_for(asyncio.gather(*followers), 120)
    return runs


def window_tokens(runs: list[Followed]) -> dict[str, int]:
    """Tokens each tenant completed in the steady window of the global completion order."""
    events = sorted((c.seq, run.tenant, c.tokens) for run in runs for c in run.done)
    end = len(events)
    for run in runs:
        if run.ran_out and run.done:  # from its last result on, it was not backlogged
            last = max(c.seq for c in run.done)
            end = min(end, sum(1 for seq, _, _ in events if seq < last))
    start, end = int(0.2 * end), int(0.95 * end)
    tokens = dict.fromkeys((run.tenant for run in runs), 0)
    for _, tenant, count in events[start:end]:
        tokens[tenant] += count
    print(f"  window: completions {start}..{end} of {len(events)}")
    return tokens


def shares(tokens: dict[str, int]) -> dict[str, float]:
    total = sum(tokens.values()) or 1
    return {t: n / total for t, n in tokens.items()}


async def weighted_phase(client: GatewayClient, folder: Path, tasks: int, secs: float) -> float:
    jobs = {t: job_yaml(f"fair-{t}", t, tasks) for t in WEIGHTS}
    got = shares(window_tokens(await run_jobs(client, folder, jobs, secs)))
    total_w = sum(WEIGHTS.values())
    errors = {t: abs(got[t] - w / total_w) for t, w in WEIGHTS.items()}
    print(
        "  shares (ideal 0.143 0.286 0.571):",
        " ".join(f"{t}={got[t]:.3f}" for t in WEIGHTS),
    )
    return max(errors.values())


async def equal_phase(client: GatewayClient, folder: Path, tasks: int, secs: float) -> float:
    jobs = {t: job_yaml(f"equal-{t}", t, tasks) for t in EQUAL}
    tokens = window_tokens(await run_jobs(client, folder, jobs, secs))
    print("  shares:", " ".join(f"{t}={s:.3f}" for t, s in shares(tokens).items()))
    return scheduler_cost.jain([float(v) for v in tokens.values()])


async def rate_phase(client: GatewayClient, folder: Path, tasks: int, secs: float) -> float:
    jobs = {
        RATE_TENANT: job_yaml(
            "rate-limited",
            RATE_TENANT,
            tasks,
            f", rate_limit: {{requests_per_s: {RATE:g}, burst: 20}}",
        ),
        "bg": job_yaml("background", "bg", tasks),
    }
    runs = await run_jobs(client, folder, jobs, secs)
    limited = sorted(runs[0].done, key=lambda c: c.at)
    start = limited[0].at + 2.0  # after the start-up and the first burst
    steady = [c for c in limited if start <= c.at <= limited[-1].at - 0.5]
    rate = (len(steady) - 1) / (steady[-1].at - steady[0].at)
    background = len(runs[1].done) / secs
    print(f"  achieved {rate:.1f} tasks/s (limit {RATE:g}); background tenant ~{background:.0f}/s")
    return abs(rate - RATE) / RATE


async def measure(args: argparse.Namespace, folder: Path) -> tuple[float, float, float]:
    fleet = LocalFleet(folder)
    worker_flags = [
        "--echo-delay-ms-per-token",
        str(args.delay_ms),
        "--max-queued-tasks",
        str(args.window),
        "--max-batch-size",
        str(args.window),
        "--max-wait-ms",
        "1",
        "--log-level",
        "WARNING",
    ]
    gateway_flags = ["--log-level", "WARNING"]
    for tenant, weight in WEIGHTS.items():
        gateway_flags += ["--tenant-weight", f"{tenant}={weight:g}"]
    gateway_flags += ["--tenant-weight", f"{RATE_TENANT}={RATE_WEIGHT:g}"]
    try:
        fleet.start_workers(args.servers, "echo", "echo-model", extra=worker_flags)
        gateway = fleet.start_gateway(extra=gateway_flags)
        client = GatewayClient(gateway.address)
        try:
            await client.wait_ready()
            print(f"phase 1: weights 1:2:4, {args.phase_s:g} s")
            share_error = await weighted_phase(client, folder, args.tasks, args.phase_s)
            print(f"phase 2: three equal tenants, {args.phase_s:g} s")
            jain = await equal_phase(client, folder, args.tasks, args.phase_s)
            print(f"phase 3: a tenant limited to {RATE:g} tasks/s, {args.rate_s:g} s")
            rate_error = await rate_phase(client, folder, args.tasks, args.rate_s)
        finally:
            await client.close()
    finally:
        fleet.stop()
    return share_error, jain, rate_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--delay-ms", type=float, default=8.0, help="echo delay per token")
    parser.add_argument("--window", type=int, default=16, help="credits and batch size")
    parser.add_argument("--tasks", type=int, default=30_000, help="tasks per job")
    parser.add_argument("--phase-s", type=float, default=25.0)
    parser.add_argument("--rate-s", type=float, default=15.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        share_error, jain, rate_error = asyncio.run(measure(args, Path(tmp)))
    print("phase 4: the pure scheduler, 100,000 tasks queued across 100 tenants")
    us = scheduler_cost.cost(100_000, 100, 8, 1024)
    print(
        f"max_share_error={share_error:.4f} jain_equal={jain:.4f} "
        f"rate_limit_error={rate_error:.4f} sched_us_per_task={us:.2f}"
    )


if __name__ == "__main__":
    main()
