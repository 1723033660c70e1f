"""From a submitted job file to tasks in the store: validation, admission and
lazy expansion in chunks (dispatch starts with the first chunk)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import telemetry
from gateway.convert import rendered_to_pb
from gateway.engine import JobEngine
from gateway.jobfile import (
    JobFileError,
    JobSpec,
    Problem,
    count_rows,
    expand,
    iter_problems,
    load_job,
)
from gateway.jobs import JobRun
from gateway.store import DuplicateTaskId, JobRecord, JobState, NewTask, TaskState

log = logging.getLogger(__name__)

CHUNK = 2000


class AdmissionError(Exception):
    """The job is valid but the gateway will not take it now (a cap is reached)."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class Submission:
    """What a client sent: the job file, its variables, and an optional uploaded input file."""

    job_yaml: str
    variables: Mapping[str, str]
    idempotency_key: str = ""
    profile: str = ""
    filename: str = "job.yaml"
    files: Mapping[str, str] | None = None
    upload: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_yaml": self.job_yaml,
            "variables": dict(self.variables),
            "idempotency_key": self.idempotency_key,
            "profile": self.profile,
            "filename": self.filename,
            "files": dict(self.files or {}),
            "upload": str(self.upload) if self.upload else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Submission:
        upload = data.get("upload")
        return cls(
            job_yaml=data["job_yaml"],
            variables=data.get("variables", {}),
            idempotency_key=data.get("idempotency_key", ""),
            profile=data.get("profile", ""),
            filename=data.get("filename", "job.yaml"),
            files=data.get("files", {}),
            upload=Path(upload) if upload else None,
        )


def parse(submission: Submission, templates: Mapping[tuple[str, str], str]) -> JobSpec:
    """Runs the job-file language on a submission; raises JobFileError."""
    files = submission.files or {}

    def read_file(relative: str) -> str:
        if relative not in files:
            raise FileNotFoundError(
                f"{relative} was not sent with the job (the CLI sends files named by `extends`)"
            )
        return files[relative]

    def resolve_template(name: str, version: str) -> str:
        if (name, version) not in templates:
            known = ", ".join(f"{n}@{v}" for n, v in sorted(templates)) or "none"
            raise KeyError(f"no registered template {name}@{version} (registered: {known})")
        return templates[(name, version)]

    return load_job(
        text=submission.job_yaml,
        filename=submission.filename,
        variables=dict(submission.variables),
        profile=submission.profile or None,
        read_file=read_file,
        resolve_template=resolve_template,
        input_file=submission.upload,
    )


def prevalidate(job: JobSpec, limit: int = 200) -> None:
    """Expands the whole job once without keeping it; raises JobFileError naming every bad row."""
    problems: list[Problem] = list(itertools.islice(iter_problems(job), limit))
    if problems:
        raise JobFileError(problems)


def deadline_at(job: JobSpec, created_at: float) -> float | None:
    deadline = job.schedule.deadline
    if deadline is None:
        return None
    if isinstance(deadline, datetime):
        return deadline.timestamp()
    return created_at + float(deadline)


class Submitter:
    """Accepts jobs into the store and keeps expanding them while they run."""

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine
        self.store = engine.store
        self.config = engine.config
        self._reserved: Counter[str] = Counter()  # tasks of submissions being accepted

    async def templates(self) -> dict[tuple[str, str], str]:
        rows = await self.store.list_templates()
        return {(name, version): body for name, version, body, _ in rows}

    async def submit(self, submission: Submission) -> tuple[JobRecord, bool]:
        """Validates and accepts a job; returns (job, created). Nothing is stored for a bad job."""
        if submission.idempotency_key:
            # A repeat returns its job before any cap is checked: it asks for nothing new.
            existing = await self.store.job_by_idempotency_key(submission.idempotency_key)
            if existing is not None:
                return existing, False
        templates = await self.templates()
        job = await asyncio.to_thread(parse, submission, templates)
        rows = await asyncio.to_thread(count_rows, job)
        if rows > self.config.max_job_tasks:
            raise JobFileError(
                [
                    Problem(
                        f"the job has {rows} tasks; this gateway takes at most {self.config.max_job_tasks}",
                        file=job.source,
                        field="inputs",
                    )
                ]
            )
        tenant = job.schedule.tenant
        if not self._admits(tenant, rows):
            raise AdmissionError(
                f"tenant {tenant!r} has too many unfinished tasks to queue {rows} more",
                retry_after_s=30.0,
            )
        # Held until the job's counters hold its tasks, so concurrent submissions see it.
        self._reserved[tenant] += rows
        try:
            return await self._accept(submission, job, rows)
        finally:
            self._reserved[tenant] -= rows

    def _admits(self, tenant: str, rows: int) -> bool:
        """Would `rows` more stay within the tenant's cap on unfinished tasks? The
        scheduler's queue holds only a window of each job, so the jobs' counters count."""
        cap = self.config.tenant_max_queued
        if cap is None:
            return True
        unfinished = self._reserved[tenant] + sum(
            max(run.counters.total - run.counters.done, 0)
            for run in self.engine.jobs.values()
            if run.record.tenant == tenant
        )
        return unfinished + rows <= cap

    async def _accept(
        self, submission: Submission, job: JobSpec, rows: int
    ) -> tuple[JobRecord, bool]:
        """Stores the job record and starts driving it (a known idempotency key: the old job)."""
        if rows <= self.config.prevalidate_rows:
            await asyncio.to_thread(prevalidate, job)
        now = self.engine.clock()
        record = JobRecord(
            job_id=uuid.uuid4().hex[:16],
            name=job.name,
            tenant=job.schedule.tenant,
            priority=job.schedule.priority,
            model=job.model,
            task_type=job.task,
            state=JobState.QUEUED,
            created_at=now,
            finished_at=None,
            spec=submission.to_dict(),
            idempotency_key=submission.idempotency_key or None,
            total=rows,
        )
        record, created = await self.store.create_job(record)
        if created:
            self.start(record, job, already_stored=0)
        return record, created

    async def resume_all(self) -> int:
        """After a restart: picks up every unfinished job where it was."""
        templates = await self.templates()
        resumed = 0
        for record in await self.store.unfinished_jobs():
            submission = Submission.from_dict(record.spec)
            try:
                job = await asyncio.to_thread(parse, submission, templates)
            except JobFileError as exc:
                await self.store.set_job_state(record.job_id, JobState.FAILED, error=str(exc))
                continue
            counts = await self.store.counts(record.job_id)
            run = self.start(record, job, already_stored=sum(counts.values()), counts=counts)
            run.counters.reused = await self.store.reused_count(record.job_id)
            prompt, completion = await self.store.usage(record.job_id)
            run.counters.prompt_tokens, run.counters.completion_tokens = prompt, completion
            resumed += 1
            await self.engine.maybe_complete(run)
        return resumed

    def start(
        self,
        record: JobRecord,
        job: JobSpec,
        *,
        already_stored: int,
        counts: Mapping[TaskState, int] | None = None,
    ) -> JobRun:
        run = JobRun(record=record, spec=job)
        run.counters.total = record.total
        run.expanded = record.expanded
        run.deadline_at = deadline_at(job, record.created_at)
        for state, n in (counts or {}).items():
            if state.is_terminal:
                for _ in range(n):
                    run.counters.add_terminal(state)
        telemetry.start_job_span(run)
        self.engine.adopt(run)
        if not record.expanded:
            run.expansion = self.engine.spawn(self._expand(run, already_stored))
        return run

    async def _expand(self, run: JobRun, skip: int) -> None:
        job: JobSpec = run.spec
        tasks = itertools.islice(expand(job, check_duplicates=False), skip, None)
        stored = skip
        deadline = run.deadline_at
        has_history = await self.store.has_earlier_results(run.job_id, run.record.name)
        try:
            while True:
                chunk = await asyncio.to_thread(_next_chunk, tasks, job, run.job_id, deadline)
                if not chunk:
                    break
                reused = await self.store.add_tasks(
                    run.job_id,
                    chunk,
                    reuse_from=run.record.name if has_history else None,
                    now=self.engine.clock(),
                )
                stored += len(chunk)
                run.counters.reused += len(reused)
                for _ in reused:
                    run.counters.add_terminal(TaskState.SUCCEEDED)
                run.counters.total = max(run.counters.total, stored)
                run.exhausted = False
                self.engine._wake_up()
        except (JobFileError, DuplicateTaskId) as exc:
            log.warning("job %s failed while expanding: %s", run.job_id, exc)
            await self.engine.fail_job(run, str(exc))
            return
        await self.store.mark_expanded(run.job_id, stored)
        run.counters.total = stored
        run.record.total = stored
        run.expanded = run.record.expanded = True
        run.notify()
        await self.engine.maybe_complete(run)


def _next_chunk(
    tasks: Iterator[Any], job: JobSpec, job_id: str, deadline: float | None
) -> list[NewTask]:
    chunk = []
    for rendered in itertools.islice(tasks, CHUNK):
        payload = rendered_to_pb(rendered, job.model, job_id).SerializeToString()
        chunk.append(
            NewTask(
                task_id=rendered.task_id,
                idx=rendered.index,
                input_hash=rendered.input_hash,
                payload=payload,
                est_tokens=rendered.est_tokens,
                shard_key=rendered.shard_key,
                deadline=deadline,
            )
        )
    return chunk
