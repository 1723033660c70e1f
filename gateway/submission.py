"""From a submitted job file to tasks in the store: validation, admission and
lazy expansion in chunks (dispatch starts with the first chunk).

Everything a client sent is checked against the gateway's Limits before it is
worked on (sizes before parsing, counts before expanding); parsing, checking and
rendering run in render workers (render_pool.py), never on the event loop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from collector import capture_content
from gateway import telemetry
from gateway.dispatch import JobEngine
from gateway.expansion import Expansion
from gateway.jobfile import JobFileError, JobSpec, Problem, summarised
from gateway.jobfile.caps import submission_size_problem
from gateway.jobfile.schema import Schedule
from gateway.jobs import JobRun
from gateway.limits import Limits
from gateway.principals import ANONYMOUS, Principal
from gateway.render_pool import Checked, InlineRenderer, Renderer, RenderPool, WorkerCrashed
from gateway.store import JobRecord, JobState, OverCap, TaskState, TemplateRecord
from gateway.stored_inputs import InputFiles

log = logging.getLogger(__name__)
DEFAULT_TENANT = Schedule().tenant  # of a job that names none, submitted by no principal


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
    input_id: str = ""
    """The uploaded file's key in the store (gateway.uploads), where every replica reads
    it; `upload` is this replica's copy, only while the job is checked and expanded here."""
    input_bytes: int = 0
    spec_sha256: str = ""
    """SHA-256 of the JobSpec message as sent (the input file's bytes are not part of it);
    the gateway's API sets it. A repeated idempotency key with another hash is refused."""

    def digest(self) -> str:
        """spec_sha256, or a hash of the same fields when no API set it."""
        if self.spec_sha256:
            return self.spec_sha256
        fields = {k: v for k, v in self.to_dict().items() if k not in _UPLOAD_FIELDS}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_yaml": self.job_yaml,
            "variables": dict(self.variables),
            "idempotency_key": self.idempotency_key,
            "profile": self.profile,
            "filename": self.filename,
            "files": dict(self.files or {}),
            "upload": str(self.upload) if self.upload else None,
            "input_id": self.input_id,
            "input_bytes": self.input_bytes,
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
            input_id=data.get("input_id", ""),
            input_bytes=data.get("input_bytes", 0),
        )

    def check_sizes(self, limits: Limits) -> None:
        """Refuses a submission too large to parse; raises before any work is done."""
        from gateway.errors import InvalidArgument  # gateway.errors imports this module

        for name, value, cap in (
            ("idempotency_key", self.idempotency_key, limits.max_idempotency_key_chars),
            ("spec.filename", self.filename, limits.max_id_chars),
            ("spec.profile", self.profile, limits.max_id_chars),
        ):
            if len(value) > cap:
                raise InvalidArgument(
                    name, f"is {len(value):,} characters; at most {cap} (limit {_cap_name(name)})"
                )
            if "\x00" in value:  # PostgreSQL text cannot hold one
                raise InvalidArgument(name, "must not contain NUL characters")
        too_big = submission_size_problem(
            self.job_yaml, self.files or {}, self.variables, limits, self.filename
        )
        if too_big is not None:
            raise JobFileError([too_big])
        size = self.upload.stat().st_size if self.upload is not None else 0
        if size > limits.max_upload_bytes:
            message = (
                f"the uploaded input file is {size:,} bytes; at most {limits.max_upload_bytes:,}"
                " (limit max_upload_bytes)"
            )
            raise JobFileError([Problem(message, self.filename, None, "inputs.file")])


_UPLOAD_FIELDS = frozenset({"upload", "input_id", "input_bytes"})  # not what a key stands for


def _cap_name(field: str) -> str:
    return "max_idempotency_key_chars" if field == "idempotency_key" else "max_id_chars"


def deadline_at(job: JobSpec, created_at: float) -> float | None:
    deadline = job.schedule.deadline
    if deadline is None:
        return None
    if isinstance(deadline, datetime):
        return deadline.timestamp()
    return created_at + float(deadline)


def loggable(exc: JobFileError) -> str:
    """The error for a log line: without the rows' content unless content capture is on."""
    return str(exc) if capture_content() else exc.redacted()


class Submitter:
    """Accepts jobs into the store and keeps expanding them while they run."""

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine
        self.store = engine.store
        self.config = engine.config
        self.limits: Limits = engine.config.limits
        workers = engine.config.render_workers
        self.renderer: Renderer = (
            RenderPool(self.limits, workers) if workers > 0 else InlineRenderer(self.limits)
        )
        self.inputs = InputFiles(engine.config.data_dir / "uploads", self.store)
        self.expansion = Expansion(engine, self.renderer, self.inputs, self.templates, _loggable)

    async def templates(self, tenant: str) -> dict[tuple[str, str], str]:
        """What a job of `tenant` extends: the shared templates, and the tenant's own (which
        win on the same name@version)."""
        return _layered(await self.store.list_templates(tenants=["", tenant]), [tenant])

    async def _templates_before_parsing(self, principal: Principal) -> dict[tuple[str, str], str]:
        """Before a job is parsed its tenant is unknown: every template the principal could
        use, its own tenants' first (then an admin's other tenants', then the shared)."""
        tenants = None if principal.admin else ["", *principal.tenants]
        rows = await self.store.list_templates(tenants=tenants)
        return _layered(rows, [*principal.tenants, DEFAULT_TENANT])

    async def submit(
        self, submission: Submission, principal: Principal = ANONYMOUS
    ) -> tuple[JobRecord, bool]:
        """Validates and accepts a job for `principal`; returns (job, created). Nothing is
        stored for a bad job, or for one of a tenant the principal may not submit for."""
        try:
            return await self._submit(submission, principal)
        except JobFileError as exc:  # one response holds at most max_error_details of them
            raise JobFileError(summarised(exc.problems, self.limits.max_error_details)) from None

    async def _submit(self, submission: Submission, principal: Principal) -> tuple[JobRecord, bool]:
        submission.check_sizes(self.limits)
        key, digest = submission.idempotency_key, submission.digest()
        if key:
            # A repeat returns its job before any cap is checked: it asks for nothing new.
            existing = await self.store.job_by_idempotency_key(
                key, principal=principal.name, spec_sha256=digest
            )
            if existing is not None and principal.sees(existing.tenant):
                return existing, False
        checked, tenant = await self.check(submission, principal)
        job, rows = checked.job, checked.rows
        if key:
            existing = await self.store.job_by_idempotency_key(key, tenant=tenant)
            if existing is not None:
                return _repeated(existing, digest), False
        return await self._accept(submission, job, rows, tenant, principal, digest)

    async def check(self, submission: Submission, principal: Principal) -> tuple[Checked, str]:
        """Checks the job against its tenant's templates; returns it with that tenant. The
        tenant is known once the job is parsed, so a job is checked again with its tenant's
        templates when they differ from those the first pass saw."""

        async def check(templates: dict[tuple[str, str], str]) -> Checked:
            return await self.renderer.check(
                submission.to_dict(),
                templates,
                max_rows=self.config.max_job_tasks,
                prevalidate_rows=self.config.prevalidate_rows,
            )

        first = await self._templates_before_parsing(principal)
        checked = await check(first)
        tenant = job_tenant(checked.job, principal)
        own = await self.templates(tenant)
        if own != first:
            checked = await check(own)
            if job_tenant(checked.job, principal) != tenant:
                raise _invalid(
                    "schedule.tenant",
                    "the job's tenant changes with the tenant whose templates it extends; "
                    "set schedule.tenant in the job file itself",
                )
        return checked, tenant

    async def _accept(
        self,
        submission: Submission,
        job: JobSpec,
        rows: int,
        tenant: str,
        principal: Principal,
        digest: str,
    ) -> tuple[JobRecord, bool]:
        """Stores the job record and starts driving it (a known idempotency key: the old job)."""
        now = self.engine.clock()
        record = JobRecord(
            job_id=uuid.uuid4().hex[:16],
            name=job.name,
            tenant=tenant,
            priority=job.schedule.priority,
            model=job.model,
            task_type=job.task,
            state=JobState.QUEUED,
            created_at=now,
            finished_at=None,
            spec=submission.to_dict(),
            idempotency_key=submission.idempotency_key or None,
            total=rows,
            principal=principal.name,
            spec_sha256=digest,
            expander=self.engine.replica_id,
            input_id=submission.input_id,
        )
        # The cap counts every replica's unfinished tasks in the store, in the transaction
        # that stores the job (the scheduler's queue holds only a window of each job).
        try:
            record, created = await self.store.create_job(
                record, cap=self.config.tenant_cap(tenant)
            )
        except OverCap as exc:
            raise AdmissionError(
                f"tenant {tenant!r} has too many unfinished tasks to queue {rows} more"
                f" ({exc.unfinished:,} unfinished; cap {self.config.tenant_cap(tenant):,})",
                retry_after_s=30.0,
            ) from None
        if not created:  # a concurrent submission with the same key won
            return _repeated(record, digest), False
        self.start(record, job, already_stored=0)
        return record, created

    async def resume_all(self) -> int:
        """After a restart: picks up every unfinished job where it was, but a job that a
        live replica is still expanding (that one goes on; see adopt)."""
        if isinstance(self.renderer, RenderPool):
            await self.renderer.start()
        # Pieces of uploads whose replica died before accepting their job: an upload lasts
        # upload_deadline_s at most and its check render_wall_s more, so twice the deadline
        # leaves any upload still in progress alone.
        await self.store.drop_stale_inputs(self.engine.clock() - 2 * self.limits.upload_deadline_s)
        templates: dict[str, dict[tuple[str, str], str]] = {}
        resumed = 0
        for record in await self.store.unfinished_jobs():
            if not record.expanded and not await self.expansion.claim(record):
                continue
            if record.tenant not in templates:
                templates[record.tenant] = await self.templates(record.tenant)
            resumed += await self._take_up(record, templates[record.tenant]) is not None
        return resumed

    async def adopt(self, record: JobRecord) -> JobRun | None:
        """Drive a job another replica accepted: its tasks are in the store, leases keep
        the replicas from sending one twice. An unexpanded one only when its expander is
        gone: then this replica expands the rest (gateway/expansion.py)."""
        if record.job_id in self.engine.jobs:
            return self.engine.jobs[record.job_id]
        if not record.expanded and not await self.expansion.claim(record):
            return None
        return await self._take_up(record, await self.templates(record.tenant))

    async def _take_up(
        self, record: JobRecord, templates: dict[tuple[str, str], str]
    ) -> JobRun | None:
        try:
            checked = await self.renderer.check(
                self.inputs.local(record.spec),
                templates,
                max_rows=0,
                prevalidate_rows=0,
                count=False,
            )
        except (JobFileError, WorkerCrashed) as exc:
            error = str(exc)
            log.warning("job %s cannot resume: %s", record.job_id, _loggable(exc))
            await self.store.set_job_state(record.job_id, JobState.FAILED, error=error)
            return None
        if record.job_id in self.engine.jobs:  # taken up meanwhile
            return self.engine.jobs[record.job_id]
        counts = await self.store.counts(record.job_id)
        run = self.start(record, checked.job, already_stored=sum(counts.values()), counts=counts)
        run.counters.reused = await self.store.reused_count(record.job_id)
        prompt, completion = await self.store.usage(record.job_id)
        run.counters.prompt_tokens, run.counters.completion_tokens = prompt, completion
        await self.engine.maybe_complete(run)
        return run

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
            run.expansion = self.engine.spawn(self.expansion.run(run, already_stored))
        return run


def job_tenant(job: JobSpec, principal: Principal) -> str:
    """The tenant a job runs as: its schedule.tenant when the job file sets one, else the
    principal's first tenant. Raises PermissionDenied when the principal may not use it."""
    from gateway.errors import PermissionDenied  # gateway.errors imports this module

    named = "tenant" in job.schedule.model_fields_set
    tenant = job.schedule.tenant if named else (principal.default_tenant or job.schedule.tenant)
    if not principal.may_submit_for(tenant):
        raise PermissionDenied(
            "schedule.tenant",
            f"principal {principal.name!r} may not submit jobs for tenant {tenant!r} "
            f"(its tenants: {principal.describe_tenants()})",
        )
    return tenant


def _layered(rows: list[TemplateRecord], preferred: list[str]) -> dict[tuple[str, str], str]:
    """Templates by (name, version); on a clash the tenant earliest in `preferred` wins,
    then any other tenant, then the shared ones."""
    order = {tenant: i for i, tenant in enumerate(reversed(preferred))}

    def rank(t: TemplateRecord) -> tuple[int, int]:
        if t.tenant == "":
            return (0, 0)
        return (2, order[t.tenant]) if t.tenant in order else (1, 0)

    return {(t.name, t.version): t.body for t in sorted(rows, key=rank)}


def _repeated(existing: JobRecord, digest: str) -> JobRecord:
    """The job a repeated idempotency key names, if it was submitted with the same spec."""
    from gateway.errors import AlreadyExists

    if existing.spec_sha256 and existing.spec_sha256 != digest:
        raise AlreadyExists(
            f"idempotency key {existing.idempotency_key!r} is already used in tenant "
            f"{existing.tenant!r} by job {existing.job_id} with a different job spec; "
            "send the same spec to get that job back, or use another key"
        )
    return existing


def _invalid(field: str, message: str) -> Exception:
    from gateway.errors import InvalidArgument

    return InvalidArgument(field, message)


def _loggable(exc: Exception) -> str:
    return loggable(exc) if isinstance(exc, JobFileError) else str(exc)
