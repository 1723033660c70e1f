"""Gateway memory with a job far larger than what it serves: a 1,000,000-task
matrix job through a real gateway and one slow echo inference server, so the job
is far from done during the run. Samples the gateway's RSS every second.

    .venv/bin/python benchmarks/memory_bound.py [--tasks 1000000] [--seconds 60] [--delay-ms 20]

Last line: tasks=N done=D peak_rss_mb=X rss_growth_mb_per_100k_done=Y
(growth between the 10 s sample and the last one, per 100,000 tasks done in between;
peak RSS while the job runs, before the rest of it is cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchinfer.v1 import gateway_pb2  # noqa: E402

from gateway.client import GatewayClient, read_local_job  # noqa: E402
from gateway.local import LocalFleet  # noqa: E402


def matrix_job(tasks: int, folder: Path) -> Path:
    side = math.isqrt(tasks)
    if side * side != tasks:
        raise SystemExit(f"--tasks must be a square number, got {tasks}")
    path = folder / "memory.yaml"
    path.write_text(
        "version: 1\nname: memory-bound\nmodel: echo\ntask: generate\n"
        "template: 'Write one line about item {{ a }}-{{ b }}.'\nparams: {max_new_tokens: 2}\n"
        f"inputs:\n  matrix: {{a: {list(range(side))}, b: {list(range(side))}}}\n"
        "  id: 't{{ a }}-{{ b }}'\n"
    )
    return path


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


async def sample(
    address: str, pid: int, job_path: Path, seconds: float
) -> tuple[list[tuple], float]:
    """(elapsed_s, rss_mb, done, total) once a second while the job runs, and the peak
    RSS while it ran (before the rest of it is cancelled)."""
    client = GatewayClient(address)
    try:
        await client.wait_ready()
        started = time.monotonic()
        job = await client.submit(read_local_job(job_path, {}, None))
        print(f"submitted in {time.monotonic() - started:.1f} s: {job.job_id}", flush=True)
        samples = []
        for second in range(1, int(seconds) + 1):
            await asyncio.sleep(max(started + second - time.monotonic(), 0))
            c = (await client.get(job.job_id)).counts
            done = c.succeeded + c.failed + c.cancelled
            samples.append((second, rss_mb(pid), done, c.total))
            print(f"t={second:3d}s rss_mb={samples[-1][1]:7.1f} done={done} total={c.total}")
        running_peak = rss_mb(pid, "VmHWM:")
        started = time.monotonic()
        await client.stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id), timeout=120)
        print(
            f"cancelling the rest took {time.monotonic() - started:.1f} s; peak RSS "
            f"{running_peak:.1f} MB before it, {rss_mb(pid, 'VmHWM:'):.1f} MB after",
            flush=True,
        )
        return samples, running_peak
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--delay-ms", type=float, default=20, help="echo delay per token")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="memory-bound-"))
    fleet = LocalFleet(workdir)
    try:
        fleet.start_workers(
            1, "echo", "echo", extra=["--echo-delay-ms-per-token", str(args.delay_ms)]
        )
        gateway = fleet.start_gateway()
        pid = gateway.popen.pid
        print(f"gateway pid {pid}, rss at start {rss_mb(pid):.1f} MB", flush=True)
        samples, peak = asyncio.run(
            sample(gateway.address, pid, matrix_job(args.tasks, workdir), args.seconds)
        )
    finally:
        fleet.stop()
    at = {s[0]: s for s in samples}
    for second in (10, 30, 60):
        if second in at:
            print(f"rss at {second:2d} s: {at[second][1]:.1f} MB, {at[second][2]} tasks done")
    first, last = at.get(10, samples[0]), samples[-1]
    grown = last[2] - first[2]
    growth = (last[1] - first[1]) / grown * 100_000 if grown else float("nan")
    print(
        f"tasks={args.tasks} done={last[2]} peak_rss_mb={peak:.1f} "
        f"rss_growth_mb_per_100k_done={growth:.1f}"
    )


if __name__ == "__main__":
    main()
