"""ValidateJob: a dry run of SubmitJob. The job goes the same bounded way a submission
goes (size caps, then parsing, counting and rendering in the render workers, under the
same Limits), and nothing is stored: the answer is the task count, the first rendered
tasks and a token estimate, or every problem with its place (gateway.errors)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from batchinfer.v1 import gateway_pb2, task_pb2

from gateway.convert import TASK_TYPES
from gateway.errors import InvalidArgument
from gateway.jobfile import JobFileError, JobSpec, Problem, summarised
from gateway.limits import Limits
from gateway.principals import ANONYMOUS, Principal
from gateway.submission import Submission, Submitter
from gateway.uploads import Upload, upload_deadline

MAX_SHOW_TASKS = 100
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass
class DryRun:
    """What ValidateJob found for a valid job."""

    job: JobSpec
    tasks: int
    tenant: str  # what the job would run as: schedule.tenant, else the caller's first
    checked: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    shown: list[tuple[int, bytes, int]] = field(default_factory=list)  # index, Task, tokens

    def to_pb(self, profile: str) -> gateway_pb2.ValidateJobResponse:
        scale = self.tasks / self.checked if self.checked else 0.0
        return gateway_pb2.ValidateJobResponse(
            name=self.job.name,
            model=self.job.model,
            task_type=TASK_TYPES.get(self.job.task, 0),
            tenant=self.tenant,
            profile=profile,
            task_count=self.tasks,
            checked_tasks=self.checked,
            prompt_tokens=round(self.prompt_tokens * scale),
            max_new_tokens=round(self.new_tokens * scale),
            tasks=[
                gateway_pb2.ValidatedTask(
                    index=index, task=task_pb2.Task.FromString(task), est_tokens=tokens
                )
                for index, task, tokens in self.shown
            ],
        )


async def dry_run(
    submitter: Submitter, submission: Submission, show: int, principal: Principal = ANONYMOUS
) -> DryRun:
    """Checks the job as SubmitJob would for `principal` (raises JobFileError with every
    problem found, PermissionDenied for a tenant it may not use), then renders up to
    prevalidate_rows tasks in a render worker for the estimate."""
    config = submitter.config
    try:
        submission.check_sizes(submitter.limits)
        checked, tenant = await submitter.check(submission, principal)
        spec, templates = submission.to_dict(), await submitter.templates(tenant)
        result = DryRun(job=checked.job, tasks=checked.rows, tenant=tenant)
        budget = min(checked.rows, max(config.prevalidate_rows, show))
        max_new = checked.job.params.max_new_tokens or 0
        chunks = submitter.renderer.expand(spec, templates, job_id="", skip=0)
        async with contextlib.aclosing(chunks):
            async for rows in chunks:
                for _task_id, index, _hash, payload, tokens, _shard, _eval in rows:
                    if len(result.shown) < show:
                        result.shown.append((index, payload, tokens))
                    result.checked += 1
                    result.prompt_tokens += max(tokens - max_new, 0)
                    result.new_tokens += max_new
                    if result.checked >= budget:
                        break
                if result.checked >= budget:
                    break
    except JobFileError as exc:
        sources = {submission.filename: submission.job_yaml, **(submission.files or {})}
        problems = summarised(exc.problems, submitter.limits.max_error_details)
        raise JobFileError(locate(problems, sources)) from None
    return result


async def receive(
    requests: AsyncIterator[gateway_pb2.ValidateJobRequest], uploads: Path, limits: Limits
) -> tuple[gateway_pb2.ValidateJobRequest, Path | None]:
    """The first message (the spec) and the input file's chunks written to an upload
    file, which the caller deletes; within max_upload_bytes and upload_deadline_s."""
    first: gateway_pb2.ValidateJobRequest | None = None
    upload = Upload(uploads, ".validate", limits)
    try:
        async with upload_deadline(limits):
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "spec":
                    if first is not None:
                        raise InvalidArgument("spec", "the job spec must be sent once, first")
                    first = request
                elif kind == "input_chunk":
                    if first is None:
                        raise InvalidArgument(
                            "input_chunk", "the job spec must come before input chunks"
                        )
                    await upload.write(request.input_chunk, first.spec.filename or "job.yaml")
        upload.close()
        if first is None:
            raise InvalidArgument("spec", "no job spec was sent")
        if not 0 <= first.show_tasks <= MAX_SHOW_TASKS:
            raise InvalidArgument(
                "show_tasks", f"must be 0 to {MAX_SHOW_TASKS}, got {first.show_tasks}"
            )
    except BaseException:
        await upload.discard()  # nothing was stored: no store was given
        raise
    return first, upload.path


def submission_of(spec: gateway_pb2.JobSpec, upload: Path | None) -> Submission:
    if not spec.job_yaml.strip():
        raise InvalidArgument("spec.job_yaml", "the job file is empty")
    return Submission(
        job_yaml=spec.job_yaml,
        variables=dict(spec.variables),
        idempotency_key=spec.idempotency_key,
        profile=spec.profile,
        filename=spec.filename or "job.yaml",
        files=dict(spec.files),
        upload=upload,
    )


def locate(problems: list[Problem], sources: Mapping[str, str]) -> list[Problem]:
    """Problems with a column where the text shows one: a problem with a line and a field
    points at that field's key on its line."""
    return [_with_column(p, sources) for p in problems]


def _with_column(problem: Problem, sources: Mapping[str, str]) -> Problem:
    if problem.column or not problem.line or not problem.file or problem.row is not None:
        return problem
    text = sources.get(problem.file)
    if text is None:
        return problem
    lines = text.splitlines()
    if problem.line > len(lines):
        return problem
    line = lines[problem.line - 1]
    keys = _SEGMENT.findall(problem.field or "")
    for key in reversed(keys):  # the innermost named part of the path
        found = re.search(rf"(?<![\w-]){re.escape(key)}\s*:", line)
        if found:
            return replace(problem, column=found.start() + 1)
    stripped = len(line) - len(line.lstrip())
    return replace(problem, column=stripped + 1) if line.strip() else problem
