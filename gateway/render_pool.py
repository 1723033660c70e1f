"""The client's work, off the gateway's event loop: parsing a job, checking it and
expanding it into tasks run in worker processes that a bad job can only kill.

Each step runs in a fresh child forked from a forkserver (the job-file modules
already imported, so a child starts in milliseconds). A child has an address
space cap (RLIMIT_AS), a CPU budget per step (RLIMIT_CPU) and a wall-clock
budget per step, watched from here; one that breaches is killed, and its job
fails with INVALID_ARGUMENT naming the limit, the row and the template it was
on. Expansion streams: the child renders one chunk of tasks per request over a
pipe, so a job of millions of rows goes into the store as it is rendered.

`InlineRenderer` does the same work in threads (`render_workers=0`; tests), with
the sandbox's in-process limits only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import resource
import signal
import traceback
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.convert import rendered_to_pb
from gateway.jobfile import (
    NO_UPLOAD,
    JobFileError,
    JobSpec,
    Problem,
    Progress,
    count_rows,
    expand,
    fragment_problems,
    iter_problems,
    load_job,
    summarised,
    template_field,
)
from gateway.limits import Limits

CHUNK = 2000  # tasks per chunk at most
CHUNK_BYTES = 8 * 1024 * 1024  # payload bytes per chunk at most (a chunk crosses a pipe)

Templates = Mapping[tuple[str, str], str]
TaskRow = tuple[str, int, str, bytes, int, str | None, tuple[str, str] | None]
"""(task_id, idx, input_hash, payload, est_tokens, shard_key, (reference, input) or None):
a task for the store."""


@dataclass(frozen=True)
class Checked:
    """A parsed, counted and (when small enough) fully rendered-once job."""

    job: JobSpec  # without compiled templates when it came from a worker
    rows: int


class Renderer(Protocol):
    async def check(
        self,
        spec: Mapping[str, Any],
        templates: Templates,
        *,
        max_rows: int,
        prevalidate_rows: int,
        count: bool = True,
    ) -> Checked: ...

    def expand(
        self, spec: Mapping[str, Any], templates: Templates, *, job_id: str, skip: int
    ) -> AsyncGenerator[list[TaskRow], None]: ...

    async def check_fragment(self, text: str, filename: str) -> list[Problem]:
        """Why a template body is not a job-file fragment (jobfile.fragment_problems)."""
        ...


# ------------------------------------------------------------ the work itself


def load_submitted(spec: Mapping[str, Any], templates: Templates, limits: Limits) -> JobSpec:
    """Runs the job-file language on what a client sent (Submission.to_dict()); raises
    JobFileError. No path is read but the uploaded input file."""
    files: Mapping[str, str] = spec.get("files") or {}

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

    upload = spec.get("upload")
    job = load_job(
        text=spec["job_yaml"],
        filename=spec.get("filename") or "job.yaml",
        variables=dict(spec.get("variables") or {}),
        profile=spec.get("profile") or None,
        read_file=read_file,
        resolve_template=resolve_template,
        input_file=upload,
        limits=limits,
    )
    if job.inputs.file is not None and not upload:
        raise JobFileError([Problem(NO_UPLOAD, job.source, None, "inputs.file")])
    return job


def check_job(
    spec: Mapping[str, Any],
    templates: Templates,
    limits: Limits,
    *,
    max_rows: int,
    prevalidate_rows: int,
    count: bool = True,
    progress: Progress | None = None,
) -> Checked:
    """Parses the job, counts its rows (stopping past `max_rows`) and, when it has at most
    `prevalidate_rows`, renders every row once; raises JobFileError."""
    job = load_submitted(spec, templates, limits)
    if not count:
        return Checked(job, 0)
    rows = count_rows(job, stop_at=max_rows + 1) * len(job.model_names())  # tasks
    if rows > max_rows:
        many = f"{rows}" if job.inputs.file is None else f"at least {rows}"
        message = f"the job has {many} tasks; this gateway takes at most {max_rows}"
        raise JobFileError([Problem(message, file=job.source, field="inputs")])
    if rows <= prevalidate_rows:
        keep = limits.max_error_details
        problems = list(itertools.islice(iter_problems(job, progress=progress), keep + 1))
        if problems:
            raise JobFileError(summarised(problems, keep, more_known=len(problems) > keep))
    return Checked(job, rows)


def task_chunks(
    spec: Mapping[str, Any],
    templates: Templates,
    limits: Limits,
    *,
    job_id: str,
    skip: int,
    progress: Progress | None = None,
) -> Iterator[list[TaskRow]]:
    """The job's tasks from row `skip` on, in chunks; raises JobFileError at a bad row."""
    job = load_submitted(spec, templates, limits)
    tasks = itertools.islice(expand(job, check_duplicates=False, progress=progress), skip, None)
    while True:
        chunk: list[TaskRow] = []
        size = 0
        for rendered in tasks:
            payload = rendered_to_pb(rendered, job.model, job_id).SerializeToString()
            chunk.append(
                (
                    rendered.task_id,
                    rendered.index,
                    rendered.input_hash,
                    payload,
                    rendered.est_tokens,
                    rendered.shard_key,
                    None
                    if rendered.reference is None
                    else (rendered.reference, rendered.eval_input),
                )
            )
            size += len(payload)
            if len(chunk) >= CHUNK or size >= CHUNK_BYTES:
                break
        if not chunk:
            return
        yield chunk


# --------------------------------------------------------- in the gateway's threads


class InlineRenderer:
    """The work in threads of the gateway process: no isolation beyond the sandbox."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def check(
        self,
        spec: Mapping[str, Any],
        templates: Templates,
        *,
        max_rows: int,
        prevalidate_rows: int,
        count: bool = True,
    ) -> Checked:
        return await asyncio.to_thread(
            check_job,
            spec,
            templates,
            self.limits,
            max_rows=max_rows,
            prevalidate_rows=prevalidate_rows,
            count=count,
        )

    async def expand(
        self, spec: Mapping[str, Any], templates: Templates, *, job_id: str, skip: int
    ) -> AsyncGenerator[list[TaskRow], None]:
        chunks = task_chunks(spec, templates, self.limits, job_id=job_id, skip=skip)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk

    async def check_fragment(self, text: str, filename: str) -> list[Problem]:
        return await asyncio.to_thread(fragment_problems, text, filename, self.limits)


# ------------------------------------------------------------- in worker processes


class _SharedProgress:
    """Row and template being rendered, in memory the gateway reads when a step stalls."""

    def __init__(self, cells: Any) -> None:
        self.cells = cells

    def mark(self, row: int, template: int) -> None:
        self.cells[0] = row
        self.cells[1] = template


def _child_main(conn: Any, cells: Any, request: dict[str, Any]) -> None:
    """A worker: one check, or one expansion driven chunk by chunk by "next" requests."""
    limits: Limits = request["limits"]
    resource.setrlimit(resource.RLIMIT_AS, (limits.render_memory_bytes, limits.render_memory_bytes))
    progress = _SharedProgress(cells)
    try:
        if request["kind"] == "fragment":
            _cpu_budget(limits)
            conn.send(("fragment", fragment_problems(request["text"], request["filename"], limits)))
            return
        if request["kind"] == "check":
            _cpu_budget(limits)
            checked = check_job(
                request["spec"], request["templates"], limits, progress=progress, **request["args"]
            )
            checked.job._templates = None  # compiled Jinja code does not pickle
            conn.send(("checked", checked))
            return
        chunks = task_chunks(
            request["spec"], request["templates"], limits, progress=progress, **request["args"]
        )
        while conn.recv() == "next":
            _cpu_budget(limits)
            conn.send(("chunk", next(chunks, None)))
    except JobFileError as exc:
        conn.send(("problems", exc.problems))
    except MemoryError:
        conn.send(("memory", None))
    except (EOFError, BrokenPipeError):
        pass  # the gateway went away or gave up on this step
    except Exception:  # a bug: the gateway reports it as one
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _cpu_budget(limits: Limits) -> None:
    """render_cpu_s more CPU seconds from now; past them the kernel sends SIGXCPU."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(usage.ru_utime + usage.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (spent + limits.render_cpu_s, resource.RLIM_INFINITY))


class RenderPool:
    """Worker processes for checks and expansions, `workers` of each kind at once."""

    def __init__(self, limits: Limits, workers: int) -> None:
        self.limits = limits
        self._checks = asyncio.Semaphore(workers)
        self._expansions = asyncio.Semaphore(workers)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["gateway.render_pool"])

    async def start(self) -> None:
        """Starts the forkserver now, so the first job does not wait for it."""
        from multiprocessing import forkserver

        await asyncio.to_thread(forkserver.ensure_running)

    async def check(
        self,
        spec: Mapping[str, Any],
        templates: Templates,
        *,
        max_rows: int,
        prevalidate_rows: int,
        count: bool = True,
    ) -> Checked:
        args = {"max_rows": max_rows, "prevalidate_rows": prevalidate_rows, "count": count}
        request = {"kind": "check", "spec": spec, "templates": templates, "args": args}
        async with self._checks:
            worker = await self._spawn(request, spec)
            kind = "died"
            try:
                kind, value = await worker.receive("checking the job")
            finally:  # a client that gave up (cancelled) leaves nothing running
                await worker.stop(kill=kind == "died")
        if kind != "checked":
            raise _failure(kind, value, worker, "checking the job")
        return value  # type: ignore[no-any-return]

    async def expand(
        self, spec: Mapping[str, Any], templates: Templates, *, job_id: str, skip: int
    ) -> AsyncGenerator[list[TaskRow], None]:
        args = {"job_id": job_id, "skip": skip}
        request = {"kind": "expand", "spec": spec, "templates": templates, "args": args}
        async with self._expansions:
            worker = await self._spawn(request, spec)
            busy = False
            try:
                while True:
                    worker.conn.send("next")
                    busy = True
                    kind, value = await worker.receive("expanding the job")
                    busy = False
                    if kind != "chunk":
                        await worker.stop(kill=True)  # reaped first: its exit code tells why
                        raise _failure(kind, value, worker, "expanding the job")
                    if value is None:
                        return
                    yield value
            finally:  # between chunks the child waits for "stop"; mid-chunk it is killed
                with contextlib.suppress(OSError):
                    worker.conn.send("stop")
                await worker.stop(kill=busy)

    async def check_fragment(self, text: str, filename: str) -> list[Problem]:
        request = {"kind": "fragment", "text": text, "filename": filename}
        async with self._checks:
            worker = await self._spawn(request, {"filename": filename})
            kind = "died"
            try:
                kind, value = await worker.receive("checking the template")
            finally:
                await worker.stop(kill=kind == "died")
        if kind != "fragment":
            raise _failure(kind, value, worker, "checking the template")
        return value  # type: ignore[no-any-return]

    async def _spawn(self, request: dict[str, Any], spec: Mapping[str, Any]) -> _Worker:
        request = {**request, "limits": self.limits}
        parent, child = self._context.Pipe(duplex=True)
        cells = self._context.RawArray("q", 2)
        process = self._context.Process(
            target=_child_main, args=(child, cells, request), daemon=True, name="batchinfer-render"
        )
        await asyncio.to_thread(process.start)
        child.close()  # ours: so its death reads as EOF here
        return _Worker(process, parent, cells, self.limits, spec.get("filename") or "job.yaml")


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process
    conn: Any  # multiprocessing.connection.Connection
    cells: Any  # RawArray: row, template
    limits: Limits
    source: str
    timed_out: bool = False

    async def receive(self, step: str) -> tuple[str, Any]:
        """The child's next message within render_wall_s; ("died", None) if it died."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, _set_once, ready)
        try:
            await asyncio.wait_for(ready, self.limits.render_wall_s)
        except TimeoutError:
            self.timed_out = True
            return "died", None
        finally:
            loop.remove_reader(fd)
        try:
            return await asyncio.to_thread(self.conn.recv)  # type: ignore[no-any-return]
        except (EOFError, OSError):
            return "died", None

    async def stop(self, kill: bool = False) -> None:
        """Ends the child (at once with `kill`, else after a second if still busy), reaps it."""
        if self.conn.closed:
            return
        self.conn.close()
        if not kill:
            await asyncio.to_thread(self.process.join, 1.0)
        if self.process.exitcode is None:
            self.process.kill()
            await asyncio.to_thread(self.process.join)

    def where(self) -> tuple[int | None, int]:
        row, template = int(self.cells[0]), int(self.cells[1])
        return (row or None), template


class WorkerCrashed(RuntimeError):
    """A worker raised an unexpected exception: a bug in the gateway, not in the job."""


def _failure(kind: str, value: Any, worker: _Worker, step: str) -> Exception:
    """What to raise for a step that gave no result: the job's problems, a bug, or a
    JobFileError naming the limit the worker passed and the row and template it was on."""
    if kind == "problems":
        return JobFileError(value)
    if kind == "crash":
        return WorkerCrashed(f"a render worker failed {step}:\n{value}")
    limits = worker.limits
    code = worker.process.exitcode
    if worker.timed_out:
        what = f"took longer than {limits.render_wall_s:g} s (limit render_wall_s)"
    elif code == -signal.SIGXCPU:
        what = f"used more than {limits.render_cpu_s} s of CPU (limit render_cpu_s)"
    elif kind == "memory" or code == -signal.SIGKILL:
        what = (
            f"ran out of its {limits.render_memory_bytes:,} bytes of memory"
            " (limit render_memory_bytes)"
        )
    else:
        what = f"stopped without an answer (exit code {code})"
    row, template = worker.where()
    field = template_field(template) if row is not None else None
    return JobFileError([Problem(f"{step} {what}", worker.source, None, field, row)])
