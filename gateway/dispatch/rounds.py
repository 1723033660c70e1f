"""One dispatch round, as vLLM's engine step reads:

    expire → refill → snapshot the servers → scheduler.schedule() → lease → send

The scheduler decides over plain data; this module acts on its decisions: one lease
(one store transaction) per job and server, then one TaskBatch per decision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from batchinfer.v1 import task_pb2

from gateway import telemetry
from gateway.convert import TASK_TYPE_NAMES
from gateway.dispatch.settle import Settler
from gateway.dispatch.window import TaskWindow
from gateway.jobs import JobRun, TaskEntry
from gateway.links import ServerLink, WorkerPool
from gateway.scheduling import Dispatch, Scheduler, ServerState
from gateway.store import JobState, JobStore
from gateway.task_wire import task_bytes


def server_states(links: list[ServerLink]) -> list[ServerState]:
    """The scheduler's view of the ready servers (full ones included: hash sharding
    waits for a key's home)."""
    return [
        ServerState(
            server_id=link.owner,
            free_slots=link.credits,
            outstanding_tokens=link.inflight.total_tokens,
            models=link.models,
            task_types=link.task_types,
        )
        for link in links
    ]


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        pool: WorkerPool,
        window: TaskWindow,
        settler: Settler,
        jobs: dict[str, JobRun],
        metrics: telemetry.GatewayMetrics,
        clock: Callable[[], float],
        lease_s: float,
        max_lost_leases: int,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.pool = pool
        self.window = window
        self.settler = settler
        self.jobs = jobs
        self.metrics = metrics
        self.clock = clock
        self.lease_s = lease_s
        self.max_lost_leases = max_lost_leases
        self.on_first_send: Callable[[JobRun], None] = lambda job: None

    async def round(self) -> None:
        # Nothing is sent past its deadline: expired tasks leave the queue first.
        for job_id, keys in self.scheduler.expired(self.clock()):
            job = self.jobs.get(job_id)
            if job is not None:
                await self.settler.expired(job, keys)
        self._refill_all()
        while True:
            links = {link.owner: link for link in self.pool.ready_links()}
            if not any(link.credits > 0 for link in links.values()):
                return
            decisions = self.scheduler.schedule(self.clock(), server_states(list(links.values())))
            if not decisions:
                return
            groups: dict[tuple[str, str], list[Dispatch]] = defaultdict(list)
            for decision in decisions:
                groups[(decision.job_id, decision.server_id)].append(decision)
            for (job_id, owner), group in groups.items():
                await self._lease_and_send(job_id, group, links[owner])
            self._refill_all()

    def _refill_all(self) -> None:
        for job in list(self.jobs.values()):
            self.window.maybe_refill(job)

    async def _lease_and_send(
        self, job_id: str, decisions: list[Dispatch], link: ServerLink
    ) -> None:
        job = self.jobs.get(job_id)
        batches = [[e for k in d.keys if (e := self.window.get(k)) is not None] for d in decisions]
        gone = sum(len(d.keys) for d in decisions) - sum(len(b) for b in batches)
        if gone:
            self.scheduler.finished(job_id, gone, 0)
        if job is None:
            self.scheduler.finished(job_id, sum(len(b) for b in batches), 0)
            return
        owner = link.owner
        now = self.clock()
        leased = {
            task_id: (attempts, requeues)
            for task_id, attempts, requeues in await self.store.lease(
                job_id, [e.task_id for b in batches for e in b], owner, now + self.lease_s
            )
        }
        # Leased by another replica, or finished or cancelled meanwhile: the
        # compare-and-set said no, and nothing of them was sent.
        taken = [e for b in batches for e in b if e.task_id not in leased]
        for entry in taken:
            self.window.forget(entry.key)
        if taken:
            self.scheduler.not_sent(job_id, len(taken), sum(e.est_tokens for e in taken))
        for entry in (e for b in batches for e in b if e.task_id in leased):
            entry.attempts, entry.requeues = leased[entry.task_id]
        limit = job.spec.retry.max_attempts + self.max_lost_leases
        doomed = [e for b in batches for e in b if e.task_id in leased and e.spent > limit]
        if doomed:
            await self.settler.gave_up(job, doomed)
        batches = [[e for e in b if e.task_id in leased and e.spent <= limit] for b in batches]
        sendable = [e for b in batches for e in b]
        if not sendable:
            return
        if link.owner != owner or not link.ready:  # the stream went away while we leased
            await self.settler.given_back(job, sendable)
            return
        rejected: list[tuple[TaskEntry, task_pb2.TaskResult]] = []
        for batch in batches:
            if batch:
                rejected += self._send_batch(job, batch, link, now)
        job.counters.running += len(sendable)
        if rejected:  # refused when the job was expanded: they fail here, never sent
            await self.settler.answered(job_id, rejected)
        if job.record.state == JobState.QUEUED:
            job.record.state = JobState.RUNNING
            self.on_first_send(job)

    def _send_batch(
        self, job: JobRun, batch: list[TaskEntry], link: ServerLink, now: float
    ) -> list[tuple[TaskEntry, task_pb2.TaskResult]]:
        """Sends the batch; returns the tasks it holds that were refused at expansion,
        with their error results (not sent)."""
        tasks, sent, rejected = [], [], []
        for entry in batch:
            if not entry.task_type and not job.tasks_vary:
                entry.task_type = job.record.task_type
            elif not entry.task_type:  # an OpenAI batch line's first send: its type, and
                task = task_pb2.Task.FromString(entry.payload)  # whether it was refused
                entry.task_type = TASK_TYPE_NAMES.get(task.task_type, "")
                if task.HasField("rejected"):
                    result = task_pb2.TaskResult(task_id=task.task_id, error=task.rejected)
                    rejected.append((entry, result))
                    continue
            sent.append(entry)
            entry.owner, entry.link, entry.sent_at = link.owner, link, now
            entry.span = telemetry.start_task_span(job, entry, link.address)
            traceparent, tracestate = telemetry.trace_header(entry.span)
            tasks.append(
                task_bytes(entry.payload, str(entry.key), entry.spent, traceparent, tracestate)
            )
        if not sent:
            return rejected
        first = any(e.first for e in sent)
        for entry in sent:
            entry.first = False  # once: sent again (a retry), it waits its turn
        link.send(tasks, [(e.key, e.est_tokens) for e in sent], first=first)
        telemetry.dispatch_span(job, sent, link.address)
        self.metrics.batch_sent(len(tasks), sum(e.est_tokens for e in sent))
        return rejected
