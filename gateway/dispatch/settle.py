"""Settling outcomes: the one place that changes a task's state in the store after it
was leased, tells the scheduler, updates the job's counters and metrics, and completes
jobs. Every way a task can come back goes through here:

    answered     a server's result: recorded, retried after a backoff, or (refused
                 unrun by a draining server) sent elsewhere at no cost
    expired      its deadline passed while it was queued
    gave_up      its servers kept going away under it (LEASE_LOST)
    given_back   leased but never sent (the stream went away meanwhile): free
    lost         its stream ended with it in flight (spent unless the server drained)
    end_job      cancel, a job deadline, or a job that cannot go on

A job's counters are a cache of what the store holds: before a job is completed the
store's counts are read, and the counters refreshed from them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from batchinfer.v1 import task_pb2

from gateway import telemetry
from gateway.convert import TASK_TYPES
from gateway.dispatch.retry import Retry, decide
from gateway.dispatch.window import TaskWindow
from gateway.evaluation.scoring import Scorer
from gateway.jobs import JobRun, TaskEntry
from gateway.scheduling import Scheduler
from gateway.store import JobState, JobStore, Outcome, ResultRecord, TaskState
from gateway.store.records import OPEN_TASK_STATES

log = logging.getLogger("gateway.engine")

# A draining server answers UNAVAILABLE for the tasks it will not run: sending them
# elsewhere costs them nothing (up to this many times, a guard against a loop).
REFUSED = "UNAVAILABLE"
MAX_FREE_REQUEUES = 100
FINISH_CHUNK = 5000  # open tasks ended per store transaction on cancel or deadline


def server_of(owner: str) -> str:
    """The server address in a lease owner, "<replica>/<address>#<stream>"."""
    return owner.split("#")[0].rsplit("/", 1)[-1]


def error_result(task_id: str, code: str, message: str, attempt: int) -> bytes:
    error = task_pb2.TaskError(code=code, message=message)
    return task_pb2.TaskResult(task_id=task_id, error=error, attempt=attempt).SerializeToString()


class Settler:
    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        window: TaskWindow,
        jobs: dict[str, JobRun],
        metrics: telemetry.GatewayMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.window = window
        self.jobs = jobs
        self.metrics = metrics
        self.clock = clock
        self.scorer = Scorer(store)  # scores kept with results, for jobs with `evaluate:`

    # ---- a server answered ----------------------------------------------------------

    async def answered(
        self, job_id: str, items: list[tuple[TaskEntry, task_pb2.TaskResult]]
    ) -> None:
        job = self.jobs.get(job_id)
        outcomes: list[Outcome] = []
        retries: dict[float, list[TaskEntry]] = defaultdict(list)
        refused: list[TaskEntry] = []
        tokens = 0
        for entry, result in items:
            error = result.error if result.WhichOneof("output") == "error" else None
            if entry.refused and entry.requeues < MAX_FREE_REQUEUES:
                refused.append(entry)  # not run: send it elsewhere, no attempt spent
                telemetry.end_task_span(entry, result, retried=True)
                continue
            if error is not None and job is not None:
                decision = decide(error.retryable, entry.spent, job.spec.retry)
                if isinstance(decision, Retry):
                    retries[decision.delay].append(entry)
                    telemetry.end_task_span(entry, result, retried=True)
                    continue
            result.task_id = entry.task_id
            result.attempt = entry.spent
            result.task_type = TASK_TYPES.get(entry.task_type, result.task_type)
            result.server = result.server or server_of(entry.owner or "")
            outcomes.append(
                Outcome(
                    task_id=entry.task_id,
                    attempt=entry.attempts,
                    state=TaskState.FAILED if error is not None else TaskState.SUCCEEDED,
                    result=result.SerializeToString(),
                    prompt_tokens=result.usage.prompt_tokens,
                    completion_tokens=result.usage.completion_tokens,
                    error=f"{error.code}: {error.message}" if error is not None else None,
                    requeues=entry.requeues,
                )
            )
            tokens += result.usage.prompt_tokens + result.usage.completion_tokens
            telemetry.end_task_span(entry, result, retried=False)
        recorded = await self._record(job_id, job, outcomes) if outcomes else []
        self.scheduler.finished(job_id, len(items), tokens)
        again = {e.key for group in retries.values() for e in group} | {e.key for e in refused}
        for entry, _ in items:
            if entry.key not in again:
                self.window.forget(entry.key)
        if job is None:
            return
        job.counters.running -= len(items)
        for record in recorded:
            job.counters.add_terminal(record.state)
            job.counters.prompt_tokens += record.prompt_tokens
            job.counters.completion_tokens += record.completion_tokens
        self.metrics.results_recorded(job, recorded, items)
        for _ in range(len(outcomes) - len(recorded)):  # lost the compare-and-set: a late duplicate
            self.duplicate()
        for delay, group in retries.items():
            await self._retry_later(job, group, delay)
        if refused:
            await self._requeue_free(job, refused, REFUSED)
        job.notify()
        await self.complete_if_done(job)

    async def _record(
        self, job_id: str, job: JobRun | None, outcomes: list[Outcome]
    ) -> list[ResultRecord]:
        """The one write of outcomes, with their scores when the job evaluates."""
        scores = await self.scorer.scores(job, outcomes)
        return await self.store.record_outcomes(job_id, outcomes, self.clock(), scores)

    def duplicate(self) -> None:
        """A result that lost the compare-and-set (a late answer): dropped, and counted."""
        self.metrics.duplicate()

    async def _retry_later(self, job: JobRun, entries: list[TaskEntry], delay: float) -> None:
        await self.store.requeue(
            job.job_id,
            [(e.task_id, e.attempts) for e in entries],
            not_before=self.clock() + delay,
            error="retry",
        )
        self.metrics.retried(job, len(entries))
        asyncio.get_running_loop().call_later(delay, self.window.requeue, job, entries)

    async def _requeue_free(self, job: JobRun, entries: list[TaskEntry], error: str | None) -> None:
        await self.store.requeue(
            job.job_id,
            [(e.task_id, e.attempts) for e in entries],
            not_before=None,
            error=error,
            free=True,
        )
        if error is not None:
            self.metrics.retried(job, len(entries))
        self.window.requeue(job, entries)

    # ---- outcomes the gateway decides -------------------------------------------------

    async def given_back(self, job: JobRun, entries: list[TaskEntry]) -> None:
        """Leased but never sent: the lease costs nothing."""
        self.scheduler.finished(job.job_id, len(entries), 0)
        await self._requeue_free(job, entries, None)

    async def expired(self, job: JobRun, keys: list[int]) -> None:
        """Queued tasks whose deadline passed: they fail without being sent."""
        entries = [e for e in (self.window.forget(k) for k in keys) if e is not None]
        if not entries:
            return
        # Queued, not leased: lease them to ourselves so the compare-and-set holds.
        leased = await self.store.lease(
            job.job_id, [e.task_id for e in entries], "deadline", self.clock()
        )
        message = "the task's deadline passed before it ran"
        outcomes = [  # the lease taken here is no attempt
            Outcome(
                task_id,
                attempts,
                TaskState.FAILED,
                error_result(task_id, "DEADLINE_EXCEEDED", message, attempts - requeues - 1),
                error=f"DEADLINE_EXCEEDED: {message}",
                requeues=requeues + 1,
            )
            for task_id, attempts, requeues in leased
        ]
        await self._record_final(job, outcomes)

    async def gave_up(self, job: JobRun, entries: list[TaskEntry]) -> None:
        """Tasks whose servers kept going away under them (a task that crashes servers)."""
        outcomes = []
        for entry in entries:
            spent = entry.spent - 1  # the lease just taken is not an attempt: it ends unsent
            message = f"gave up after {spent} attempts: the server went away each time"
            outcomes.append(
                Outcome(
                    entry.task_id,
                    entry.attempts,
                    TaskState.FAILED,
                    error_result(entry.task_id, "LEASE_LOST", message, spent),
                    error=f"LEASE_LOST: {message}",
                    requeues=entry.requeues + 1,
                )
            )
        self.scheduler.finished(job.job_id, len(entries), 0)
        for entry in entries:
            self.window.forget(entry.key)
        await self._record_final(job, outcomes)

    async def _record_final(self, job: JobRun, outcomes: list[Outcome]) -> None:
        recorded = await self._record(job.job_id, job, outcomes)
        for record in recorded:
            job.counters.add_terminal(record.state)
        self.metrics.tasks_ended(job, TaskState.FAILED, len(recorded))
        job.notify()
        await self.complete_if_done(job)

    async def lost(self, owner: str, entries: list[TaskEntry], free: bool) -> None:
        """A stream ended with these tasks in flight: back to pending at once. That spends
        an attempt when the server went away with them (a task that crashes servers must
        not loop forever), and nothing when the server had said it was draining."""
        await self.store.release_owner(owner, free=free)
        by_job: dict[str, list[TaskEntry]] = defaultdict(list)
        for entry in entries:
            by_job[entry.job_id].append(entry)
        for job_id, group in by_job.items():
            self.scheduler.finished(job_id, len(group), 0)
            job = self.jobs.get(job_id)
            if job is not None:
                job.counters.running -= len(group)
                self.window.requeue(job, group)

    # ---- whole jobs -----------------------------------------------------------------

    async def end_job(
        self, job: JobRun, state: TaskState, code: str, message: str, cancel: Callable[..., None]
    ) -> None:
        """Every open task of the job ends in `state`; in-flight ones are also cancelled on
        their servers (`cancel(link, wire_ids)`) and stay outstanding there until answered."""
        for key in self.scheduler.remove_job(job.job_id):
            self.window.forget(key)
        by_link: dict[Any, list[str]] = defaultdict(list)
        for entry in self.window.of_job(job.job_id):
            if entry.link is not None:
                by_link[entry.link].append(str(entry.key))
            self.window.forget(entry.key)
        for link, wire_ids in by_link.items():
            cancel(link, wire_ids)
        ended = 0
        while True:  # in chunks: a million-task job must not build a million rows at once
            recorded = await self.store.finish_unfinished(
                job.job_id,
                state,
                lambda task_id, attempts: error_result(task_id, code, message, attempts),
                self.clock(),
                error=f"{code}: {message}",
                limit=FINISH_CHUNK,
            )
            if not recorded:
                break
            ended += len(recorded)
            for _ in recorded:
                job.counters.add_terminal(state)
            job.notify()
        job.counters.running = 0
        self.metrics.tasks_ended(job, state, ended)
        job.notify()

    async def finish_job(self, job: JobRun, state: JobState, error: str | None = None) -> None:
        if await self.store.set_job_state(job.job_id, state, error=error):
            job.record.state = state
            job.record.finished_at = self.clock()
        for key in self.scheduler.remove_job(job.job_id):
            self.window.forget(key)
        self.jobs.pop(job.job_id, None)
        telemetry.end_job_span(job)
        self.metrics.job_ended(job)
        job.notify()
        log.info("job %s %s: %s", job.job_id, state.name.lower(), job.counters)

    async def complete_if_done(self, job: JobRun) -> None:
        """Completes the job when the store says no task of it is open. The counters only
        say when to ask; a mismatch refreshes them from the store."""
        if not job.finished() or job.record.state.is_terminal or job.completing:
            return
        job.completing = True
        try:
            counts = await self.store.counts(job.job_id)
            if any(counts[s] for s in OPEN_TASK_STATES):
                refresh(job, counts)
                return
            if not job.record.state.is_terminal and job.job_id in self.jobs:
                await self.finish_job(job, JobState.COMPLETED)
        finally:
            job.completing = False


def refresh(job: JobRun, counts: dict[TaskState, int]) -> None:
    """Counters from the store's counts (in flight stays as the engine knows it)."""
    c = job.counters
    c.succeeded, c.failed, c.cancelled = (
        counts[TaskState.SUCCEEDED],
        counts[TaskState.FAILED],
        counts[TaskState.CANCELLED],
    )
