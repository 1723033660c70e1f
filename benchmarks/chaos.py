"""Chaos: a 20,000-task echo job on 3 inference servers while a random server is
SIGKILLed and restarted (same port) every few seconds and the gateway is restarted
(same port and data dir) four times, by SIGKILL and SIGTERM in turn. The client is
the real CLI, `batchinfer submit --watch`, which must reconnect and write each
result once.

    .venv/bin/python benchmarks/chaos.py [--tasks 20000] [--servers 3] [--delay-ms 70]

recomputed = the sum over result lines of (attempts - 1) + requeues: every extra
attempt or requeue is one more lease of the task, i.e. one more time it was sent to
a server. It is an upper bound on the tasks the servers computed twice (a leased
task may die before a server ran it). inflight_at_kills = for each gateway SIGKILL,
the tasks it held leased (the restarted gateway logs "requeued N"), for each gateway
SIGTERM what its drain gave back ("N tasks given back"); for each server kill, the
job's running count just before it, capped at the server's credit window (256): an
upper bound for the killed one.
Goal: lost=0, duplicated=0, failed=0, recomputed <= inflight_at_kills.

Last line: tasks=N lost=L duplicated=D failed=F recomputed=R wall_s=T
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.client import GatewayClient  # noqa: E402
from tests.faults.harness import FaultFleet, Watcher, write_job  # noqa: E402

CREDITS = 256  # an inference server's default max_queued_tasks: its in-flight window


def running_now(address: str, job_id: str) -> int:
    """The job's running count, or 0 if the gateway does not answer at once."""

    async def ask() -> int:
        client = GatewayClient(address)
        try:
            job = await asyncio.wait_for(client.get(job_id), 2.0)
            return int(job.counts.running)
        finally:
            await client.close()

    try:
        return asyncio.run(ask())
    except Exception:
        return 0


def chaos(args: argparse.Namespace, workdir: Path) -> None:
    rng = random.Random(args.seed)
    fleet = FaultFleet(workdir / "fleet", delay_ms=args.delay_ms).start(args.servers)
    started = time.monotonic()
    inflight = server_kills = gateway_kills = 0
    try:
        job = write_job(workdir / "job", args.tasks, name="chaos")
        watcher = Watcher.submit(job, fleet.gateway_address, workdir / "results.jsonl")
        job_id = watcher.job_id()
        gateway_kill_at = [args.gateway_kill_s * (i + 1) for i in range(args.gateway_restarts)]
        while watcher.popen.poll() is None:
            time.sleep(args.kill_every_s * (0.5 + rng.random()))
            if watcher.popen.poll() is not None:
                break
            elapsed = time.monotonic() - started
            if gateway_kill_at and elapsed >= gateway_kill_at[0]:
                gateway_kill_at.pop(0)
                assert fleet.gateway is not None
                if gateway_kills % 2 == 0:
                    fleet.kill_gateway()
                    how = "SIGKILLed"
                else:
                    code = fleet.gateway.stop(timeout=60)
                    how = f"SIGTERMed (exit {code})"
                fleet.start_gateway()
                gateway_kills += 1
                print(f"{elapsed:6.1f}s  gateway {how} and restarted", flush=True)
                continue
            worker = rng.choice(fleet.workers)
            running = running_now(fleet.gateway_address, job_id)
            worker.kill()
            worker.start()
            inflight += min(running, CREDITS)
            server_kills += 1
            print(
                f"{elapsed:6.1f}s  server {worker.address} SIGKILLed and restarted "
                f"(job running: {running})",
                flush=True,
            )
        code = watcher.wait(timeout=600)
        wall = time.monotonic() - started
    finally:
        fleet.stop()
    log = (workdir / "fleet" / "gateway.log").read_text(errors="replace")
    inflight += sum(int(n) for n in re.findall(r"requeued (\d+) tasks leased", log))
    inflight += sum(int(n) for n in re.findall(r"(\d+) tasks given back", log))
    report(watcher, args.tasks, code, wall, inflight, server_kills, gateway_kills)


def report(
    watcher: Watcher, tasks: int, code: int, wall: float, inflight: int, sk: int, gk: int
) -> None:
    lines = watcher.lines()
    ids = Counter(line["id"] for line in lines)
    lost = len({f"t{i}" for i in range(tasks)} - set(ids))
    duplicated = sum(n - 1 for n in ids.values() if n > 1)
    failed = sum(line["status"] != "succeeded" for line in lines)
    recomputed = sum(line["attempts"] - 1 + line.get("requeues", 0) for line in lines)
    attempts = Counter(line["attempts"] for line in lines)
    requeues = Counter(line.get("requeues", 0) for line in lines)
    print(f"client exit code {code}; server kills {sk}; gateway restarts {gk}")
    print(f"attempts histogram {dict(sorted(attempts.items()))}")
    print(f"requeues histogram {dict(sorted(requeues.items()))}; inflight_at_kills={inflight}")
    print(
        f"tasks={tasks} lost={lost} duplicated={duplicated} failed={failed} "
        f"recomputed={recomputed} wall_s={wall:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=70.0, help="echo delay per token")
    parser.add_argument("--kill-every-s", type=float, default=4.0)
    parser.add_argument(
        "--gateway-kill-s", type=float, default=15.0, help="gateway restarts at T, 2T, 3T, ..."
    )
    parser.add_argument("--gateway-restarts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and results here")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        chaos(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            chaos(args, Path(tmp))


if __name__ == "__main__":
    main()
