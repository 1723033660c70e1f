"""`batchinfer validate JOB.yaml`: check a job file and show what it expands to."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway.cli_credentials import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenOption,
    credentials,
)
from gateway.jobfile import (
    JobFileError,
    JobSpec,
    Problem,
    RenderedTask,
    count_rows,
    expand_all,
    load_job,
)

MAX_ROW_PROBLEMS = 50  # listed; more are counted
DEFAULT_MAX_TASKS = 5_000_000  # the gateway's default --max-job-tasks
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def build_variables(sets: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """Variables for ${...}: the environment, overridden by each --set NAME=value."""
    out = dict(environ)
    for item in sets:
        name, eq, value = item.partition("=")
        if not eq or not _NAME.match(name.strip()):
            raise ValueError(f"--set expects NAME=value (NAME of letters, digits, _), got {item!r}")
        out[name.strip()] = value
    return out


@dataclass
class Report:
    """What validate found, for either output form."""

    file: str
    job: JobSpec | None = None
    name: str | None = None
    model: str | None = None
    task: str | None = None
    profile: str | None = None
    tasks: int = 0
    checked: int | None = None  # tasks rendered one by one, when fewer than all (gateway)
    prompt_tokens: int = 0
    new_tokens: int = 0
    shown: list[RenderedTask] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    expanded: bool = True  # False: refused before expanding (too many tasks)


def validate(
    job: Annotated[Path, typer.Argument(help="The job file (YAML).")],
    set_: Annotated[
        list[str],
        typer.Option(
            "--set", help="NAME=value for ${NAME}; repeatable; wins over the environment."
        ),
    ] = [],  # noqa: B006 (typer reads the default; it is never mutated)
    profile: Annotated[
        str | None, typer.Option("--profile", help="A profile of the job to apply.")
    ] = None,
    show: Annotated[
        int, typer.Option("--show", min=0, help="How many rendered tasks to print.")
    ] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    max_tasks: Annotated[
        int,
        typer.Option(
            "--max-tasks", min=1, help="Refuse a job of more tasks (the gateway's --max-job-tasks)."
        ),
    ] = DEFAULT_MAX_TASKS,
    allow_outside_paths: Annotated[
        bool,
        typer.Option(
            "--allow-outside-paths",
            help="Let extends and inputs.file name files outside the job's folder.",
        ),
    ] = False,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            "-g",
            help="Ask this gateway (HOST:PORT) for a dry run instead: its limits, its "
            "registered templates, its --max-job-tasks.",
        ),
    ] = None,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Check a job file: count its tasks, show the first ones, estimate tokens; exit 2 on problems."""
    if gateway is not None:
        from gateway.cli_validate_remote import check_at_gateway

        creds = credentials(token, tls_ca, tls_cert, tls_key)
        show = min(show, 100)
        report = check_at_gateway(gateway, job, set_, profile, show, os.environ, creds)
    else:
        report = check(
            job,
            set_,
            profile,
            show,
            os.environ,
            max_tasks=max_tasks,
            allow_outside_paths=allow_outside_paths,
        )
    if json_output:
        typer.echo(json.dumps(_as_json(report), indent=2, ensure_ascii=False))
    else:
        _print(report, Console(highlight=False, soft_wrap=False))
    if report.problems:
        raise typer.Exit(2)


def check(
    path: Path,
    sets: list[str],
    profile: str | None,
    show: int,
    environ: Mapping[str, str],
    *,
    max_tasks: int = DEFAULT_MAX_TASKS,
    allow_outside_paths: bool = False,
) -> Report:
    """Load and expand the whole job, gathering every problem; a job of more than
    `max_tasks` is refused after counting (stopping at the cap), without expanding it."""
    report = Report(file=str(path))
    try:
        variables = build_variables(sets, environ)
        report.job = load_job(
            path, variables=variables, profile=profile, allow_outside_paths=allow_outside_paths
        )
        rows = count_rows(report.job, stop_at=max_tasks + 1) * len(report.job.model_names())
    except ValueError as exc:  # JobFileError is a ValueError too
        report.problems = exc.problems if isinstance(exc, JobFileError) else [Problem(str(exc))]
        return report
    except (RecursionError, MemoryError, OSError) as exc:  # one line, not a traceback
        report.problems = [Problem(f"cannot check the job: {type(exc).__name__}: {exc}", str(path))]
        return report
    report.name, report.model, report.task = report.job.name, report.job.model, report.job.task
    report.profile = report.job.profile
    if rows > max_tasks:
        many = f"{rows:,}" if report.job.inputs.file is None else f"at least {rows:,}"
        message = f"the job has {many} tasks; at most {max_tasks:,} (--max-tasks)"
        report.problems = [Problem(message, report.job.source, None, "inputs")]
        report.tasks, report.expanded = rows, False
        return report
    max_new = report.job.params.max_new_tokens or 0
    for item in _expand(report.job):
        if isinstance(item, Problem):
            if len(report.problems) < MAX_ROW_PROBLEMS:
                report.problems.append(item)
            else:
                report.more_problems += 1
            continue
        report.tasks += 1
        report.prompt_tokens += item.est_tokens - max_new
        report.new_tokens += max_new
        if len(report.shown) < show:
            report.shown.append(item)
    return report


def _expand(job: JobSpec) -> Iterator[RenderedTask | Problem]:
    try:
        yield from expand_all(job)
    except JobFileError as exc:
        yield from exc.problems


def _as_json(report: Report) -> dict[str, Any]:
    return {
        "ok": not report.problems,
        "file": report.file,
        "name": report.name,
        "model": report.model,
        "task": report.task,
        "profile": report.profile,
        "tasks": report.tasks,
        "prompt_tokens": report.prompt_tokens,
        "max_new_tokens": report.new_tokens,
        "shown": [_task_json(t) for t in report.shown],
        "problems": [p.as_dict() for p in report.problems],
        "more_problems": report.more_problems,
    }


def _task_json(task: RenderedTask) -> dict[str, Any]:
    return {
        "index": task.index,
        "id": task.task_id,
        "task_type": task.task_type,
        "prompt": task.prompt,
        "messages": [{"role": r, "content": c} for r, c in task.messages],
        "labels": list(task.labels),
        "continuation": task.continuation,
        "params": dict(task.params),
        "input_hash": task.input_hash,
        "est_tokens": task.est_tokens,
        "shard_key": task.shard_key,
    }


def _print(report: Report, console: Console) -> None:
    if report.problems:
        total = len(report.problems) + report.more_problems
        noun = "problem" if total == 1 else "problems"
        console.print(Text(f"{report.file}: {total} {noun}", style="bold red"))
        for problem in report.problems:
            console.print(Text(f"  {problem}"), soft_wrap=True)
        if report.more_problems:
            console.print(Text(f"  ... and {report.more_problems} more rows with problems"))
        if report.name is None or not report.expanded:
            return
    status = "ok" if not report.problems else "expanded with problems"
    profile = f", profile {report.profile}" if report.profile else ""
    console.print(
        Text(f"{report.file}: {status}", style="bold green" if not report.problems else "bold")
    )
    console.print(
        Text(f"  job {report.name}: {report.tasks} {report.task} tasks on {report.model}{profile}")
    )
    scaled = ""
    if report.checked is not None and report.checked < report.tasks:
        scaled = f", scaled from the first {report.checked:,} tasks"
    console.print(
        Text(
            f"  prompt tokens ~{report.prompt_tokens:,} (characters/4); new tokens up to "
            f"{report.new_tokens:,}{scaled}"
        )
    )
    if report.shown:
        console.print(_tasks_table(report.shown))


def _tasks_table(tasks: list[RenderedTask]) -> Table:
    table = Table(title=f"first {len(tasks)} tasks", title_justify="left", show_lines=True)
    table.add_column("id", no_wrap=True)
    table.add_column("input")
    table.add_column("tokens", justify="right")
    for task in tasks:
        table.add_row(Text(task.task_id), Text(_input_text(task)), Text(str(task.est_tokens)))
    return table


def _input_text(task: RenderedTask) -> str:
    parts = [f"{role}: {content}" for role, content in task.messages] or [task.prompt]
    if task.labels:
        parts.append(f"labels: {', '.join(task.labels)}")
    if task.continuation:
        parts.append(f"continuation: {task.continuation}")
    return "\n".join(parts)
