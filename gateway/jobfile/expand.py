"""Lazy expansion of a job into rendered tasks, one row at a time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import JobFileError, Problem
from .idset import IdHashSet, id_hash
from .inputs import iter_rows
from .schema import JobSpec
from .templates import JobTemplates, RenderError, compile_job_templates


@dataclass(frozen=True, slots=True)
class RenderedTask:
    """One task, ready for the store: everything the server needs, plus identity."""

    index: int  # 0-based row number
    task_id: str
    task_type: str
    prompt: str  # "" for chat
    messages: tuple[tuple[str, str], ...]  # (role, content) for chat
    labels: tuple[str, ...]
    continuation: str
    params: Mapping[str, Any]  # only the set params
    input_hash: str  # sha256 of model, task type, rendered input and params
    est_tokens: int  # characters / 4 of the input, plus max_new_tokens
    shard_key: str | None


def expand(job: JobSpec, *, check_duplicates: bool = True) -> Iterator[RenderedTask]:
    """Rendered tasks in row order; raises JobFileError (naming the row) at the first bad row."""
    for item in expand_all(job, check_duplicates=check_duplicates):
        if isinstance(item, Problem):
            raise JobFileError([item])
        yield item


def iter_problems(job: JobSpec, *, check_duplicates: bool = True) -> Iterator[Problem]:
    """Every bad row of the job, in order (rendering all of it)."""
    for item in expand_all(job, check_duplicates=check_duplicates):
        if isinstance(item, Problem):
            yield item


def expand_all(job: JobSpec, *, check_duplicates: bool = True) -> Iterator[RenderedTask | Problem]:
    """Tasks and, in place of each bad row, a Problem; goes on past bad rows."""
    return _Expander(job).run(check_duplicates)


class _Expander:
    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.templates = _templates(job)
        params = job.params.model_dump(exclude_none=True)
        if not params.get("stop"):
            params.pop("stop", None)
        self.params = MappingProxyType(params)
        self.max_new = int(params.get("max_new_tokens", 0))
        self.labels = tuple(job.labels or ())
        head = {"model": job.model, "task": job.task, "params": params, "labels": self.labels}
        self.prefix = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode() + b"\0")
        self.base = {"vars": job.vars, **job.vars}
        self.chat_template = job.task == "chat" and self.templates.prompt is not None

    def run(self, check_duplicates: bool) -> Iterator[RenderedTask | Problem]:
        seen = IdHashSet() if check_duplicates else None
        for item in iter_rows(self.job):
            if isinstance(item, Problem):
                yield item
                continue
            number, row = item
            ctx = self.base.copy()
            ctx["row_number"] = number
            ctx.update(row)
            try:
                task = self.render(number, ctx)
            except RenderError as exc:
                yield exc.problem
                continue
            if seen is not None and not seen.add(id_hash(task.task_id)):
                first = self.first_row_with(task.task_id, number)
                if first is not None:
                    yield self.problem(
                        f"duplicate task id {task.task_id!r}: rows {first} and {number} have it"
                        " (ids must be unique; set inputs.id to a template such as '{{ id }}')",
                        number,
                    )
                    continue
            yield task

    def render(self, number: int, ctx: dict[str, Any]) -> RenderedTask:
        t = self.templates
        task_id = t.task_id.render(ctx, number) if t.task_id else str(number)
        if not task_id.strip():
            raise RenderError(self.problem("inputs.id renders an empty task id", number))
        prompt = t.prompt.render(ctx, number) if t.prompt else ""
        messages = tuple((role, c.render(ctx, number)) for role, c in t.messages)
        if self.chat_template:
            messages, prompt = (("user", prompt),), ""
        continuation = t.continuation.render(ctx, number) if t.continuation else ""
        shard_key = t.shard_key.render(ctx, number) if t.shard_key else None
        hasher = self.prefix.copy()
        chars = len(prompt) + len(continuation)
        hasher.update(f"{len(prompt)}:{prompt}|{len(continuation)}:{continuation}".encode())
        for role, content in messages:
            chars += len(content)
            hasher.update(f"|{role}:{len(content)}:{content}".encode())
        return RenderedTask(
            number - 1,
            task_id,
            self.job.task,
            prompt,
            messages,
            self.labels,
            continuation,
            self.params,
            hasher.hexdigest(),
            (chars + 3) // 4 + self.max_new,
            shard_key,
        )

    def first_row_with(self, task_id: str, before: int) -> int | None:
        """Re-read rows to name the first holder of `task_id` (a hash hit may be a collision)."""
        t = self.templates
        for item in iter_rows(self.job):
            if isinstance(item, Problem):
                continue
            number, row = item
            if number >= before:
                return None
            ctx = {**self.base, "row_number": number, **row}
            try:
                other = t.task_id.render(ctx, number) if t.task_id else str(number)
            except RenderError:
                continue
            if other == task_id:
                return number
        return None

    def problem(self, message: str, row: int) -> Problem:
        return Problem(message, self.job.source, None, "inputs.id", row)


def _templates(job: JobSpec) -> JobTemplates:
    compiled = job._templates
    if compiled is None:  # a JobSpec built without load_job
        compiled, problems = compile_job_templates(job, {}, job.source)
        if problems:
            raise JobFileError(problems)
    return compiled
