"""The gateway's engine: the loops that drive every unfinished job over the pool of
inference servers, and the job controls.

    dispatch loop   Dispatcher.round(): expire → refill → schedule → lease → send
    record loop     results from the links → Settler.answered()
    housekeeping    lease renewal, stalled streams, job deadlines
    heartbeat       this replica among the others (gateway/dispatch/replicas.py)
    sync            what other replicas did: polled, and on PostgreSQL notified at once

Every outcome goes through the Settler (gateway/dispatch/settle.py), the one writer
of task outcomes; the scheduler (gateway/scheduling/) is pure policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from batchinfer.v1 import task_pb2

from gateway import telemetry
from gateway.dispatch.online import OnlineTasks
from gateway.dispatch.policies import job_policy, scheduler_config
from gateway.dispatch.replicas import JobSync, ReplicaMembership, new_replica_id
from gateway.dispatch.rounds import Dispatcher, server_states
from gateway.dispatch.settle import REFUSED, Settler
from gateway.dispatch.window import TaskWindow
from gateway.jobs import JobRun, TaskEntry
from gateway.links import ServerLink, WorkerPool
from gateway.scheduling import Scheduler
from gateway.settings import GatewayConfig
from gateway.store import JobState, JobStore, TaskState

log = logging.getLogger("gateway.engine")
# A batch of results the store would not take (it is down, or kept failing) is tried
# again after this long; nothing else holds the results meanwhile.
RECORD_RETRY_S = 1.0


class JobEngine:
    """Drives every unfinished job over the pool of inference servers."""

    def __init__(
        self, config: GatewayConfig, store: JobStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.replica_id = new_replica_id()
        self.jobs: dict[str, JobRun] = {}
        self.scheduler = Scheduler(scheduler_config(config))
        self.pool = WorkerPool(
            config, self._on_results, self._on_down, self._wake_up, f"{self.replica_id}/"
        )
        self.draining = False  # SIGTERM: no new leases, in-flight results still recorded
        self._stopping = False
        self._wake = asyncio.Event()
        self._results: list[tuple[TaskEntry, task_pb2.TaskResult]] = []
        self._results_ready = asyncio.Event()
        self._recording = 0  # result batches being settled by the record loop
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.metrics = telemetry.GatewayMetrics(
            jobs=lambda: self.jobs.values(),
            inflight=self._inflight_count,
            clock=clock,
            tenants={"default", *config.tenants, *config.tenant_weights},
        )
        self.window = TaskWindow(
            store, self.scheduler, self.jobs, config.queue_per_job, clock, self.spawn, self._wake_up
        )
        self.settler = Settler(store, self.scheduler, self.window, self.jobs, self.metrics, clock)
        self.dispatcher = Dispatcher(
            store,
            self.scheduler,
            self.pool,
            self.window,
            self.settler,
            self.jobs,
            self.metrics,
            clock,
            config.lease_s,
            config.max_lost_leases,
        )
        self.dispatcher.on_first_send = self._mark_running
        self.online = OnlineTasks(self.pool, self.window, clock, self._wake_up)
        self.replicas = ReplicaMembership(
            self.replica_id,
            store,
            self.scheduler,
            self.pool,
            self.jobs,
            config.replica_timeout_s,
            clock,
            self._wake_up,
            self.window.load_first,
        )
        self.sync = JobSync(
            store, self.scheduler, self.settler, self.jobs, self.cancel, config.replica_poll_s
        )
        name = f"batchinfer {self.replica_id}"
        self.listener = store.listener(name, self.sync.on_notice, self.sync.missed)

    # ----------------------------------------------------------------- life

    async def start(self) -> None:
        released = await self.replicas.join()
        if released:
            log.info("requeued %d tasks leased by an earlier gateway process", released)
        await self.pool.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._dispatch_forever(), name="dispatch"),
            loop.create_task(self._record_forever(), name="record"),
            loop.create_task(self._housekeeping_forever(), name="housekeeping"),
            loop.create_task(self.replicas.beat_forever(), name="heartbeat"),
            loop.create_task(self.sync.poll_forever(), name="sync"),
        ]
        if self.listener is not None:
            self._tasks.append(loop.create_task(self.listener.run_forever(), name="listen"))
            self._tasks.append(loop.create_task(self.sync.follow_notices_forever()))

    async def drain(self, grace_s: float) -> int:
        """Stop leasing; wait up to grace_s for the results of what is in flight and record
        them; give back the leases of what is still out (at no cost to those tasks).
        Returns how many tasks were given back."""
        self.draining = True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self._inflight_count() or self._unsettled()):
            await asyncio.sleep(0.05)
        released = 0
        for link in list(self.pool.links.values()):
            if link.inflight.tokens:
                released += await self.store.release_owner(link.owner, free=True)
        await self.replicas.leave()
        # A retry whose backoff runs past the exit is already RETRY_WAIT in the store.
        log.info(
            "drained: %s; %d tasks given back",
            "every task in flight finished" if not released else "the grace period ran out",
            released,
        )
        return released

    def _inflight_count(self) -> int:
        return sum(len(link.inflight.tokens) for link in self.pool.links.values())

    def _unsettled(self) -> bool:
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
        with contextlib.suppress(Exception):  # a store already gone: the others time us out
            await self.replicas.leave()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    def _wake_up(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- jobs

    def adopt(self, job: JobRun) -> None:
        """Starts driving a job whose record exists in the store."""
        self.jobs[job.job_id] = job
        self.scheduler.add_job(job_policy(job))
        if job.record.state == JobState.PAUSED:
            self.scheduler.update_job(job.job_id, paused=True)
        self.metrics.job_seen(job)
        self._wake_up()

    def _mark_running(self, job: JobRun) -> None:
        self.spawn(
            self.store.set_job_state(job.job_id, JobState.RUNNING, expected={JobState.QUEUED})
        )

    async def pause(self, job: JobRun) -> None:
        expected = {JobState.QUEUED, JobState.RUNNING}
        if await self.store.set_job_state(job.job_id, JobState.PAUSED, expected=expected):
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
        await self._end_job(job, TaskState.CANCELLED, "CANCELLED", "the job was cancelled")
        if not job.expanded:  # rows never expanded are not tasks: the job is what was stored
            job.counters.total = sum((await self.store.counts(job.job_id)).values())
            await self.store.mark_expanded(job.job_id, job.counters.total)
            job.expanded = job.record.expanded = True
            job.record.total = job.counters.total
        await self.settler.finish_job(job, JobState.CANCELLED)

    async def fail_job(self, job: JobRun, error: str) -> None:
        """The job cannot go on (an input row turned out bad): end it with its error."""
        await self._end_job(job, TaskState.CANCELLED, "JOB_FAILED", error)
        await self.settler.finish_job(job, JobState.FAILED, error=error)

    async def maybe_complete(self, job: JobRun) -> None:
        await self.settler.complete_if_done(job)

    async def _end_job(self, job: JobRun, state: TaskState, code: str, message: str) -> None:
        await self.settler.end_job(job, state, code, message, ServerLink.cancel)

    # ------------------------------------------------------------ dispatch

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
            if self.draining:
                continue
            try:
                if self.online.waiting:
                    self.online.send()
                await self.dispatcher.round()
            except Exception:
                log.exception("dispatch round failed")
                await asyncio.sleep(0.5)

    async def run_online(self, task: task_pb2.Task) -> task_pb2.TaskResult:
        """One task outside any job (Execute, Generate): not stored, retried in memory."""
        return await self.online.run(task)

    # ------------------------------------------------------------- results

    def _on_results(self, link: ServerLink, results: list[task_pb2.TaskResult]) -> None:
        for result in results:
            key = int(result.task_id) if result.task_id.isdigit() else -1
            entry = self.window.get(key)
            outstanding = link.inflight.pop(key)
            if entry is None or entry.link is not link:
                if not outstanding:  # an answer to a task this stream no longer holds
                    self.settler.duplicate()
                continue  # else its job ended (cancel, deadline) while it ran: moot
            entry.link = None
            if entry.future is not None:
                self.online.done(entry, result)
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
            await self.settle_results()

    async def settle_results(self) -> None:
        """Settles the results that arrived since the last call, a job at a time."""
        batch, self._results = self._results, []
        if not batch:
            return
        by_job: dict[str, list[tuple[TaskEntry, task_pb2.TaskResult]]] = defaultdict(list)
        for entry, result in batch:
            by_job[entry.job_id].append((entry, result))
        self._recording += 1
        held: list[tuple[TaskEntry, task_pb2.TaskResult]] = []
        try:
            for job_id, items in by_job.items():
                try:
                    await self.settler.answered(job_id, items)
                except Exception:
                    log.exception(
                        "recording %d results of job %s failed; trying again in %g s",
                        len(items),
                        job_id,
                        RECORD_RETRY_S,
                    )
                    held.extend(items)
        finally:
            self._recording -= 1
        if held:  # kept, not dropped: a result dropped here left its task RUNNING for good
            asyncio.get_running_loop().call_later(RECORD_RETRY_S, self._settle_again, held)

    def _settle_again(self, held: list[tuple[TaskEntry, task_pb2.TaskResult]]) -> None:
        self._results.extend(held)
        self._results_ready.set()

    def _on_down(self, link: ServerLink, lost: dict[int, int]) -> None:
        """A stream ended with tasks in flight (see Settler.lost)."""
        if not lost or self._stopping:
            return  # a gateway that stops gave its leases back in drain()
        entries = [e for key in lost if (e := self.window.get(key)) is not None]
        for entry in [e for e in entries if e.future is not None]:
            self.online.done(entry, None)
        entries = [e for e in entries if e.future is None]
        for entry in entries:
            entry.link = None
        self.spawn(self.settler.lost(link.owner, entries, free=link.lost_is_free))

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
        for job in list(self.jobs.values()):
            past_deadline = job.deadline_at is not None and now >= job.deadline_at
            if past_deadline and not job.record.state.is_terminal:
                message = "the job's deadline passed"
                await self._end_job(job, TaskState.FAILED, "DEADLINE_EXCEEDED", message)
                await self.settler.finish_job(job, JobState.COMPLETED)
            else:
                await self.settler.complete_if_done(job)

    # ----------------------------------------------------------------- views

    def wait_reason(self, job: JobRun) -> str:
        if job.record.state == JobState.PAUSED:
            return "paused"
        servers = server_states(self.pool.ready_links())
        if not servers:
            return "no inference server is ready"
        return self.scheduler.wait_reason(job.job_id, self.clock(), servers) or ""


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())
