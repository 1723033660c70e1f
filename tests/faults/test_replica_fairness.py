"""Fair shares across gateway replicas on one PostgreSQL: two tenants weighted 3:1 in the
replicas' --config, a job each, submitted through different replicas, echo servers the
bottleneck. While both are backlogged the heavier tenant gets 3/4 of the results, as on
one gateway: every replica drives both jobs and splits what it sends by the weights.

Why a trial with equal jobs, measured from the start, saw 0.68-0.72: the heavy job
starts alone (the other is still being uploaded and expanded), which left ~8 s where
both had work; its first tenth is skewed (a replica that has not yet taken up the other
job fills its window on every server with the one it has, and the servers run what they
hold in order: one run's first tenth gave the heavy tenant 0.10); and over a second the
share jitters by +-0.1 (8-task batches from two schedulers). So the heavy job has three
times the tasks and the first and last tenths of the span are left out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.client import GatewayClient, read_local_job
from tests.faults.harness import assert_each_task_once, write_job
from tests.faults.replicas import (
    finish_times,
    start_replica,
    start_replica_fleet,
    stop_replica_fleet,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(300)]

TASKS = {"heavy": 4500, "light": 1500}  # ~20 s both backlogged at ~160 results/s
REPLICAS = 2
WEIGHTS = {"heavy": 3, "light": 1}
EXPECTED = WEIGHTS["heavy"] / sum(WEIGHTS.values())
TOLERANCE = 0.05  # the runs so far: see docs/guarantees.md


def share_between(heavy: list[float], light: list[float], lo: float, hi: float) -> float:
    h = sum(1 for t in heavy if lo <= t <= hi)
    n = sum(1 for t in light if lo <= t <= hi)
    return h / (h + n)


def share_while_both_backlogged(heavy: list[float], light: list[float]) -> float:
    """The heavy tenant's share of the results stored from the later of the two jobs'
    first results to the earlier of their last, less a tenth of that span at each end
    (the other replica taking each job up; the tail, when a window drains). Prints it a
    tenth at a time."""
    start, end = max(heavy[0], light[0]), min(heavy[-1], light[-1])
    step = (end - start) / 10
    tenths = [
        share_between(heavy, light, start + i * step, start + (i + 1) * step) for i in range(10)
    ]
    print(f"both backlogged {end - start:.1f} s; by tenths: {' '.join(f'{x:.2f}' for x in tenths)}")
    return share_between(heavy, light, start + step, end - step)


async def run_jobs(tmp_path: Path, addresses: list[str]) -> list[tuple[str, list[dict]]]:
    """Each tenant's job through its own replica; every result read back through the other."""
    clients = [GatewayClient([a]) for a in addresses]
    try:
        for client in clients:
            await client.wait_ready()
        files = [
            write_job(tmp_path / name, TASKS[name], name=name, schedule=f"{{tenant: {name}}}")
            for name in WEIGHTS
        ]
        jobs = await asyncio.gather(
            *(c.submit(read_local_job(f, {}, None)) for c, f in zip(clients, files, strict=True))
        )
        outs: list[tuple[str, list[dict]]] = []
        for job, client in zip(jobs, reversed(clients), strict=True):
            buffer = _Lines()
            await asyncio.wait_for(client.follow_results(job.job_id, buffer), 180)
            outs.append((job.job_id, buffer.lines))
        return outs
    finally:
        for client in clients:
            await client.close()


class _Lines:
    def __init__(self) -> None:
        self.lines: list[dict] = []

    def write(self, text: str) -> None:
        self.lines += [json.loads(line) for line in text.splitlines() if line]

    def flush(self) -> None:
        pass


def test_two_tenants_weighted_3_to_1_share_two_replicas_3_to_1(
    tmp_path: Path, database: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "tenants:\n" + "".join(f"  {t}: {{weight: {w}}}\n" for t, w in WEIGHTS.items())
    )
    fleet, replicas = start_replica_fleet(tmp_path / "fleet", database, 0)
    try:
        extra = ("--log-level", "INFO", "--config", str(config))
        replicas += [start_replica(fleet, i, database, extra) for i in range(REPLICAS)]
        (heavy_id, heavy), (light_id, light) = asyncio.run(
            run_jobs(tmp_path, [r.address for r in replicas])
        )
    except BaseException:
        for i in range(len(replicas)):  # what the replicas said, for the failure's report
            print(f"--- replica {i}:\n{(fleet.data_dir / f'replica-{i}.log').read_text()[-4000:]}")
        raise
    finally:
        stop_replica_fleet(fleet, replicas)
    assert_each_task_once(heavy, TASKS["heavy"])
    assert_each_task_once(light, TASKS["light"])
    share = share_while_both_backlogged(
        asyncio.run(finish_times(database, heavy_id)), asyncio.run(finish_times(database, light_id))
    )
    print(f"heavy tenant's share on {REPLICAS} replicas: {share:.3f} (weights: {EXPECTED:.3f})")
    assert abs(share - EXPECTED) <= TOLERANCE, f"{share:.3f} of the results, not {EXPECTED:.3f}"
