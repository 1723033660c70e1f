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

from gateway.jobfile import JobFileError, JobSpec, Problem, RenderedTask, expand_all, load_job

MAX_ROW_PROBLEMS = 50  # listed; more are counted
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
    tasks: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    shown: list[RenderedTask] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0


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
) -> None:
    """Check a job file: count its tasks, show the first ones, estimate tokens; exit 2 on problems."""
    report = check(job, set_, profile, show, os.environ)
    if json_output:
        typer.echo(json.dumps(_as_json(report), indent=2, ensure_ascii=False))
    else:
        _print(report, Console(highlight=False, soft_wrap=False))
    if report.problems:
        raise typer.Exit(2)


def check(
    path: Path, sets: list[str], profile: str | None, show: int, environ: Mapping[str, str]
) -> Report:
    """Load and expand the whole job, gathering every problem."""
    report = Report(file=str(path))
    try:
        variables = build_variables(sets, environ)
        report.job = load_job(path, variables=variables, profile=profile)
    except ValueError as exc:  # JobFileError is a ValueError too
        report.problems = exc.problems if isinstance(exc, JobFileError) else [Problem(str(exc))]
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
    job = report.job
    return {
        "ok": not report.problems,
        "file": report.file,
        "name": job.name if job else None,
        "model": job.model if job else None,
        "task": job.task if job else None,
        "profile": job.profile if job else None,
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
        if report.job is None:
            return
    job = report.job
    assert job is not None
    status = "ok" if not report.problems else "expanded with problems"
    profile = f", profile {job.profile}" if job.profile else ""
    console.print(
        Text(f"{report.file}: {status}", style="bold green" if not report.problems else "bold")
    )
    console.print(
        Text(f"  job {job.name}: {report.tasks} {job.task} tasks on {job.model}{profile}")
    )
    console.print(
        Text(
            f"  prompt tokens ~{report.prompt_tokens:,} (characters/4); new tokens up to {report.new_tokens:,}"
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
