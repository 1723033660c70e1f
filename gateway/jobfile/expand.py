"""Lazy expansion of a job into rendered tasks, one row at a time."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Protocol

from . import openai_batch
from .errors import JobFileError, Problem
from .evaluate import eval_input
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
    rejected: str | None = None  # an OpenAI batch line that fails alone, never sent
    model: str = ""  # set for a job of several models (task_id is "<row_id>@<model>")
    row_id: str = ""  # with model: the row's own id
    reference: str | None = None  # evaluate.reference, rendered; kept out of the Task sent
    eval_input: str = ""  # with reference: what was asked (evaluate.eval_input)


class Progress(Protocol):
    """Told which row and template are rendering, so a watcher can name them if it stalls."""

    def mark(self, row: int, template: int) -> None: ...  # template: a code of template_field


_FIELDS = ("inputs.id", "template", "continuation", "shard.key", "evaluate.reference")
_MESSAGE = len(_FIELDS)  # codes from here on are messages[code - _MESSAGE].content


def template_field(code: int) -> str:
    """The field path of the template that Progress.mark calls `code`."""
    if code >= _MESSAGE:
        return f"messages[{code - _MESSAGE}].content"
    return _FIELDS[code] if code >= 0 else "template"


def expand(
    job: JobSpec, *, check_duplicates: bool = True, progress: Progress | None = None
) -> Iterator[RenderedTask]:
    """Rendered tasks in row order; raises JobFileError (naming the row) at the first bad row."""
    for item in expand_all(job, check_duplicates=check_duplicates, progress=progress):
        if isinstance(item, Problem):
            raise JobFileError([item])
        yield item


def iter_problems(
    job: JobSpec, *, check_duplicates: bool = True, progress: Progress | None = None
) -> Iterator[Problem]:
    """Every bad row of the job, in order (rendering all of it)."""
    for item in expand_all(job, check_duplicates=check_duplicates, progress=progress):
        if isinstance(item, Problem):
            yield item


def expand_all(
    job: JobSpec, *, check_duplicates: bool = True, progress: Progress | None = None
) -> Iterator[RenderedTask | Problem]:
    """Tasks and, in place of each bad row, a Problem; goes on past bad rows."""
    return _Expander(job, progress).run(check_duplicates)


class _Expander:
    def __init__(self, job: JobSpec, progress: Progress | None = None) -> None:
        self.job = job
        self.limits = job.limits()
        self.progress = progress
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
        self.models = tuple(job.models or ())

    def run(self, check_duplicates: bool) -> Iterator[RenderedTask | Problem]:
        if self.job.inputs.format == "openai-batch":
            yield from self.openai_lines()
            return
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
            if not self.models:
                yield task
                continue
            for model in self.models:  # the row once per model; ids stay unique
                task_id = f"{task.task_id}@{model}"
                yield replace(task, task_id=task_id, model=model, row_id=task.task_id)

    def render(self, number: int, ctx: dict[str, Any]) -> RenderedTask:
        t = self.templates
        mark = self.progress.mark if self.progress is not None else _no_mark
        mark(number, 0)
        task_id = t.task_id.render(ctx, number) if t.task_id else str(number)
        if not task_id.strip():
            raise RenderError(self.problem("inputs.id renders an empty task id", number))
        if len(task_id) > self.limits.max_id_chars:
            raise RenderError(
                self.problem(
                    f"inputs.id renders an id of {len(task_id):,} characters; at most"
                    f" {self.limits.max_id_chars} (limit max_id_chars)",
                    number,
                )
            )
        mark(number, 1)
        prompt = t.prompt.render(ctx, number) if t.prompt else ""
        contents = []
        for i, (role, c) in enumerate(t.messages):
            mark(number, _MESSAGE + i)
            contents.append((role, c.render(ctx, number)))
        messages = tuple(contents)
        if self.chat_template:
            messages, prompt = (("user", prompt),), ""
        mark(number, 2)
        continuation = t.continuation.render(ctx, number) if t.continuation else ""
        mark(number, 3)
        shard_key = t.shard_key.render(ctx, number) if t.shard_key else None
        mark(number, 4)
        reference = self.reference(ctx, number)
        hasher = self.prefix.copy()
        chars = len(prompt) + len(continuation)
        pieces = [f"{len(prompt)}:{prompt}|{len(continuation)}:{continuation}".encode()]
        for role, content in messages:
            chars += len(content)
            pieces.append(f"|{role}:{len(content)}:{content}".encode())
        self.check_size(pieces, number)
        for piece in pieces:
            hasher.update(piece)
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
            reference=reference,
            eval_input=eval_input(prompt, messages) if reference is not None else "",
        )

    def reference(self, ctx: dict[str, Any], number: int) -> str | None:
        """The row's evaluate.reference; for classify it must be one of the labels."""
        template = self.templates.reference
        if template is None:
            return None
        reference = template.render(ctx, number)
        if self.job.task == "classify" and reference not in self.labels:
            message = f"evaluate.reference renders {reference[:200]!r}, which is not one of labels"
            raise RenderError(Problem(message, self.job.source, None, "evaluate.reference", number))
        return reference

    def openai_lines(self) -> Iterator[RenderedTask | Problem]:
        """An OpenAI batch file: each line is its own task (custom_ids checked as it goes)."""
        for line in openai_batch.iter_lines(self.job):
            if isinstance(line, Problem):
                yield line
                continue
            params = MappingProxyType(dict(line.params or {}))
            chars = len(line.prompt) + sum(len(c) for _, c in line.messages)
            pieces = [line.prompt.encode(), *(c.encode() for _, c in line.messages)]
            try:
                self.check_size(pieces, line.number)
            except RenderError as exc:
                yield exc.problem
                continue
            yield RenderedTask(
                line.number - 1,
                line.custom_id,
                line.task_type,
                line.prompt,
                line.messages,
                (),
                "",
                params,
                openai_batch.input_hash(self.job.model, line),
                (chars + 3) // 4 + int(params.get("max_new_tokens", 0)),
                None,
                line.rejected,
            )

    def check_size(self, encoded: list[bytes], number: int) -> None:
        """The task's rendered input, all templates together, within max_prompt_bytes."""
        size = sum(map(len, encoded))  # a little over the text: lengths and roles are in it
        cap = self.limits.max_prompt_bytes
        if size > cap:
            where = "messages" if self.job.task == "chat" else "template"
            message = (
                f"the task's rendered input is about {size:,} bytes; at most {cap:,}"
                " (limit max_prompt_bytes)"
            )
            raise RenderError(Problem(message, self.job.source, None, where, number))

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


def _no_mark(row: int, template: int) -> None:
    pass


def _templates(job: JobSpec) -> JobTemplates:
    compiled = job._templates
    if compiled is None:  # a JobSpec built without load_job
        compiled, problems = compile_job_templates(job, {}, job.source, job.limits())
        if problems:
            raise JobFileError(problems)
    return compiled
