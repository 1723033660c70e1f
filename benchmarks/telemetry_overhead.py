"""Telemetry overhead: the gateway throughput benchmark (a matrix job through a real
gateway and echo inference servers) with telemetry off and fully on, interleaved
(off, on, off, on, ...) because the machine is noisy; medians compared.

- off: no OTLP endpoint (the default): providers installed, nothing exported, no task spans;
- on: OTEL_EXPORTER_OTLP_ENDPOINT at an OTLP/gRPC receiver in this process: traces (every
  task span, parent-based always-on sampling), metrics and logs exported by both processes.

    .venv/bin/python benchmarks/telemetry_overhead.py [--tasks 20000] [--servers 2] [--rounds 2]

Last line: telemetry_overhead_ratio=X (median tasks/s on / median tasks/s off; goal >= 0.95)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway_throughput import run_gateway  # noqa: E402

from tests.telemetry.otlp_receiver import OtlpReceiver  # noqa: E402


async def one_run(tasks: int, servers: int, on: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-tel-") as tmp:
        if not on:
            return await run_gateway(tasks, servers, Path(tmp))
        with OtlpReceiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
            result = await run_gateway(tasks, servers, Path(tmp), env=env)
            # run_gateway stops the fleet with SIGTERM, so both processes have flushed.
            result["spans"] = len(receiver.spans())
            result["task_spans"] = sum(1 for s in receiver.spans() if s.name == "task")
            result["metric_exports"] = len(receiver.requests("metrics"))
            result["log_records"] = len(receiver.logs())
            return result


def describe(label: str, run: dict[str, float]) -> str:
    text = (
        f"{label}: {run['tasks']:.0f} tasks in {run['seconds']:.2f} s = {run['tasks_per_s']:.0f} tasks/s, "
        f"gateway CPU {run['gateway_cpu_us_per_task']:.0f} us/task, peak RSS {run['peak_rss_mb']:.0f} MB"
    )
    if "spans" in run:
        text += (
            f"; received {run['spans']:.0f} spans ({run['task_spans']:.0f} task spans), "
            f"{run['metric_exports']:.0f} metric exports, {run['log_records']:.0f} log records"
        )
    return text


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    args = parser.parse_args()
    # "off" must mean off: nothing inherited from the shell may switch export on.
    for name in [n for n in os.environ if n.startswith(("OTEL_", "BATCHINFER_"))]:
        del os.environ[name]
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_no in range(1, args.rounds + 1):
        for on in (False, True):
            run = await one_run(args.tasks, args.servers, on)
            rates[on].append(run["tasks_per_s"])
            print(describe(f"round {round_no} telemetry {'on ' if on else 'off'}", run), flush=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"median tasks/s: off {off:.0f}, on {on:.0f}")
    print(f"telemetry_overhead_ratio={on / off:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
