"""One real job, traced: an OTLP receiver in this process, an echo inference server and a
gateway as subprocesses exporting to it, a job submitted through the public API, both
processes stopped with SIGTERM (so they flush), and everything they exported kept."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from gateway.client import GatewayClient, read_local_job
from gateway.local import Process, gateway_argv, start_process, worker_argv
from tests.logs import asyncio_warnings_in
from tests.telemetry.otlp_receiver import OtlpReceiver, attributes_dict

GATEWAY, SERVER = "batchinfer-gateway", "batchinfer-inference"
MARKER = "secret-prompt"  # every prompt contains it; it must not show up unless asked for
TASKS = 16
MAX_BATCH = 4
SERVER_FLAGS = [
    "--max-batch-size", str(MAX_BATCH), "--max-queued-tasks", str(MAX_BATCH),
    "--echo-delay-ms-per-token", "50", "--metrics-port", "0", "--log-level", "DEBUG",
]  # fmt: skip


@dataclass
class Capture:
    """What one traced job left behind."""

    job_id: str
    results: list[dict[str, Any]]
    receiver: OtlpReceiver
    scraped: dict[str, str] = field(default_factory=dict)
    """Each service's /metrics text, read before it stopped."""
    stderr: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Each service's JSON log lines on stderr."""
    asyncio_warnings: list[str] = field(default_factory=list)
    """asyncio's warnings in any service's log (there must be none)."""

    def spans(self, service: str, name: str | None = None) -> list[trace_pb2.Span]:
        return [
            span
            for svc, span in _by_service(self.receiver, "traces")
            if svc == service and (name is None or span.name == name)
        ]

    def logs(self, service: str) -> list[Any]:
        return [r for svc, r in _by_service(self.receiver, "logs") if svc == service]

    def metric(self, service: str, name: str) -> list[metrics_pb2.Metric]:
        return [
            m
            for svc, m in _by_service(self.receiver, "metrics")
            if svc == service and m.name == name
        ]

    def last_points(self, service: str, name: str) -> dict[frozenset[Any], Any]:
        """The latest data point of each attribute set (exports are cumulative)."""
        points: dict[frozenset[Any], Any] = {}
        for metric in self.metric(service, name):
            data = getattr(metric, metric.WhichOneof("data"))
            for point in data.data_points:
                points[frozenset(attributes_dict(point.attributes).items())] = point
        return points

    def all_points(self, service: str, name: str) -> list[Any]:
        return [
            point
            for metric in self.metric(service, name)
            for point in getattr(metric, metric.WhichOneof("data")).data_points
        ]


def _by_service(receiver: OtlpReceiver, signal: str) -> list[tuple[str, Any]]:
    blocks = {"traces": ("resource_spans", "scope_spans", "spans"),
              "metrics": ("resource_metrics", "scope_metrics", "metrics"),
              "logs": ("resource_logs", "scope_logs", "log_records")}[signal]  # fmt: skip
    found = []
    for request in receiver.requests(signal):
        for resource in getattr(request, blocks[0]):
            service = attributes_dict(resource.resource.attributes).get("service.name")
            for scope in getattr(resource, blocks[1]):
                found += [(service, item) for item in getattr(scope, blocks[2])]
    return found


def write_job(folder: Path) -> Path:
    path = folder / "job.yaml"
    path.write_text(
        "version: 1\nname: traced\nmodel: echo-model\ntask: generate\n"
        f"template: '{MARKER} {{{{ n }}}} alpha beta'\nparams: {{max_new_tokens: 4}}\n"
        f"inputs:\n  matrix: {{n: {list(range(TASKS))}}}\n  id: 't{{{{ n }}}}'\n"
    )
    return path


def telemetry_env(endpoint: str, capture_content: bool) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_SDK_DISABLED": "false",
        "BATCHINFER_CAPTURE_CONTENT": "true" if capture_content else "false",
    }


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def scrape(process: Process) -> str:
    """The process's /metrics text; the port comes from its "serving ... /metrics" log line."""
    assert process.log_path is not None
    ports = [e["metrics_port"] for e in json_lines(process.log_path) if "metrics_port" in e]
    assert ports, f"{process.name} logged no metrics port"
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


async def _submit_and_follow(address: str, job_path: Path, out: Path) -> str:
    client = GatewayClient(address)
    try:
        await client.wait_ready()
        job = await client.submit(read_local_job(job_path, {}, None))
        with out.open("w") as handle:
            await client.follow_results(job.job_id, handle)
        return str(job.job_id)
    finally:
        await client.close()


def run_traced_job(folder: Path, capture_content: bool) -> Capture:
    folder.mkdir(parents=True, exist_ok=True)
    receiver = OtlpReceiver()
    env = telemetry_env(receiver.start(), capture_content)
    processes: dict[str, Process] = {}
    try:
        processes[SERVER] = start_process(
            "inference server",
            worker_argv("echo", "echo-model", extra=SERVER_FLAGS),
            folder / "server.log",
            env=env,
        )
        argv = gateway_argv([processes[SERVER].address], folder, extra=["--metrics-port", "0"])
        processes[GATEWAY] = start_process("gateway", argv, folder / "gateway.log", 60, env)
        out = folder / "results.jsonl"
        job_id = asyncio.run(_submit_and_follow(processes[GATEWAY].address, write_job(folder), out))
        capture = Capture(job_id, json_lines(out), receiver)
        capture.scraped = {service: scrape(p) for service, p in processes.items()}
    finally:
        for process in reversed(list(processes.values())):
            code = process.stop()
            print(f"{process.name} exited {code}", file=sys.stderr)
        receiver.stop()
    capture.stderr = {
        service: json_lines(p.log_path) for service, p in processes.items() if p.log_path
    }
    capture.asyncio_warnings = asyncio_warnings_in(folder)
    return capture
