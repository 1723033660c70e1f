"""Real gateways with principals for the security tests: a principals file, job files, a
sync gRPC client that sends a bearer token, and the audit lines of a gateway's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.principals import token_sha256

ROOT = Path(__file__).resolve().parents[2]

# name -> (token, tenants, extra fields)
PRINCIPALS = {
    "alice": ("tok-alice-7f3a9c", ["team-a", "team-c"], "roles: [templates]"),
    "bob": ("tok-bob-51d2e8", ["team-b"], ""),
    "carol": ("tok-carol-a04b6f", ["team-b"], "roles: [templates]"),
    "ops": ("tok-ops-c9e1d7", [], "admin: true"),
}
TOKENS = {name: token for name, (token, _, _) in PRINCIPALS.items()}


def principals_yaml(extra: str = "", cert_cns: dict[str, str] | None = None) -> str:
    """The principals above; `cert_cns` adds a cert_cn to some of them."""
    lines = ["principals:"]
    for name, (token, tenants, more) in PRINCIPALS.items():
        fields = [f"name: {name}", f"token_sha256: {token_sha256(token)}"]
        if tenants:
            fields.append(f"tenants: [{', '.join(tenants)}]")
        if cert_cns and name in cert_cns:
            fields.append(f"cert_cn: {cert_cns[name]}")
        if more:
            fields.append(more)
        lines.append("  - {" + ", ".join(fields) + "}")
    return "\n".join(lines) + "\n" + extra


def job_yaml(name: str = "sec", rows: int = 3, schedule: str = "", extends: str = "") -> str:
    items = ", ".join(f"{{n: {i}}}" for i in range(rows))
    text = f"version: 1\nname: {name}\n"
    if extends:
        text += f"extends: {extends}\n"
    text += (
        "model: echo\ntask: generate\ntemplate: 'w{{ n }} x y'\n"
        "params: {max_new_tokens: 2}\n"
        f"inputs:\n  rows: [{items}]\n  id: 't{{{{ n }}}}'\n"
    )
    if schedule:
        text += f"schedule: {{{schedule}}}\n"
    return text


def metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass
class Caller:
    """A sync client of one gateway that sends one token (or none)."""

    stub: gateway_pb2_grpc.BatchGatewayStub
    token: str | None

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return metadata(self.token)

    def submit(self, text: str, key: str = "") -> gateway_pb2.Job:
        spec = gateway_pb2.JobSpec(job_yaml=text, filename="job.yaml", idempotency_key=key)
        requests = iter([gateway_pb2.SubmitJobRequest(spec=spec)])
        return self.stub.SubmitJob(requests, metadata=self.md, timeout=30).job

    def validate(self, text: str) -> gateway_pb2.ValidateJobResponse:
        spec = gateway_pb2.JobSpec(job_yaml=text, filename="job.yaml")
        requests = iter([gateway_pb2.ValidateJobRequest(spec=spec, show_tasks=1)])
        return self.stub.ValidateJob(requests, metadata=self.md, timeout=30)

    def code(self, rpc: str, job_id: str = "") -> tuple[grpc.StatusCode, str]:
        """Calls `rpc` on the job; (status code, details)."""
        try:
            self.invoke(rpc, job_id)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    def invoke(self, rpc: str, job_id: str) -> object:
        kw = {"metadata": self.md, "timeout": 10}
        s = self.stub
        if rpc == "GetJob":
            return s.GetJob(gateway_pb2.GetJobRequest(job_id=job_id), **kw)
        if rpc == "WatchJob":
            call = s.WatchJob(gateway_pb2.WatchJobRequest(job_id=job_id), **kw)
            first = next(iter(call))
            call.cancel()
            return first
        if rpc == "StreamResults":
            request = gateway_pb2.StreamResultsRequest(job_id=job_id, no_follow=True)
            return list(s.StreamResults(request, **kw))
        if rpc == "CancelJob":
            return s.CancelJob(gateway_pb2.CancelJobRequest(job_id=job_id), **kw)
        if rpc == "PauseJob":
            return s.PauseJob(gateway_pb2.PauseJobRequest(job_id=job_id), **kw)
        if rpc == "ResumeJob":
            return s.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=job_id), **kw)
        if rpc == "UpdateJob":
            return s.UpdateJob(gateway_pb2.UpdateJobRequest(job_id=job_id, priority=4), **kw)
        if rpc == "ListJobs":
            return s.ListJobs(gateway_pb2.ListJobsRequest(), **kw)
        if rpc == "ListTemplates":
            return s.ListTemplates(gateway_pb2.ListTemplatesRequest(), **kw)
        if rpc == "SubmitJob":
            return self.submit(job_yaml("probe"))
        if rpc == "ValidateJob":
            return self.validate(job_yaml("probe"))
        raise ValueError(rpc)


def audit_lines(log_path: Path) -> list[dict]:
    """The gateway.audit records of a gateway's JSON log."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"gateway.audit"' not in line:
            continue
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def log_files(folder: Path) -> Iterator[Path]:
    yield from (p for p in folder.rglob("*") if p.is_file() and p.suffix in (".log", ".txt"))


def cli(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`batchinfer ARGS` as a subprocess; its output is appended to log_path and returned."""
    environ = {k: v for k, v in os.environ.items() if k != "BATCHINFER_TOKEN"}
    environ.update({"COLUMNS": "200", "TERM": "dumb", **(env or {})})
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=120,
    )
    output = done.stdout + done.stderr
    shown = ["***" if i and args[i - 1] == "--token" else a for i, a in enumerate(args)]
    with log_path.open("a") as handle:  # what the CLI printed, and its arguments less tokens
        handle.write(f"$ batchinfer {' '.join(shown)}\n{output}\n")
    return done.returncode, output
