"""The tasks the gateway holds in memory: a bounded window of each job, queued in the
scheduler or in flight, refilled from the store by task index. Everything else waits
in the store."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.evaluation.results import model_and_row
from gateway.jobs import JobRun, TaskEntry
from gateway.scheduling import QueuedTask, Scheduler
from gateway.store import JobStore, TaskRecord


def queued(entry: TaskEntry) -> QueuedTask:
    return QueuedTask(
        key=entry.key,
        est_tokens=entry.est_tokens,
        deadline=entry.deadline,
        shard_key=entry.shard_key,
        model=entry.model,
    )


class TaskWindow:
    """Task entries by wire key; `jobs` is the engine's map of the jobs it drives."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        jobs: dict[str, JobRun],
        queue_per_job: int,
        clock: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, Any]], Any],
        wake: Callable[[], None],
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.jobs = jobs
        self.entries: dict[int, TaskEntry] = {}
        self._queue_per_job = queue_per_job
        self._clock = clock
        self._spawn = spawn
        self._wake = wake
        self._keys = itertools.count(1)

    def next_key(self) -> int:
        """Wire ids are unique on a stream (task ids only within a job)."""
        return next(self._keys)

    def get(self, key: int) -> TaskEntry | None:
        return self.entries.get(key)

    def of_job(self, job_id: str) -> list[TaskEntry]:
        return [e for e in self.entries.values() if e.job_id == job_id]

    def forget(self, key: int) -> TaskEntry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            job = self.jobs.get(entry.job_id)
            if job is not None:
                job.in_memory.discard(entry.task_id)
        return entry

    def requeue(self, job: JobRun, entries: list[TaskEntry]) -> None:
        """Entries go back to the scheduler's queue (not sent, or to be sent again)."""
        for entry in entries:
            entry.owner = entry.link = None
        if self.scheduler.has_job(job.job_id):  # not a job that is ending
            self.scheduler.enqueue(job.job_id, [queued(e) for e in entries], self._clock())
        self._wake()

    # ---- refill ----------------------------------------------------------------------

    def maybe_refill(self, job: JobRun) -> None:
        if job.refilling or job.record.state.is_terminal:
            return
        if job.exhausted:
            if not job.in_memory and not job.finished() and self._clock() >= job.rescan_at:
                job.cursor, job.exhausted = -1, False  # look again: retries, released leases
            else:
                return
        if len(job.in_memory) > self._queue_per_job // 2:
            return
        job.refilling = True
        self._spawn(self.refill(job))

    async def refill(self, job: JobRun) -> None:
        """Loads the job's next pending tasks from the store into the scheduler's queue."""
        job.refilling = True
        try:
            limit = self._queue_per_job - len(job.in_memory)
            records = await self.store.pending_tasks(
                job.job_id, after_idx=job.cursor, limit=limit, now=self._clock()
            )
            fresh = [r for r in records if r.task_id not in job.in_memory]
            if records:
                job.cursor = records[-1].idx
            if len(records) < limit and job.expanded:
                job.exhausted = True
                job.rescan_at = self._clock() + 1.0
            if fresh and self.scheduler.has_job(job.job_id):
                entries = [self._add(job, r) for r in fresh]
                self.scheduler.enqueue(job.job_id, [queued(e) for e in entries], self._clock())
                self._wake()
        finally:
            job.refilling = False

    async def load_first(self, job: JobRun, task_ids: list[str]) -> int:
        """Loads these tasks (a dead replica's leases, just given back) at the head of the
        job's queue: they were sent before anything queued here, and a refill would find
        them only after the window has drained to half, queued behind what it holds.
        Beyond queue_per_job, as a reclaim is bounded by what the dead one had in flight;
        sent in batches marked `first`, so the servers too run them before what they hold.
        Leasing them stays the usual compare-and-set, so another replica that loads them
        too sends each once. Returns how many were loaded."""
        if job.record.state.is_terminal:
            return 0
        records = await self.store.pending_by_id(job.job_id, task_ids)
        fresh = [r for r in records if r.task_id not in job.in_memory]
        if not fresh or not self.scheduler.has_job(job.job_id):
            return 0
        entries = [self._add(job, r) for r in fresh]
        for entry in entries:
            entry.first = True
        self.scheduler.enqueue(job.job_id, [queued(e) for e in entries], self._clock(), first=True)
        self._wake()
        return len(entries)

    def _add(self, job: JobRun, record: TaskRecord) -> TaskEntry:
        entry = TaskEntry(
            key=self.next_key(),
            job_id=job.job_id,
            task_id=record.task_id,
            payload=record.payload,
            est_tokens=record.est_tokens,
            attempts=record.attempts,
            requeues=record.requeues,
            deadline=record.deadline,
            shard_key=record.shard_key,
            model=model_and_row(job.record.model, record.task_id)[0]
            if "," in job.record.model
            else "",
        )
        self.entries[entry.key] = entry
        job.in_memory.add(record.task_id)
        return entry
