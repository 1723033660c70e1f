"""The gateway's engine: one loop that asks the scheduler what to send, leases
those tasks in the store, sends them to inference servers, and records what
comes back.

    decisions = scheduler.schedule(now, servers)   # policy, plain data
    await self._send(decision)                     # store lease + gRPC send
    await self._record(results)                    # store compare-and-set

Tasks live in the store; the engine holds only a bounded window of each job in
memory (queued in the scheduler or in flight), refilled from the store by task
index. A stream that breaks gives its tasks back at once; a retryable error
comes back after a jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from batchinfer.v1 import task_pb2

from gateway import telemetry
from gateway.convert import TASK_TYPE_NAMES
from gateway.jobs import JobRun, TaskEntry
from gateway.links import ServerLink, WorkerPool
from gateway.scheduling import (
    Dispatch,
    JobPolicy,
    QueuedTask,
    RateLimit,
    Scheduler,
    SchedulerConfig,
    ServerState,
)
from gateway.settings import GatewayConfig
from gateway.store import JobState, JobStore, Outcome, TaskRecord, TaskState

log = logging.getLogger(__name__)

ONLINE = "online"  # job id of tasks that come through Execute and Generate
ONLINE_ATTEMPTS = 3
FINISH_CHUNK = 5000  # open tasks ended per store transaction on cancel or deadline

# Error codes a server may answer with that are worth another attempt.
RETRYABLE_CODES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "INTERNAL", "LEASE_LOST"}
)
# A draining server answers UNAVAILABLE for the tasks it will not run: sending them
# elsewhere costs them nothing (up to this many times, a guard against a loop).
REFUSED = "UNAVAILABLE"
MAX_FREE_REQUEUES = 100


class JobEngine:
    """Drives every unfinished job over the pool of inference servers."""

    def __init__(
        self, config: GatewayConfig, store: JobStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.instance = uuid.uuid4().hex[:8]
        self.jobs: dict[str, JobRun] = {}
        self.scheduler = Scheduler(
            SchedulerConfig(
                tenant_weights=dict(config.tenant_weights),
                tenant_max_queued=config.tenant_max_queued,
                aging_per_s=config.aging_per_s,
                max_batch_tasks=config.batch_tasks,
                max_batch_tokens=config.batch_tokens,
            )
        )
        self.pool = WorkerPool(config, self._on_results, self._on_down, self._wake_up)
        self._keys = itertools.count(1)
        self._entries: dict[int, TaskEntry] = {}
        self._results: list[tuple[TaskEntry, task_pb2.TaskResult]] = []
        self._results_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._online: list[TaskEntry] = []
        self.duplicates_dropped = 0
        self.recomputed = 0
        self.draining = False  # SIGTERM: no new leases, in-flight results still recorded
        self._stopping = False
        self._recording = 0  # result batches being written by _record_forever
        self._metrics = telemetry.GatewayMetrics(self)

    # ----------------------------------------------------------------- life

    async def start(self) -> None:
        # Every lease belongs to streams of an earlier gateway process: give them back. The
        # gateway going away is not the task's fault, so it costs no attempt.
        released = await self.store.expire_leases(float("inf"), free=True)
        if released:
            log.info("requeued %d tasks leased by an earlier gateway process", released)
        await self.pool.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._dispatch_forever(), name="dispatch"),
            loop.create_task(self._record_forever(), name="record"),
            loop.create_task(self._housekeeping_forever(), name="housekeeping"),
        ]

    async def drain(self, grace_s: float) -> int:
        """Stop leasing; wait up to grace_s for the results of what is in flight and record
        them; give back the leases of what is still out (at no cost to those tasks).
        Returns how many tasks were given back."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self._in_flight() or self._unrecorded()):
            await asyncio.sleep(0.05)
        released = 0
        for link in list(self.pool.links.values()):
            if link.inflight.tokens:
                released += await self.store.release_owner(link.owner, free=True)
        # A retry whose backoff runs past the exit is already RETRY_WAIT in the store.
        log.info(
            "drained: %s; %d tasks given back",
            "every task in flight finished" if not released else "the grace period ran out",
            released,
        )
        return released

    def _in_flight(self) -> bool:
        return any(link.inflight.tokens for link in self.pool.links.values())

    def _unrecorded(self) -> bool:
        return bool(self._results) or self._recording > 0

    async def stop(self) -> None:
        self._stopping = True
        for task in [*self._tasks, *self._background]:
            task.cancel()
        for job in self.jobs.values():
            if job.expansion is not None:
                job.expansion.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        await self.pool.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    # ---------------------------------------------------------------- jobs

    def adopt(self, job: JobRun) -> None:
        """Starts driving a job whose record exists in the store."""
        spec = job.spec
        schedule = spec.schedule
        rate = None
        if schedule.rate_limit is not None:
            r = schedule.rate_limit
            rate = RateLimit(r.requests_per_s, r.burst, r.tokens_per_s, r.token_burst)
        self.jobs[job.job_id] = job
        self.scheduler.add_job(
            JobPolicy(
                job_id=job.job_id,
                tenant=job.record.tenant,
                priority=job.record.priority,
                model=job.record.model,
                task_type=job.record.task_type,
                rate=rate,
                max_inflight=schedule.max_inflight,
                shard=spec.shard.strategy,
                submitted_at=job.record.created_at,
            )
        )
        if job.record.state == JobState.PAUSED:
            self.scheduler.update_job(job.job_id, paused=True)
        self._wake_up()

    async def pause(self, job: JobRun) -> None:
        if await self.store.set_job_state(
            job.job_id, JobState.PAUSED, expected={JobState.QUEUED, JobState.RUNNING}
        ):
            job.record.state = JobState.PAUSED
            self.scheduler.update_job(job.job_id, paused=True)
            job.notify()

    async def resume(self, job: JobRun) -> None:
        if await self.store.set_job_state(job.job_id, JobState.RUNNING, expected={JobState.PAUSED}):
            job.record.state = JobState.RUNNING
            self.scheduler.update_job(job.job_id, paused=False)
            job.notify()
            self._wake_up()

    async def set_priority(self, job: JobRun, priority: int) -> None:
        await self.store.set_job_priority(job.job_id, priority)
        job.record.priority = priority
        self.scheduler.update_job(job.job_id, priority=priority)
        job.notify()
        self._wake_up()

    async def cancel(self, job: JobRun) -> None:
        """Cancels queued tasks at once and in-flight ones on their servers; keeps results."""
        if job.expansion is not None:
            job.expansion.cancel()
        await self._end_unfinished(job, TaskState.CANCELLED, "CANCELLED", "the job was cancelled")
        if not job.expanded:  # rows never expanded are not tasks: the job is what was stored
            job.counters.total = sum((await self.store.counts(job.job_id)).values())
            await self.store.mark_expanded(job.job_id, job.counters.total)
            job.expanded = job.record.expanded = True
            job.record.total = job.counters.total
        await self._finish_job(job, JobState.CANCELLED)

    async def _end_unfinished(self, job: JobRun, state: TaskState, code: str, message: str) -> None:
        for key in self.scheduler.remove_job(job.job_id):
            self._forget(key)
        by_link: dict[ServerLink, list[str]] = defaultdict(list)
        for entry in [e for e in self._entries.values() if e.job_id == job.job_id]:
            if entry.link is not None:  # stays outstanding on its link until the server answers
                by_link[entry.link].append(str(entry.key))
            self._forget(entry.key)
        for link, wire_ids in by_link.items():
            link.cancel(wire_ids)

        def result_for(task_id: str, attempts: int) -> bytes:
            error = task_pb2.TaskError(code=code, message=message)
            return task_pb2.TaskResult(
                task_id=task_id, error=error, attempt=attempts
            ).SerializeToString()

        ended = 0
        while True:  # in chunks: a million-task job must not build a million rows at once
            recorded = await self.store.finish_unfinished(
                job.job_id, state, result_for, self.clock(), limit=FINISH_CHUNK
            )
            if not recorded:
                break
            ended += len(recorded)
            for _ in recorded:
                job.counters.add_terminal(state)
            job.notify()
        job.counters.running = 0
        self._metrics.tasks_ended(job, state, ended)
        job.notify()

    async def _finish_job(self, job: JobRun, state: JobState, error: str | None = None) -> None:
        if await self.store.set_job_state(job.job_id, state, error=error):
            job.record.state = state
            job.record.finished_at = self.clock()
        for key in self.scheduler.remove_job(job.job_id):
            self._forget(key)
        self.jobs.pop(job.job_id, None)
        telemetry.end_job_span(job)
        job.notify()
        log.info("job %s %s: %s", job.job_id, state.name.lower(), job.counters)

    async def fail_job(self, job: JobRun, error: str) -> None:
        """The job cannot go on (an input row turned out bad): end it with its error."""
        await self._end_unfinished(job, TaskState.CANCELLED, "JOB_FAILED", error)
        await self._finish_job(job, JobState.FAILED, error=error)

    async def maybe_complete(self, job: JobRun) -> None:
        if job.finished() and not job.record.state.is_terminal:
            await self._finish_job(job, JobState.COMPLETED)

    # ------------------------------------------------------------ dispatch

    def _wake_up(self) -> None:
        self._wake.set()

    async def _dispatch_forever(self) -> None:
        while True:
            now = self.clock()
            timeout = 0.5
            wakeup = self.scheduler.next_wakeup(now)
            if wakeup is not None:
                timeout = min(timeout, max(wakeup - now, 0.001))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._dispatch_round()
            except Exception:
                log.exception("dispatch round failed")
                await asyncio.sleep(0.5)

    async def _dispatch_round(self) -> None:
        if self.draining:
            return
        if self._online:
            self._send_online()
        # Nothing is sent past its deadline: expired tasks leave the queue first.
        for job_id, keys in self.scheduler.expired(self.clock()):
            job = self.jobs.get(job_id)
            if job is not None:
                await self._expire_tasks(job, keys)
        for job in list(self.jobs.values()):
            self._maybe_refill(job)
        while True:
            # Full servers stay in the snapshot: hash sharding waits for a key's home.
            links = {link.owner: link for link in self.pool.ready_links()}
            if not any(link.credits > 0 for link in links.values()):
                return
            now = self.clock()
            servers = [
                ServerState(
                    server_id=owner,
                    free_slots=link.credits,
                    outstanding_tokens=link.inflight.total_tokens,
                    models=link.models,
                    task_types=link.task_types,
                )
                for owner, link in links.items()
            ]
            decisions = self.scheduler.schedule(now, servers)
            if not decisions:
                return
            # One lease (one store transaction) per job and server for the whole round.
            groups: dict[tuple[str, str], list[Dispatch]] = defaultdict(list)
            for decision in decisions:
                groups[(decision.job_id, decision.server_id)].append(decision)
            for (job_id, owner), group in groups.items():
                await self._send(job_id, group, links[owner])
            for job in list(self.jobs.values()):
                self._maybe_refill(job)

    async def _send(self, job_id: str, decisions: list[Dispatch], link: ServerLink) -> None:
        """Leases the tasks of these decisions, then sends each decision as one TaskBatch."""
        job = self.jobs.get(job_id)
        batches = [[self._entries[k] for k in d.keys if k in self._entries] for d in decisions]
        lost = sum(len(d.keys) for d in decisions) - sum(len(b) for b in batches)
        if lost:
            self.scheduler.finished(job_id, lost, 0)
        if job is None:
            self.scheduler.finished(job_id, sum(len(b) for b in batches), 0)
            return
        owner = link.owner
        now = self.clock()
        task_ids = [e.task_id for batch in batches for e in batch]
        leased = {
            tid: (attempts, requeues)
            for tid, attempts, requeues in await self.store.lease(
                job_id, task_ids, owner, now + self.config.lease_s
            )
        }
        refused = [e for batch in batches for e in batch if e.task_id not in leased]
        for entry in refused:  # finished or cancelled meanwhile: the CAS said no
            self._forget(entry.key)
        if refused:
            self.scheduler.finished(job_id, len(refused), 0)
        for entry in (e for batch in batches for e in batch if e.task_id in leased):
            entry.attempts, entry.requeues = leased[entry.task_id]
        limit = job.spec.retry.max_attempts + self.config.max_lost_leases
        doomed = [e for batch in batches for e in batch if e.task_id in leased and e.spent > limit]
        if doomed:
            await self._give_up(job, doomed)
        batches = [
            [e for e in batch if e.task_id in leased and e.spent <= limit] for batch in batches
        ]
        sendable = [e for batch in batches for e in batch]
        if not sendable:
            return
        if link.owner != owner or not link.ready:
            # The stream went away while we leased: give the tasks back.
            await self._give_back(job, sendable, owner)
            return
        for batch in batches:
            if batch:
                self._send_batch(job, batch, link, now)
        job.counters.running += len(sendable)
        if job.record.state == JobState.QUEUED:
            job.record.state = JobState.RUNNING
            self.spawn(
                self.store.set_job_state(job.job_id, JobState.RUNNING, expected={JobState.QUEUED})
            )

    def _send_batch(
        self, job: JobRun, batch: list[TaskEntry], link: ServerLink, now: float
    ) -> None:
        tasks = []
        for entry in batch:
            task = task_pb2.Task.FromString(entry.payload)
            task.task_id = str(entry.key)
            task.attempt = entry.spent
            entry.owner, entry.link, entry.sent_at = link.owner, link, now
            entry.span = telemetry.start_task_span(job, entry, task, link.address)
            tasks.append(task)
        link.send(tasks, [(e.key, e.est_tokens) for e in batch])
        telemetry.dispatch_span(job, batch, link.address)
        self._metrics.batch_sent(len(tasks), sum(e.est_tokens for e in batch))

    async def _give_up(self, job: JobRun, entries: list[TaskEntry]) -> None:
        """Fails tasks whose servers kept going away under them (a task that crashes servers)."""
        outcomes = []
        for entry in entries:
            # The lease just taken is not an attempt: it ends here, unsent.
            spent = entry.spent - 1
            error = task_pb2.TaskError(
                code="LEASE_LOST",
                message=f"gave up after {spent} attempts: the server went away each time",
            )
            result = task_pb2.TaskResult(task_id=entry.task_id, error=error, attempt=spent)
            outcomes.append(
                Outcome(
                    entry.task_id,
                    entry.attempts,
                    TaskState.FAILED,
                    result.SerializeToString(),
                    error=f"{error.code}: {error.message}",
                    requeues=entry.requeues + 1,
                )
            )
        recorded = await self.store.record_outcomes(job.job_id, outcomes, self.clock())
        self.scheduler.finished(job.job_id, len(entries), 0)
        for entry in entries:
            self._forget(entry.key)
        for record in recorded:
            job.counters.add_terminal(record.state)
        self._metrics.tasks_ended(job, TaskState.FAILED, len(recorded))
        job.notify()
        await self.maybe_complete(job)

    async def _give_back(self, job: JobRun, entries: list[TaskEntry], owner: str) -> None:
        """Leased but never sent: the lease costs nothing."""
        await self.store.requeue(
            job.job_id,
            [(e.task_id, e.attempts) for e in entries],
            not_before=None,
            error=None,
            free=True,
        )
        self.scheduler.finished(job.job_id, len(entries), 0)
        self._requeue_in_memory(job, entries)

    def _requeue_in_memory(self, job: JobRun, entries: list[TaskEntry]) -> None:
        for entry in entries:
            entry.owner = entry.link = None
        if job.job_id in self.jobs:
            self.scheduler.enqueue(job.job_id, [_queued(e) for e in entries], self.clock())
        self._wake_up()

    # -------------------------------------------------------------- online

    async def run_online(self, task: task_pb2.Task) -> task_pb2.TaskResult:
        """One task outside any job (Execute, Generate): not stored, retried in memory."""
        entry = TaskEntry(
            key=next(self._keys),
            job_id=ONLINE,
            task_id=task.task_id,
            payload=task.SerializeToString(),
            est_tokens=(len(task.prompt) + sum(len(m.content) for m in task.messages)) // 4
            + (task.params.max_new_tokens or 64),
            attempts=0,
            future=asyncio.get_running_loop().create_future(),
            model=task.model,
            task_type=TASK_TYPE_NAMES.get(task.task_type, ""),
        )
        self._entries[entry.key] = entry
        self._online.append(entry)
        self._wake_up()
        try:
            return await entry.future
        finally:
            self._entries.pop(entry.key, None)

    def _send_online(self) -> None:
        waiting, self._online = self._online, []
        ready = self.pool.ready_links()
        by_link: dict[ServerLink, list[TaskEntry]] = defaultdict(list)
        for entry in waiting:
            if entry.future.done():
                continue
            able = [link for link in ready if link.serves(entry.model, entry.task_type)]
            if ready and not able:
                entry.future.set_result(
                    _error(
                        entry,
                        "UNSUPPORTED_MODEL",
                        f"no inference server serves model {entry.model!r} for {entry.task_type or 'this task type'}",
                    )
                )
                continue
            free = [link for link in able if link.credits > len(by_link[link])]
            if not free:
                self._online.append(entry)
                continue
            link = min(free, key=lambda lk: lk.inflight.total_tokens + 64 * len(by_link[lk]))
            by_link[link].append(entry)
        for link, entries in by_link.items():
            tasks = []
            for entry in entries:
                entry.attempts += 1
                entry.link, entry.owner, entry.sent_at = link, link.owner, self.clock()
                task = task_pb2.Task.FromString(entry.payload)
                task.task_id, task.attempt = str(entry.key), entry.attempts
                tasks.append(task)
            link.send(tasks, [(e.key, e.est_tokens) for e in entries])

    def _online_done(self, entry: TaskEntry, result: task_pb2.TaskResult | None) -> None:
        retryable = result is None or (
            result.WhichOneof("output") == "error" and result.error.code in RETRYABLE_CODES
        )
        if retryable and entry.attempts < ONLINE_ATTEMPTS:
            entry.link = None
            self._online.append(entry)
            self._wake_up()
            return
        if result is None:
            result = _error(entry, "UNAVAILABLE", "the inference server went away")
        result.task_id, result.attempt = entry.task_id, entry.attempts
        if not entry.future.done():
            entry.future.set_result(result)

    # -------------------------------------------------------------- refill

    def _maybe_refill(self, job: JobRun) -> None:
        if job.refilling or job.record.state.is_terminal:
            return
        if job.exhausted:
            if not job.in_memory and not job.finished() and self.clock() >= job.rescan_at:
                job.cursor, job.exhausted = -1, False  # look again: retries, released leases
            else:
                return
        if len(job.in_memory) > self.config.queue_per_job // 2:
            return
        job.refilling = True
        self.spawn(self._refill(job))

    async def _refill(self, job: JobRun) -> None:
        try:
            limit = self.config.queue_per_job - len(job.in_memory)
            records = await self.store.pending_tasks(
                job.job_id, after_idx=job.cursor, limit=limit, now=self.clock()
            )
            fresh = [r for r in records if r.task_id not in job.in_memory]
            if records:
                job.cursor = records[-1].idx
            if len(records) < limit and job.expanded:
                job.exhausted = True
                job.rescan_at = self.clock() + 1.0
            if fresh and job.job_id in self.jobs:
                entries = [self._entry(job, r) for r in fresh]
                self.scheduler.enqueue(job.job_id, [_queued(e) for e in entries], self.clock())
                self._wake_up()
        finally:
            job.refilling = False

    def _entry(self, job: JobRun, record: TaskRecord) -> TaskEntry:
        entry = TaskEntry(
            key=next(self._keys),
            job_id=job.job_id,
            task_id=record.task_id,
            payload=record.payload,
            est_tokens=record.est_tokens,
            attempts=record.attempts,
            requeues=record.requeues,
            deadline=record.deadline,
            shard_key=record.shard_key,
        )
        self._entries[entry.key] = entry
        job.in_memory.add(record.task_id)
        return entry

    def _forget(self, key: int) -> TaskEntry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            job = self.jobs.get(entry.job_id)
            if job is not None:
                job.in_memory.discard(entry.task_id)
        return entry

    # ------------------------------------------------------------- results

    def _on_results(self, link: ServerLink, results: list[task_pb2.TaskResult]) -> None:
        for result in results:
            key = int(result.task_id) if result.task_id.isdigit() else -1
            entry = self._entries.get(key)
            outstanding = link.inflight.pop(key)
            if entry is None or entry.link is not link:
                if not outstanding:  # an answer to a task this stream no longer holds
                    self.duplicates_dropped += 1
                    self._metrics.duplicate()
                continue  # else its job ended (cancel, deadline) while it ran: moot
            entry.link = None
            if entry.future is not None:
                self._online_done(entry, result)
                continue
            entry.refused = (
                link.draining
                and result.WhichOneof("output") == "error"
                and result.error.code == REFUSED
            )
            self._results.append((entry, result))
        self._results_ready.set()
        self._wake_up()

    async def _record_forever(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            batch, self._results = self._results, []
            if not batch:
                continue
            by_job: dict[str, list[tuple[TaskEntry, task_pb2.TaskResult]]] = defaultdict(list)
            for entry, result in batch:
                by_job[entry.job_id].append((entry, result))
            self._recording += 1
            try:
                for job_id, items in by_job.items():
                    try:
                        await self._record(job_id, items)
                    except Exception:
                        log.exception("recording %d results of job %s failed", len(items), job_id)
            finally:
                self._recording -= 1

    async def _record(
        self, job_id: str, items: list[tuple[TaskEntry, task_pb2.TaskResult]]
    ) -> None:
        job = self.jobs.get(job_id)
        now = self.clock()
        max_attempts = job.spec.retry.max_attempts if job is not None else 1
        outcomes: list[Outcome] = []
        retries: list[TaskEntry] = []
        refused: list[TaskEntry] = []
        tokens = 0
        for entry, result in items:
            error = result.error if result.WhichOneof("output") == "error" else None
            if entry.refused and entry.requeues < MAX_FREE_REQUEUES:
                refused.append(entry)  # not run: send it elsewhere, no attempt spent
                telemetry.end_task_span(entry, result, retried=True)
                continue
            if error is not None and error.code in RETRYABLE_CODES and entry.spent < max_attempts:
                retries.append(entry)
                telemetry.end_task_span(entry, result, retried=True)
                continue
            result.task_id = entry.task_id
            result.attempt = entry.spent
            result.server = result.server or (entry.owner or "").split("#")[0]
            state = TaskState.FAILED if error is not None else TaskState.SUCCEEDED
            outcomes.append(
                Outcome(
                    task_id=entry.task_id,
                    attempt=entry.attempts,
                    state=state,
                    result=result.SerializeToString(),
                    prompt_tokens=result.usage.prompt_tokens,
                    completion_tokens=result.usage.completion_tokens,
                    error=f"{error.code}: {error.message}" if error is not None else None,
                    requeues=entry.requeues,
                )
            )
            tokens += result.usage.prompt_tokens + result.usage.completion_tokens
            telemetry.end_task_span(entry, result, retried=False)
        recorded = await self.store.record_outcomes(job_id, outcomes, now) if outcomes else []
        self.scheduler.finished(job_id, len(items), tokens)
        retried = {e.key for e in retries} | {e.key for e in refused}
        for entry, _ in items:
            if entry.key not in retried:
                self._forget(entry.key)
        if job is None:
            return
        job.counters.running -= len(items)
        for record in recorded:
            job.counters.add_terminal(record.state)
            job.counters.prompt_tokens += record.prompt_tokens
            job.counters.completion_tokens += record.completion_tokens
        self._metrics.results_recorded(job, recorded, items)
        for _ in range(len(outcomes) - len(recorded)):  # lost the compare-and-set: a late duplicate
            self.duplicates_dropped += 1
            self._metrics.duplicate()
        if retries:
            await self._schedule_retries(job, retries)
        if refused:
            await self.store.requeue(
                job.job_id,
                [(e.task_id, e.attempts) for e in refused],
                not_before=None,
                error=REFUSED,
                free=True,
            )
            self._metrics.retried(job, len(refused))
            self._requeue_in_memory(job, refused)
        job.notify()
        await self.maybe_complete(job)

    async def _schedule_retries(self, job: JobRun, entries: list[TaskEntry]) -> None:
        retry = job.spec.retry
        now = self.clock()
        by_delay: dict[float, list[TaskEntry]] = defaultdict(list)
        for entry in entries:
            base = min(
                retry.initial_backoff * retry.multiplier ** max(entry.spent - 1, 0),
                retry.max_backoff,
            )
            delay = base * (1 + retry.jitter * (2 * random.random() - 1))
            by_delay[round(delay, 3)].append(entry)
        for delay, group in by_delay.items():
            await self.store.requeue(
                job.job_id,
                [(e.task_id, e.attempts) for e in group],
                not_before=now + delay,
                error="retry",
            )
            self._metrics.retried(job, len(group))
            asyncio.get_running_loop().call_later(delay, self._requeue_in_memory, job, group)

    def _on_down(self, link: ServerLink, lost: dict[int, int]) -> None:
        """A stream ended: its in-flight tasks go back to pending at once. That spends an
        attempt when the server went away with them (a task that crashes servers must not
        loop forever), and nothing when the server had said it was draining."""
        if not lost or self._stopping:
            return  # a gateway that stops gave its leases back in drain()
        entries = [self._entries[key] for key in lost if key in self._entries]
        for entry in [e for e in entries if e.future is not None]:
            self._online_done(entry, None)
        entries = [e for e in entries if e.future is None]
        for entry in entries:
            entry.link = None
        self.recomputed += len(entries)
        self.spawn(self._release(link.owner, entries, free=link.draining))

    async def _release(self, owner: str, entries: list[TaskEntry], free: bool) -> None:
        await self.store.release_owner(owner, free=free)
        by_job: dict[str, list[TaskEntry]] = defaultdict(list)
        for entry in entries:
            by_job[entry.job_id].append(entry)
        for job_id, group in by_job.items():
            job = self.jobs.get(job_id)
            self.scheduler.finished(job_id, len(group), 0)
            if job is None:
                continue
            job.counters.running -= len(group)
            self._requeue_in_memory(job, group)

    # --------------------------------------------------------- housekeeping

    async def _housekeeping_forever(self) -> None:
        """Lease renewal, stalled streams, deadlines."""
        interval = min(self.config.lease_s / 3, 2.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._housekeeping()
            except Exception:
                log.exception("housekeeping failed")

    async def _housekeeping(self) -> None:
        now = self.clock()
        for link in list(self.pool.links.values()):
            if link.stalled(time.monotonic()):
                link.break_stream("no result for a whole lease")
            elif link.ready and link.inflight.tokens:
                await self.store.renew_leases(link.owner, now + self.config.lease_s)
        for job_id, keys in self.scheduler.expired(now):
            job = self.jobs.get(job_id)
            if job is not None:
                await self._expire_tasks(job, keys)
        for job in list(self.jobs.values()):
            if (
                job.deadline_at is not None
                and now >= job.deadline_at
                and not job.record.state.is_terminal
            ):
                await self._end_unfinished(
                    job, TaskState.FAILED, "DEADLINE_EXCEEDED", "the job's deadline passed"
                )
                await self._finish_job(job, JobState.COMPLETED)
            else:
                await self.maybe_complete(job)

    async def _expire_tasks(self, job: JobRun, keys: list[int]) -> None:
        entries = [e for e in (self._forget(k) for k in keys) if e is not None]
        outcomes = []
        for entry in entries:
            error = task_pb2.TaskError(
                code="DEADLINE_EXCEEDED", message="the task's deadline passed before it ran"
            )
            result = task_pb2.TaskResult(task_id=entry.task_id, error=error, attempt=entry.spent)
            outcomes.append(
                Outcome(entry.task_id, entry.attempts, TaskState.FAILED, result.SerializeToString())
            )
        # These tasks are queued (not leased): lease them to ourselves so the CAS holds.
        leased = {
            tid: (attempts, requeues)
            for tid, attempts, requeues in await self.store.lease(
                job.job_id, [o.task_id for o in outcomes], "deadline", self.clock()
            )
        }
        outcomes = [  # the lease taken here is no attempt
            Outcome(
                o.task_id,
                leased[o.task_id][0],
                o.state,
                o.result,
                requeues=leased[o.task_id][1] + 1,
            )
            for o in outcomes
            if o.task_id in leased
        ]
        recorded = await self.store.record_outcomes(job.job_id, outcomes, self.clock())
        for record in recorded:
            job.counters.add_terminal(record.state)
        job.notify()

    # ----------------------------------------------------------------- views

    def wait_reason(self, job: JobRun) -> str:
        if job.record.state == JobState.PAUSED:
            return "paused"
        servers = [
            ServerState(
                link.owner, link.credits, link.inflight.total_tokens, link.models, link.task_types
            )
            for link in self.pool.ready_links()
        ]
        if not servers:
            return "no inference server is ready"
        return self.scheduler.wait_reason(job.job_id, self.clock(), servers) or ""


def _error(entry: TaskEntry, code: str, message: str) -> task_pb2.TaskResult:
    return task_pb2.TaskResult(
        task_id=entry.task_id,
        error=task_pb2.TaskError(code=code, message=message),
        attempt=entry.attempts,
    )


def _queued(entry: TaskEntry) -> QueuedTask:
    return QueuedTask(
        key=entry.key,
        est_tokens=entry.est_tokens,
        deadline=entry.deadline,
        shard_key=entry.shard_key,
    )


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
