"""Gateway throughput: a large matrix job from submission to the last result
line written, through a real gateway and echo inference servers (zero delay),
beside a raw grpc.aio echo of the same task messages (the transport ceiling).

    .venv/bin/python benchmarks/gateway_throughput.py [--tasks 100000] [--servers 2] [--profile]

It prints the gateway's CPU per task by thread (exact, from /proc) and, with --profile,
by area (store, scheduler, gRPC, telemetry) from py-spy samples: benchmarks/cpu_split.py.

Last line: gateway_tasks_per_s=N ratio_vs_raw_grpc=X time_to_first_result_s=Y peak_rss_mb=Z
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import grpc  # noqa: E402
from batchinfer.v1 import inference_pb2, inference_pb2_grpc, task_pb2  # noqa: E402
from cpu_split import Sampler, split, thread_cpu  # noqa: E402

from gateway.client import GatewayClient, read_local_job  # noqa: E402
from gateway.local import LocalFleet  # noqa: E402

BATCH = 64


def matrix_job(tasks: int, folder: Path) -> Path:
    """A matrix job of about `tasks` rows: a x b with a * b == tasks when possible."""
    a = 100 if tasks >= 100 else 1
    b = math.ceil(tasks / a)
    text = (
        "version: 1\nname: throughput\nmodel: echo-model\ntask: generate\n"
        "template: 'Write one line about item {{ a }}-{{ b }}.'\n"
        "params: {max_new_tokens: 8}\n"
        f"inputs:\n  matrix: {{a: {list(range(a))}, b: {list(range(b))}}}\n  id: 't{{{{ a }}}}-{{{{ b }}}}'\n"
    )
    path = folder / "throughput.yaml"
    path.write_text(text)
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Samples a process's resident memory (VmHWM is kept by the kernel; this is a fallback)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, peak_rss_mb(self.pid))
            except OSError:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


async def run_gateway(
    tasks: int,
    servers: int,
    folder: Path,
    env: dict[str, str] | None = None,
    profile: bool = False,
) -> dict[str, float]:
    job_path = matrix_job(tasks, folder)
    fleet = LocalFleet(folder)
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        fleet.start_workers(
            servers,
            "echo",
            "echo-model",
            extra=["--max-queued-tasks", "1024", "--max-batch-size", "256"],
        )
        gateway = fleet.start_gateway()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    sampler = RssSampler(gateway.popen.pid)
    spy = Sampler(gateway.popen.pid, folder / "gateway.spy") if profile else None
    client = GatewayClient(gateway.address)
    try:
        await client.wait_ready()
        local = read_local_job(job_path, {}, None)
        first: list[float] = []
        count = 0

        def on_result(_line: dict) -> None:
            nonlocal count
            count += 1
            if not first:
                first.append(time.perf_counter())

        started = time.perf_counter()
        client_cpu_start = time.process_time()
        job = await client.submit(local)
        with (folder / "results.jsonl").open("w") as out:
            await client.follow_results(job.job_id, out, on_result)
        elapsed = time.perf_counter() - started
        final = await client.get(job.job_id)
        rss = max(sampler.stop(), peak_rss_mb(gateway.popen.pid))
        gateway_cpu = cpu_seconds(gateway.popen.pid)
        threads = thread_cpu(gateway.popen.pid)
        servers_cpu = sum(cpu_seconds(w.popen.pid) for w in fleet.workers)
        client_cpu = time.process_time() - client_cpu_start
    finally:
        await client.close()
        fleet.stop()
    areas = split(threads, spy.stop()) if spy is not None else {}
    ids = set()
    with (folder / "results.jsonl").open() as handle:
        for line in handle:
            ids.add(json.loads(line)["id"])
    assert len(ids) == count == final.counts.total, (len(ids), count, final.counts.total)
    return {
        "tasks": count,
        "seconds": elapsed,
        "tasks_per_s": count / elapsed,
        "first_result_s": first[0] - started if first else float("nan"),
        "peak_rss_mb": rss,
        "succeeded": final.counts.succeeded,
        "gateway_cpu_us_per_task": gateway_cpu / max(count, 1) * 1e6,
        "servers_cpu_us_per_task": servers_cpu / max(count, 1) * 1e6,
        "client_cpu_us_per_task": client_cpu / max(count, 1) * 1e6,
        **{f"thread_{k}_us": v / max(count, 1) * 1e6 for k, v in threads.items()},
        **{f"area_{k}_us": v / max(count, 1) * 1e6 for k, v in areas.items()},
    }


class RawEcho(inference_pb2_grpc.InferenceServerServicer):
    async def Process(self, request_iterator, context):
        async for request in request_iterator:
            results = [
                task_pb2.TaskResult(task_id=t.task_id, text=task_pb2.TextOutput(text=t.prompt[:32]))
                for t in request.batch.tasks
            ]
            yield inference_pb2.ProcessResponse(results=results, credits=len(results))


async def run_raw(tasks: int) -> dict[str, float]:
    """The same Task messages, 64 per message, echoed by a bare grpc.aio server."""
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServerServicer_to_server(RawEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    batches = []
    for start in range(0, tasks, BATCH):
        batch = inference_pb2.TaskBatch(
            tasks=[
                task_pb2.Task(
                    task_id=str(i),
                    task_type=task_pb2.TASK_TYPE_GENERATE,
                    model="echo-model",
                    prompt=f"Write one line about item {i}.",
                    params=task_pb2.GenerationParams(max_new_tokens=8),
                )
                for i in range(start, min(start + BATCH, tasks))
            ]
        )
        batches.append(inference_pb2.ProcessRequest(batch=batch))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.InferenceServerStub(channel)

        async def requests():
            for request in batches:
                yield request

        started = time.perf_counter()
        got = 0
        async for response in stub.Process(requests()):
            got += len(response.results)
            if got >= tasks:
                break
        elapsed = time.perf_counter() - started
    await server.stop(None)
    return {"tasks": got, "seconds": elapsed, "tasks_per_s": got / elapsed}


def _us(figures: dict[str, float], prefix: str) -> str:
    return ", ".join(
        f"{key[len(prefix) : -3]} {value:.0f} us"
        for key, value in figures.items()
        if key.startswith(prefix)
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument(
        "--profile", action="store_true", help="sample the gateway with py-spy (CPU by area)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        raw = await run_raw(args.tasks)
        print(
            f"raw grpc.aio echo: {raw['tasks']} tasks in {raw['seconds']:.2f} s = {raw['tasks_per_s']:.0f} tasks/s"
        )
        gw = await run_gateway(args.tasks, args.servers, Path(tmp), profile=args.profile)
        print(
            f"gateway + {args.servers} echo servers: {gw['tasks']} tasks in {gw['seconds']:.2f} s = "
            f"{gw['tasks_per_s']:.0f} tasks/s; first result after {gw['first_result_s']:.3f} s; "
            f"gateway peak RSS {gw['peak_rss_mb']:.0f} MB"
        )
        print(
            f"CPU per task: gateway {gw['gateway_cpu_us_per_task']:.0f} us, echo servers "
            f"{gw['servers_cpu_us_per_task']:.0f} us, client (results file) {gw['client_cpu_us_per_task']:.0f} us "
            f"on {os.cpu_count()} cores"
        )
        print("gateway CPU per task by thread: " + _us(gw, "thread_"))
        if args.profile:
            print("gateway CPU per task by area (py-spy samples): " + _us(gw, "area_"))
    print(
        f"gateway_tasks_per_s={gw['tasks_per_s']:.0f} ratio_vs_raw_grpc={gw['tasks_per_s'] / raw['tasks_per_s']:.3f} "
        f"time_to_first_result_s={gw['first_result_s']:.3f} peak_rss_mb={gw['peak_rss_mb']:.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
