"""This gateway process among the replicas that share one store: its heartbeat, the
reclaim of the leases of replicas that stopped beating, its share of each rate limit,
fencing when the others presumed it dead, and what the others did to the jobs it drives.

The engine calls in here; nothing here imports the engine (it gets what it needs).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from gateway.dispatch.settle import Settler, refresh
from gateway.jobs import JobRun
from gateway.links import WorkerPool
from gateway.scheduling import Scheduler
from gateway.store import JobRecord, JobState, JobStore, notify

log = logging.getLogger("gateway.replicas")

NOTICE_GAP_S = 0.25  # at most four notice-driven syncs a second


def new_replica_id() -> str:
    """Unique per process: lease owners start with it, so the leases of a replica that
    died can be told from those of one that lives."""
    return uuid.uuid4().hex[:12]


class ReplicaMembership:
    """Registers this replica, beats, and takes back the leases of the silent ones."""

    def __init__(
        self,
        replica_id: str,
        store: JobStore,
        scheduler: Scheduler,
        pool: WorkerPool,
        jobs: dict[str, JobRun],
        timeout_s: float,
        clock: Callable[[], float],
        wake: Callable[[], None],
        send_first: Callable[[JobRun, list[str]], Awaitable[int]],
    ) -> None:
        self.replica_id = replica_id
        self.store = store
        self.scheduler = scheduler
        self.pool = pool
        self.jobs = jobs
        self.timeout_s = timeout_s
        self.clock = clock
        self._wake = wake
        self._send_first = send_first

    async def join(self) -> int:
        """Leases of gateway processes that are gone go back, at no cost to the tasks. On
        SQLite this process is the only one (the server holds the store's lock), so every
        earlier lease is stale; on PostgreSQL only those of no live replica are. Returns
        how many tasks went back."""
        now = self.clock()
        single = self.store.dialect == "sqlite"
        since = float("inf") if single else now - self.timeout_s
        reclaimed = await self.store.reclaim_dead_replicas(since)
        released = sum(len(ids) for jobs in reclaimed.values() for ids in jobs.values())
        await self.store.register_replica(self.replica_id, now)
        released += await self.store.release_orphan_leases(since)
        await self.share_rates(since)
        return released

    async def leave(self) -> None:
        await self.store.leave(self.replica_id)

    async def beat_forever(self) -> None:
        """Its own loop, four beats a timeout: a slow housekeeping round (a job taken up,
        a big store read) must not make the others presume this replica dead."""
        interval = self.timeout_s / 4
        while True:
            await asyncio.sleep(interval)
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat failed")

    async def beat(self) -> None:
        """Heartbeat; take back the leases of replicas that stopped beating."""
        now = self.clock()
        if not await self.store.heartbeat(self.replica_id, now):
            # Presumed dead (paused, cut off): the others took our leases. Fence: drop
            # every stream, so nothing is sent or renewed on a stale lease, and rejoin.
            log.warning("this replica was presumed dead by the others; rejoining")
            for link in list(self.pool.links.values()):
                link.break_stream("this replica was presumed dead", free=True)
            await self.store.register_replica(self.replica_id, now)
        since = now - self.timeout_s
        await self.share_rates(since)  # the silent ones count no more: before their tasks go
        for replica_id, by_job in (await self.store.reclaim_dead_replicas(since)).items():
            log.warning(
                "replica %s stopped beating: %d of its tasks go back to the queue",
                replica_id,
                sum(len(ids) for ids in by_job.values()),
            )
            for job_id, task_ids in by_job.items():
                if (job := self.jobs.get(job_id)) is not None:
                    await self._send_first(job, task_ids)
            for job in self.jobs.values():
                job.cursor, job.exhausted = -1, False  # and look again from the start
            self._wake()

    async def share_rates(self, since: float) -> None:
        """Every live replica drives every job, so each sends 1/live of each rate limit;
        the count is refreshed each heartbeat (docs/guarantees.md: the error this leaves)."""
        live = len(await self.store.live_replicas(since))
        self.scheduler.set_share(1 / max(live, 1))


class JobSync:
    """Brings the jobs this replica drives up to what the store says the others did, and
    takes up the jobs it does not drive yet: every poll_s, and on PostgreSQL at once for
    the jobs a notification names (gateway/store/notify.py)."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        settler: Settler,
        jobs: dict[str, JobRun],
        cancel: Callable[[JobRun], Awaitable[None]],
        poll_s: float,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.settler = settler
        self.jobs = jobs
        self._cancel = cancel
        self.poll_s = poll_s
        # Set by the server: takes up a job another replica accepted (see Submitter.adopt).
        self.adopter: Callable[[JobRecord], Awaitable[JobRun | None]] | None = None
        self._lock = asyncio.Lock()  # one sync at a time: a cancel must not run twice
        self._noticed: set[str] = set()
        self._missed = False
        self._woken = asyncio.Event()
        self.signals = notify.JobSignals()  # wakes watchers of jobs another replica drives

    def on_notice(self, kind: str, job_id: str) -> None:
        """A replica (this one too) changed the job or recorded results of it: wake its
        StreamResults and WatchJob here, and sync it soon (notices coalesce, NOTICE_GAP_S)."""
        job = self.jobs.get(job_id)
        if job is not None:
            job.notify()
        self.signals.fire(job_id)
        if job is not None or kind == notify.JOBS:
            self._noticed.add(job_id)
            self._woken.set()

    def missed(self) -> None:
        """The listener (re)connected: what was sent while it was down is lost; sync all."""
        self._missed = True
        self._woken.set()

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception:
                log.exception("reading what the other replicas did failed")

    async def follow_notices_forever(self) -> None:
        while True:
            await self._woken.wait()
            self._woken.clear()
            noticed, self._noticed = self._noticed, set()
            everything, self._missed = self._missed, False
            try:
                await self.sync(None if everything else noticed)
            except Exception:
                log.exception("syncing the jobs a notification named failed")
            # Results of a busy job are noticed many times a second: one sync per gap.
            await asyncio.sleep(NOTICE_GAP_S)

    async def sync(self, job_ids: set[str] | None = None) -> None:
        """What other replicas did to the jobs this one drives (pause, priority, cancel,
        results), and the unfinished jobs no one here drives yet; `job_ids`: only those."""
        async with self._lock:
            for job in list(self.jobs.values()):
                if job_ids is None or job.job_id in job_ids:
                    record = await self.store.get_job(job.job_id)
                    if record is not None:
                        await self.sync_job(job, record)
            if job_ids is None:
                records = await self.store.unfinished_jobs()
            else:
                found = [await self.store.get_job(j) for j in job_ids if j not in self.jobs]
                records = [r for r in found if r is not None and not r.state.is_terminal]
            for record in records:
                await self._take_up(record)

    async def _take_up(self, record: JobRecord) -> None:
        # An unexpanded job only once its expander is gone (Submitter.adopt).
        if self.adopter is not None and record.job_id not in self.jobs:
            run = await self.adopter(record)
            if run is not None:
                log.info("driving job %s, accepted by another replica", record.job_id)

    async def sync_job(self, job: JobRun, record: JobRecord) -> None:
        if record.state.is_terminal and not job.record.state.is_terminal:
            if record.state == JobState.CANCELLED:
                await self._cancel(job)
            else:
                await self.settler.finish_job(job, record.state, record.error)
            return
        paused = record.state == JobState.PAUSED
        if paused != (job.record.state == JobState.PAUSED):
            job.record.state = record.state
            self.scheduler.update_job(job.job_id, paused=paused)
            job.notify()
        if record.priority != job.record.priority:
            job.record.priority = record.priority
            self.scheduler.update_job(job.job_id, priority=record.priority)
            job.notify()
        if record.expanded and not job.expanded:  # by the replica that took it over
            job.expanded = job.record.expanded = True
            job.counters.total = job.record.total = record.total
        if job.expanded:
            refresh(job, await self.store.counts(job.job_id))
            await self.settler.complete_if_done(job)
