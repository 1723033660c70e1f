"""The public API: batchinfer.v1.BatchGateway. Thin: look up, call the engine
or the store, build the reply. Errors go through gateway.errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator

from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2

from gateway import validation
from gateway.auth import caller, note
from gateway.checks import check_name, check_task, from_page_token, page_token
from gateway.convert import TASK_TYPES
from gateway.dispatch import JobEngine
from gateway.errors import (
    Draining,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    rpc_errors,
)
from gateway.evaluation.reports import JobReports
from gateway.evaluation.results import ResultPages, timestamp
from gateway.jobfile import JobFileError, Problem
from gateway.jobfile.caps import utf8_size
from gateway.jobs import JobRun
from gateway.result_wire import stream_results_bytes
from gateway.store import JobRecord, ResultRecord, TaskState, TemplateConflict
from gateway.streams import ByteWindow, PeerStreams, one_stream
from gateway.submission import Submission, Submitter
from gateway.uploads import Upload, upload_deadline

RESULTS_PAGE = 500
EXECUTE_WINDOW = 256  # tasks of one Execute stream in flight at most
LIST_PAGE = 100  # jobs or templates of one ListJobs / ListTemplates page at most


class BatchGatewayService(gateway_pb2_grpc.BatchGatewayServicer):
    def __init__(self, engine: JobEngine, submitter: Submitter) -> None:
        self.engine = engine
        self.store = engine.store
        self.submitter = submitter
        self.uploads = engine.config.data_dir / "uploads"
        self.limits = engine.config.limits
        self.streams = PeerStreams(self.limits.max_streams_per_peer)
        self.reports = JobReports(self.store)  # per-model aggregates for GetJob / WatchJob
        # A reply (a page of jobs, templates or results) stays well within the message limit.
        self.page_bytes = engine.config.max_message_bytes // 2

    # --------------------------------------------------------------- views

    async def _record(self, job_id: str) -> tuple[JobRecord, JobRun | None]:
        """The job, if the caller may see it: another tenant's job is not found, so its
        existence is not revealed."""
        check_name(job_id, "job_id", self.limits.max_id_chars, "max_id_chars")
        run = self.engine.jobs.get(job_id)
        record = run.record if run is not None else None
        if record is None and job_id:
            record = await self.store.get_job(job_id)
        if record is not None:
            note(job=job_id, tenant=record.tenant)
        if record is None or not caller().sees(record.tenant):
            raise NotFound(f"no job {job_id!r}")
        return record, run

    async def _job_pb(self, record: JobRecord, run: JobRun | None) -> gateway_pb2.Job:
        job = gateway_pb2.Job(
            job_id=record.job_id,
            name=record.name,
            state=int(record.state),
            tenant=record.tenant,
            priority=record.priority,
            model=record.model,
            task_type=TASK_TYPES.get(record.task_type, 0),
            created_at=timestamp(record.created_at),
            finished_at=timestamp(record.finished_at),
            idempotency_key=record.idempotency_key or "",
            error=record.error or "",
            expanded=record.expanded or (run is not None and run.expanded),
            principal=record.principal,
        )
        if run is not None:
            c = run.counters
            running = max(c.running, 0)
            job.counts.CopyFrom(
                gateway_pb2.JobCounts(
                    total=c.total,
                    succeeded=c.succeeded,
                    failed=c.failed,
                    cancelled=c.cancelled,
                    running=running,
                    pending=max(c.total - c.done - running, 0),
                    reused=c.reused,
                )
            )
            job.usage.prompt_tokens, job.usage.completion_tokens = (
                c.prompt_tokens,
                c.completion_tokens,
            )
            if not record.state.is_terminal:
                job.wait_reason = self.engine.wait_reason(run)
        else:
            counts = await self.store.counts(record.job_id)
            job.counts.CopyFrom(
                gateway_pb2.JobCounts(
                    total=sum(counts.values()) or record.total,
                    pending=counts.get(TaskState.PENDING, 0) + counts.get(TaskState.RETRY_WAIT, 0),
                    running=counts.get(TaskState.RUNNING, 0),
                    succeeded=counts.get(TaskState.SUCCEEDED, 0),
                    failed=counts.get(TaskState.FAILED, 0),
                    cancelled=counts.get(TaskState.CANCELLED, 0),
                )
            )
            job.counts.reused = await self.store.reused_count(record.job_id)
            job.usage.prompt_tokens, job.usage.completion_tokens = await self.store.usage(
                record.job_id
            )
        return job

    async def _job_with_models(self, record: JobRecord, run: JobRun | None) -> gateway_pb2.Job:
        job = await self._job_pb(record, run)
        job.models.extend(await self.reports.of(record))
        return job

    async def _active(self, job_id: str) -> JobRun:
        record, run = await self._record(job_id)
        if run is None and not record.state.is_terminal:
            # Accepted by another replica (sharing a PostgreSQL store): drive it here too.
            run = await self.submitter.adopt(record)
        if run is None and not record.state.is_terminal:
            raise Draining(f"job {job_id} is still being expanded by another replica; retry")
        if run is None:
            raise FailedPrecondition(
                f"job {job_id} is {record.state.name.lower()}; it no longer runs"
            )
        return run

    # ---------------------------------------------------------- job control

    def _refuse_if_draining(self) -> None:
        if self.engine.draining:
            raise Draining("the gateway is draining (shutting down) and takes no new work; retry")

    @rpc_errors
    @one_stream
    async def SubmitJob(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self._refuse_if_draining()
        spec: gateway_pb2.JobSpec | None = None
        upload = Upload(self.uploads, ".input", self.limits, self.store, self.engine.clock)
        try:
            async with upload_deadline(self.limits):
                async for request in request_iterator:
                    kind = request.WhichOneof("kind")
                    if kind == "spec":
                        if spec is not None:
                            raise InvalidArgument("spec", "the job spec must be sent once, first")
                        spec = request.spec
                    elif kind == "input_chunk":
                        if spec is None:
                            raise InvalidArgument(
                                "input_chunk", "the job spec must come before input chunks"
                            )
                        await upload.write(request.input_chunk, spec.filename or "job.yaml")
                await upload.finish()  # stored within the deadline too
            if spec is None:
                raise InvalidArgument("spec", "no job spec was sent")
            if not spec.job_yaml.strip():
                raise InvalidArgument("spec.job_yaml", "the job file is empty")
            submission = Submission(
                job_yaml=spec.job_yaml,
                variables=dict(spec.variables),
                idempotency_key=spec.idempotency_key,
                profile=spec.profile,
                filename=spec.filename or "job.yaml",
                files=dict(spec.files),
                upload=upload.path,
                input_id=upload.input_id if upload.path is not None else "",
                input_bytes=upload.size,
                # What an idempotency key stands for: the JobSpec as sent.
                spec_sha256=hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest(),
            )
            try:
                record, created = await self.submitter.submit(submission, caller())
            except JobFileError as exc:  # with the columns the text shows
                sources = {submission.filename: submission.job_yaml, **dict(spec.files)}
                raise JobFileError(validation.locate(exc.problems, sources)) from None
        except BaseException:
            await upload.discard()  # nothing half-made is left behind, here or in the store
            raise
        if not created:
            await upload.discard()
        note(job=record.job_id, tenant=record.tenant)
        record, run = await self._record(record.job_id)
        return gateway_pb2.SubmitJobResponse(job=await self._job_pb(record, run))

    @rpc_errors
    @one_stream
    async def ValidateJob(self, request_iterator, context):  # type: ignore[no-untyped-def]
        first, upload = await validation.receive(request_iterator, self.uploads, self.limits)
        try:
            submission = validation.submission_of(first.spec, upload)
            found = await validation.dry_run(self.submitter, submission, first.show_tasks, caller())
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)
        return found.to_pb(first.spec.profile)

    @rpc_errors
    async def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        record, run = await self._record(request.job_id)
        return gateway_pb2.GetJobResponse(job=await self._job_with_models(record, run))

    @rpc_errors
    async def ListJobs(self, request, context):  # type: ignore[no-untyped-def]
        if request.limit < 0:
            raise InvalidArgument("limit", f"must be >= 0, got {request.limit}")
        check_name(request.tenant, "tenant", self.limits.max_id_chars, "max_id_chars")
        before = from_page_token(request.page_token, ((int, float), str))
        principal = caller()
        records, more = await self.store.job_page(
            tenant=request.tenant or None,
            tenants=None if principal.admin else principal.tenants,
            limit=min(request.limit or LIST_PAGE, LIST_PAGE),
            before=before,  # type: ignore[arg-type]
            max_bytes=self.page_bytes,
        )
        jobs = [await self._job_pb(r, self.engine.jobs.get(r.job_id)) for r in records]
        last = records[-1] if records and more else None
        token = page_token(last.created_at, last.job_id) if last is not None else ""
        return gateway_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    @rpc_errors
    async def CancelJob(self, request, context):  # type: ignore[no-untyped-def]
        run = await self._active(request.job_id)
        await self.engine.cancel(run)
        return gateway_pb2.CancelJobResponse(
            job=await self._job_pb(*await self._record(request.job_id))
        )

    @rpc_errors
    async def PauseJob(self, request, context):  # type: ignore[no-untyped-def]
        run = await self._active(request.job_id)
        await self.engine.pause(run)
        return gateway_pb2.PauseJobResponse(job=await self._job_pb(run.record, run))

    @rpc_errors
    async def ResumeJob(self, request, context):  # type: ignore[no-untyped-def]
        run = await self._active(request.job_id)
        await self.engine.resume(run)
        return gateway_pb2.ResumeJobResponse(job=await self._job_pb(run.record, run))

    @rpc_errors
    async def UpdateJob(self, request, context):  # type: ignore[no-untyped-def]
        run = await self._active(request.job_id)
        if request.HasField("priority"):
            if not 0 <= request.priority <= 9:
                raise InvalidArgument(
                    "priority", f"must be 0 (highest) to 9, got {request.priority}"
                )
            await self.engine.set_priority(run, request.priority)
        return gateway_pb2.UpdateJobResponse(job=await self._job_pb(run.record, run))

    # ------------------------------------------------------------- streams

    @rpc_errors
    @one_stream
    async def WatchJob(self, request, context) -> AsyncIterator[gateway_pb2.WatchJobResponse]:  # type: ignore[no-untyped-def,override]
        interval = max(request.interval_ms, 100) / 1000 if request.interval_ms else 0.5
        while True:
            record, run = await self._record(request.job_id)
            yield gateway_pb2.WatchJobResponse(job=await self._job_with_models(record, run))
            if record.state.is_terminal:
                return
            if run is None:  # driven by another replica: what it records shows in the store
                await self.engine.sync.signals.wait(request.job_id, interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), interval)
            await asyncio.sleep(interval / 4)  # coalesce bursts of changes

    @rpc_errors
    @one_stream
    async def StreamResults(self, request, context) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def,override]
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", f"must be >= 0, got {request.after_seq}")
        job, _ = await self._record(request.job_id)
        converter = ResultPages(self.store, job)
        # What an unread stream holds: one read of at most this many bytes of results.
        window = min(self.limits.stream_window_bytes, self.page_bytes)
        cursor = request.after_seq
        while True:
            run = self.engine.jobs.get(request.job_id)
            changed = run.changed if run is not None else None
            rows = await self.store.results_after(
                request.job_id, cursor, RESULTS_PAGE, max_bytes=window
            )
            if rows:
                cursor = rows[-1].seq
                pages, rows = _pages(rows, window), []
                for page in pages:
                    # Serialised StreamResultsResponses around the stored results
                    # (result_wire; registered to go out as they are).
                    response = stream_results_bytes(page, await converter.extras(page))
                    page.clear()  # the response holds them now, once
                    yield response
                continue
            if request.no_follow or changed is None:
                record = await self.store.get_job(request.job_id)
                if request.no_follow or (record is not None and record.state.is_terminal):
                    return
                # Between the end of a run and its terminal state, or driven by another
                # replica: its next results or change wake us (PostgreSQL), else a poll.
                await self.engine.sync.signals.wait(request.job_id, 0.2)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 1.0)

    # -------------------------------------------------------------- online

    @rpc_errors
    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        self._refuse_if_draining()
        check_task(request.task, "task", self.limits)
        return gateway_pb2.GenerateResponse(result=await self.engine.run_online(request.task))

    @rpc_errors
    @one_stream
    async def Execute(
        self, request_iterator, context
    ) -> AsyncIterator[gateway_pb2.ExecuteResponse]:  # type: ignore[no-untyped-def,override]
        self._refuse_if_draining()
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(EXECUTE_WINDOW)  # a task's, until its result is sent
        # Their bytes: a task's until it is answered, then its result's until it is sent.
        held = ByteWindow(self.limits.stream_window_bytes)
        max_bytes = min(self.limits.stream_window_bytes, self.page_bytes)
        done: asyncio.Queue[tuple[task_pb2.TaskResult, int] | Exception | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def run_one(task: task_pb2.Task, size: int) -> None:
            try:
                result = await self.engine.run_online(task)
            except BaseException:
                slots.release()
                raise
            finally:
                held.release(size)
            held.take(result.ByteSize())
            done.put_nowait((result, result.ByteSize()))

        async def read_all() -> None:
            try:
                async for request in request_iterator:
                    for index, task in enumerate(request.tasks):
                        check_task(task, f"tasks[{index}]", self.limits)
                        size = task.ByteSize()
                        await slots.acquire()
                        await held.acquire(size)  # waits while unsent results fill the window
                        job = loop.create_task(run_one(task, size))
                        running.add(job)
                        job.add_done_callback(running.discard)
                await asyncio.gather(*running)
            except Exception as exc:  # a bad task ends the stream with its error
                done.put_nowait(exc)
            else:
                done.put_nowait(None)

        reader = loop.create_task(read_all())
        try:
            while (item := await done.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                batches, size = [[item]], item[1]
                item = None  # held by the batch only
                while not done.empty() and sum(map(len, batches)) < 64:
                    extra = done.get_nowait()
                    if not isinstance(extra, tuple):  # the end: after what is queued
                        done.put_nowait(extra)
                        break
                    if size + extra[1] > max_bytes:  # large outputs: a message each
                        batches.append([])
                        size = 0
                    batches[-1].append(extra)
                    size += extra[1]
                for batch in batches:
                    response = gateway_pb2.ExecuteResponse(results=[result for result, _ in batch])
                    sizes = [size for _, size in batch]
                    batch.clear()  # the response holds them now, once
                    # Returns once the transport took it: a slow reader holds up the window.
                    yield response
                    for sent in sizes:
                        slots.release()
                        held.release(sent)
        finally:
            reader.cancel()
            for job in list(running):  # the client is gone or wrong: its tasks are not run
                job.cancel()

    # ----------------------------------------------------------- templates

    @rpc_errors
    async def RegisterTemplate(self, request, context):  # type: ignore[no-untyped-def]
        for field in ("name", "version"):
            check_name(getattr(request, field), field, self.limits.max_id_chars, "max_id_chars")
        body = self._template_body(request)
        for field, value in (("name", request.name), ("version", request.version), ("body", body)):
            if not value.strip():
                raise InvalidArgument(field, "must not be empty")
        if "@" in request.name:
            raise InvalidArgument("name", f"must not contain '@', got {request.name!r}")
        tenant = _template_tenant(request)
        note(template=f"{request.name}@{request.version}", tenant=tenant or "(shared)")
        problems = await self.submitter.renderer.check_fragment(
            body, f"{request.name}@{request.version}"
        )
        if problems:  # stored only if a job could extend it: parsed like a job's files
            raise JobFileError([_as_body(p) for p in problems])
        try:
            created_at, _ = await self.store.register_template(
                request.name, request.version, body, tenant=tenant
            )
        except TemplateConflict as exc:
            raise FailedPrecondition(str(exc)) from exc
        template = gateway_pb2.Template(
            name=request.name,
            version=request.version,
            body=body,
            created_at=timestamp(created_at),
            tenant=tenant,
        )
        return gateway_pb2.RegisterTemplateResponse(template=template)

    def _template_body(self, request: gateway_pb2.RegisterTemplateRequest) -> str:
        """The body, within max_job_bytes (which it counts towards in every job that
        extends it). A body far past it is refused from the message's size, without
        building the string (each read of a field builds one: 50 MB took the event loop)."""
        cap = self.limits.max_job_bytes
        others = gateway_pb2.RegisterTemplateRequest(name=request.name, version=request.version)
        if request.ByteSize() - others.ByteSize() > cap + 11:  # + the field's tag and length
            raise InvalidArgument("body", f"is more than {cap:,} bytes (limit max_job_bytes)")
        body: str = request.body
        size = utf8_size(body)
        if size > cap:
            raise InvalidArgument(
                "body", f"is {size:,} bytes; at most {cap:,} (limit max_job_bytes)"
            )
        return body

    @rpc_errors
    async def ListTemplates(self, request, context):  # type: ignore[no-untyped-def]
        check_name(request.name, "name", self.limits.max_id_chars, "max_id_chars")
        after = from_page_token(request.page_token, (str, (int, float), str, str))
        principal = caller()
        rows, more = await self.store.template_page(
            name=request.name or None,
            tenants=None if principal.admin else ["", *principal.tenants],
            limit=LIST_PAGE,
            after=after,  # type: ignore[arg-type]
            max_bytes=self.page_bytes,
        )
        last = rows[-1] if rows and more else None
        token = (
            page_token(last.name, last.created_at, last.version, last.tenant)
            if last is not None
            else ""
        )
        return gateway_pb2.ListTemplatesResponse(
            templates=[
                gateway_pb2.Template(
                    name=t.name,
                    version=t.version,
                    body=t.body,
                    created_at=timestamp(t.created_at),
                    tenant=t.tenant,
                )
                for t in rows
            ],
            next_page_token=token,
        )


def _template_tenant(request: gateway_pb2.RegisterTemplateRequest) -> str:
    """Where the caller's template goes: the tenant asked for, else its first tenant, else
    shared (''); raises PermissionDenied for a tenant or a right it lacks."""
    principal = caller()
    who = f"principal {principal.name!r}"
    if not principal.may_register_templates():
        raise PermissionDenied("name", f"{who} may not register templates (needs role templates)")
    if request.shared:
        if request.tenant:
            raise InvalidArgument("tenant", "a shared template belongs to no tenant")
        if not principal.admin:
            raise PermissionDenied("shared", f"{who} may not register shared templates (admin)")
        return ""
    tenant = request.tenant or principal.default_tenant or ""
    if tenant and not principal.sees(tenant):
        raise PermissionDenied(
            "tenant",
            f"{who} may not register templates for tenant {tenant!r} "
            f"(its tenants: {principal.describe_tenants()})",
        )
    return tenant


def _as_body(problem: Problem) -> Problem:
    """A problem of a template body, under the request field `body`."""
    return dataclasses.replace(problem, field="body")


def _pages(rows: list[ResultRecord], max_bytes: int) -> list[list[ResultRecord]]:
    """Splits rows so that no response outgrows the message limit (large outputs)."""
    pages: list[list[ResultRecord]] = [[]]
    size = 0
    for row in rows:
        if pages[-1] and size + len(row.result) > max_bytes:
            pages.append([])
            size = 0
        pages[-1].append(row)
        size += len(row.result) + 64  # the JobResult fields around the result
    return pages
