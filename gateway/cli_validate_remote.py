"""`batchinfer validate JOB --gateway ADDR`: the gateway's dry run (ValidateJob) of the
job file and what it refers to, shown like a local check. The gateway applies its own
limits, registered templates and --max-job-tasks; a problem keeps its file, line,
column and row (the JobFileProblems detail)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import typer
import yaml
from batchinfer.v1 import gateway_pb2
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.markup import escape

from gateway.channels import NO_CREDENTIALS, Credentials
from gateway.cli_validate import Report, build_variables
from gateway.client import GatewayClient, GatewayUnavailable
from gateway.convert import TASK_TYPE_NAMES
from gateway.jobfile import JobFileError, Problem, RenderedTask, load_job

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
EXIT_ERROR = 1


def check_at_gateway(
    address: str,
    path: Path,
    sets: list[str],
    profile: str | None,
    show: int,
    environ: Mapping[str, str],
    credentials: Credentials = NO_CREDENTIALS,
) -> Report:
    report = Report(file=str(path))
    try:
        variables = build_variables(sets, environ)
        spec, input_path = gather(path, variables, profile)
    except (ValueError, OSError) as exc:
        report.problems = [Problem(f"cannot read the job: {exc}", str(path))]
        return report
    try:
        response = asyncio.run(_ask(address, spec, input_path, show, credentials))
    except GatewayUnavailable as exc:
        raise _fail(f"cannot reach the gateway at {address} ({exc.reason})") from None
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            details = " ".join((exc.details() or "").split())
            raise _fail(f"the gateway at {address}: {details} ({exc.code().name})") from None
        report.problems = problems_of(exc)
        return report
    report.name, report.model = response.name, response.model
    report.task = TASK_TYPE_NAMES.get(response.task_type, "?")
    report.profile = response.profile or None
    report.tasks, report.checked = response.task_count, response.checked_tasks
    report.prompt_tokens, report.new_tokens = response.prompt_tokens, response.max_new_tokens
    report.shown = [_rendered(t) for t in response.tasks]
    return report


def gather(
    path: Path, variables: Mapping[str, str], profile: str | None
) -> tuple[gateway_pb2.JobSpec, Path | None]:
    """The job file, the files it extends and the variables it names, read here (inside
    its folder); its problems are left to the gateway to find."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    files: dict[str, str] = {}

    def read_file(relative: str) -> str:
        files[relative] = (path.parent / relative).read_text(encoding="utf-8")
        return files[relative]

    try:
        input_path = load_job(
            path, variables=variables, profile=profile, read_file=read_file
        ).input_file_path()
    except JobFileError:  # e.g. it extends a template registered at the gateway
        input_path = _input_file_named(text, path)
    named = set(_VARIABLE.findall(text)).union(*(_VARIABLE.findall(t) for t in files.values()))
    spec = gateway_pb2.JobSpec(
        job_yaml=text,
        variables={name: variables[name] for name in named if name in variables},
        profile=profile or "",
        filename=path.name,
        files=files,
    )
    return spec, input_path


def _input_file_named(text: str, path: Path) -> Path | None:
    """inputs.file of a job that did not load here, when it is a plain relative path."""
    try:
        data: Any = yaml.safe_load(text)
        name = data["inputs"]["file"]
    except (yaml.YAMLError, TypeError, KeyError):
        return None
    if not isinstance(name, str) or "${" in name or Path(name).is_absolute() or ".." in name:
        return None
    found = path.parent / name
    return found if found.is_file() else None


async def _ask(
    address: str,
    spec: gateway_pb2.JobSpec,
    input_path: Path | None,
    show: int,
    credentials: Credentials,
) -> gateway_pb2.ValidateJobResponse:
    client = GatewayClient(address, reconnect_for_s=0, credentials=credentials)
    try:
        return await client.validate(spec, input_path, show)
    finally:
        await client.close()


def problems_of(exc: grpc.aio.AioRpcError) -> list[Problem]:
    """The problems an INVALID_ARGUMENT carries: JobFileProblems, else BadRequest."""
    status = rpc_status.from_call(exc)
    details = list(status.details) if status is not None else []
    for detail in details:
        found = gateway_pb2.JobFileProblems()
        if detail.Unpack(found):
            return [
                Problem(
                    p.message,
                    p.file or None,
                    p.line or None,
                    p.field or None,
                    p.row or None,
                    column=p.column or None,
                )
                for p in found.problems
            ]
    for detail in details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [Problem(v.description, field=v.field) for v in bad.field_violations]
    return [Problem(exc.details() or "invalid")]


def _rendered(item: gateway_pb2.ValidatedTask) -> RenderedTask:
    task = item.task
    params = json_format.MessageToDict(task.params, preserving_proto_field_name=True)
    return RenderedTask(
        index=item.index,
        task_id=task.task_id,
        task_type=TASK_TYPE_NAMES.get(task.task_type, "?"),
        prompt=task.prompt,
        messages=tuple((m.role, m.content) for m in task.messages),
        labels=tuple(task.labels),
        continuation=task.continuation,
        params=params,
        input_hash="",
        est_tokens=item.est_tokens,
        shard_key=None,
    )


def _fail(text: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error[/red]: {escape(text)}", soft_wrap=True)
    return typer.Exit(EXIT_ERROR)
