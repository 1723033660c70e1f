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
from gateway.store import JobRecord, JobState, JobStore

log = logging.getLogger("gateway.replicas")


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
    ) -> None:
        self.replica_id = replica_id
        self.store = store
        self.scheduler = scheduler
        self.pool = pool
        self.jobs = jobs
        self.timeout_s = timeout_s
        self.clock = clock
        self._wake = wake

    async def join(self) -> int:
        """Leases of gateway processes that are gone go back, at no cost to the tasks. On
        SQLite this process is the only one (the server holds the store's lock), so every
        earlier lease is stale; on PostgreSQL only those of no live replica are. Returns
        how many tasks went back."""
        now = self.clock()
        single = self.store.dialect == "sqlite"
        since = float("inf") if single else now - self.timeout_s
        released = sum((await self.store.reclaim_dead_replicas(since)).values())
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
        for replica_id, released in (await self.store.reclaim_dead_replicas(since)).items():
            log.warning(
                "replica %s stopped beating: %d of its tasks go back to the queue",
                replica_id,
                released,
            )
            for job in self.jobs.values():
                job.cursor, job.exhausted = -1, False  # look again from the start
            self._wake()
        await self.share_rates(since)

    async def share_rates(self, since: float) -> None:
        """Every live replica drives every job, so each sends 1/live of each rate limit;
        the count is refreshed each heartbeat (docs/guarantees.md: the error this leaves)."""
        live = len(await self.store.live_replicas(since))
        self.scheduler.set_share(1 / max(live, 1))


class JobSync:
    """Brings the jobs this replica drives up to what the store says the others did."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        settler: Settler,
        jobs: dict[str, JobRun],
        cancel: Callable[[JobRun], Awaitable[None]],
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.settler = settler
        self.jobs = jobs
        self._cancel = cancel
        # Set by the server: takes up a job another replica accepted (see Submitter.adopt).
        self.adopter: Callable[[JobRecord], Awaitable[JobRun | None]] | None = None

    async def sync(self) -> None:
        """What other replicas did to the jobs this one drives (pause, priority, cancel,
        results), and the unfinished jobs no one here drives yet."""
        for job in list(self.jobs.values()):
            record = await self.store.get_job(job.job_id)
            if record is not None:
                await self.sync_job(job, record)
        if self.adopter is None:
            return
        for record in await self.store.unfinished_jobs():
            if record.job_id not in self.jobs and record.expanded:
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
        if job.expanded:
            refresh(job, await self.store.counts(job.job_id))
            await self.settler.complete_if_done(job)
