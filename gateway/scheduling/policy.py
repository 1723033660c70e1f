"""The pure scheduler: ready tasks and server capacity in, batches to send out.

No I/O and no clock: `now` is always an argument. Each schedule() call
repeatedly picks one job and forms one batch for one server, in this order:

1. Eligibility: a job is skipped while paused, at its in-flight cap, with no
   live server for its model and task type, or held by its own or its
   tenant's token bucket (requests/s and tokens/s, with bursts).
2. Priority: the best (lowest) effective level wins, where the level is the
   job's priority (0..9) less `aging_per_s` levels per second since the job
   was last served (or last had work queued), floored at 0, so a waiting
   job is never starved.
3. Fair share: within that level, the tenant with the smallest virtual time
   (tokens charged / weight; see fairness.py).
4. Deadline: within a tenant and level, the job whose head task has the
   earliest deadline (then the one unserved longest); within a job, EDF.
5. The batch: up to max_batch_tasks / max_batch_tokens, shrunk to the free
   slots of the chosen server, the job's in-flight cap and what the buckets
   allow. The server comes from the job's sharding strategy (sharding.py).

Costs: O(ready jobs) per batch plus O(1) per task (O(log n) for a job whose
deadlines arrived out of order); no call scans all queued tasks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.scheduling.data import (
    INFLIGHT_CAP,
    LOWER_PRIORITY,
    PAUSED,
    RATE_LIMITED,
    Dispatch,
    JobPolicy,
    QueuedTask,
    SchedulerConfig,
    ServerState,
)
from gateway.scheduling.fairness import FairShare, charge_units
from gateway.scheduling.jobs import JobState, TenantState, buckets_for
from gateway.scheduling.queues import Entry
from gateway.scheduling.sharding import HashAffinity, least_loaded, round_robin


@dataclass(slots=True)
class _Eligible:
    """The live servers that serve one (model, task type), as indices into the snapshot."""

    space: str  # model and task type: hash homes are kept per space
    indices: list[int]
    ids: tuple[str, ...]
    index_of: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Budget:
    """What one batch may hold: tasks, tokens, and the buckets' room for its first task."""

    max_tasks: int
    max_tokens: float
    bucket_room: float


@dataclass(slots=True)
class _Round:
    """Mutable copies of the snapshot for one schedule() call."""

    servers: Sequence[ServerState]
    free: list[int]
    load: list[int]
    eligible: dict[tuple[str, str], _Eligible]

    def eligible_for(self, policy: JobPolicy, model: str = "") -> _Eligible:
        """Servers for the job's model, or (a job of several models) for one task's."""
        key = (model or policy.model, policy.task_type)
        found = self.eligible.get(key)
        if found is None:
            idx = [i for i, s in enumerate(self.servers) if s.serves(*key)]
            ids = tuple(self.servers[i].server_id for i in idx)
            space = f"{key[0]}\x00{policy.task_type}"
            index_of = dict(zip(ids, idx, strict=True))
            found = self.eligible[key] = _Eligible(space, idx, ids, index_of)
        return found


class Scheduler:
    """Policy over plain data; the dispatcher calls it and acts on its decisions."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self._jobs: dict[str, JobState] = {}
        self._tenants: dict[str, TenantState] = {}
        self._fair = FairShare(self.config.tenant_weights)
        self._hash = HashAffinity()
        self._share = 1.0  # of every rate limit held by this process (1/live replicas)

    # ---- job control -------------------------------------------------------------

    def add_job(self, policy: JobPolicy) -> None:
        if policy.job_id in self._jobs:
            raise ValueError(f"job {policy.job_id!r} is already scheduled")
        tenant = self._tenant(policy.tenant)
        self._jobs[policy.job_id] = JobState(policy, tenant, buckets_for(policy.rate, self._share))

    def update_job(
        self, job_id: str, *, priority: int | None = None, paused: bool | None = None
    ) -> None:
        job = self._job(job_id)
        if priority is not None:
            if not 0 <= priority <= 9:
                raise ValueError(f"job {job_id}: priority must be 0..9, got {priority!r}")
            job.policy.priority = priority
        if paused is not None:
            if job.paused and not paused and len(job.queue):
                self._activate(job.tenant.name)  # a resumed job banks no credit
            job.paused = paused

    def set_share(self, fraction: float) -> None:
        """This process sends `fraction` of every job's and tenant's rate limit: with N
        gateway replicas driving the same jobs, each holds 1/N (set from the live count)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"rate share must be in (0, 1], got {fraction!r}")
        if fraction == self._share:
            return
        self._share = fraction
        held = [j.buckets for j in self._jobs.values()]
        held += [t.buckets for t in self._tenants.values()]
        for buckets in held:
            if buckets is not None:
                buckets.share(fraction)

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs

    def remove_job(self, job_id: str) -> list[int]:
        """Forget a job (cancel); returns the keys that were still queued."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return []
        keys = job.queue.drain()
        job.tenant.queued -= len(keys)
        return keys

    def enqueue(
        self, job_id: str, tasks: Iterable[QueuedTask], now: float, *, first: bool = False
    ) -> None:
        """Queue tasks (new ones, or a retried one put back after finished()); `first`:
        ahead of the job's queued tasks of the same deadline."""
        job = self._job(job_id)
        was_idle = job.tenant.queued == 0
        if not job.queue:
            job.waiting_since = now
        added = job.queue.push_front(tasks, now) if first else job.queue.push(tasks, now)
        job.tenant.queued += added
        if was_idle and added:
            self._activate(job.tenant.name)

    # ---- queries -----------------------------------------------------------------

    def queued(self, job_id: str) -> int:
        return len(self._job(job_id).queue)

    def inflight(self, job_id: str) -> int:
        return self._job(job_id).inflight

    # ---- the decisions -----------------------------------------------------------

    def schedule(self, now: float, servers: Sequence[ServerState]) -> list[Dispatch]:
        """The batches to send now; consumes free slots and marks the keys in flight."""
        rnd = _Round(
            servers,
            [max(0, s.free_slots) for s in servers],
            [s.outstanding_tokens for s in servers],
            {},
        )
        slots = sum(rnd.free)
        ready = self._ready_jobs(rnd, now) if slots else []
        out: list[Dispatch] = []
        aging = self.config.aging_per_s
        vtime = self._fair.vtime
        while ready and slots > 0:
            best_i, best_rank = 0, None
            for i, job in enumerate(ready):
                head = job.queue.head()
                rank = (job.level(now, aging), vtime[job.tenant.name], head[0], job.waiting_since)
                if best_rank is None or rank < best_rank:
                    best_i, best_rank = i, rank
            job = ready[best_i]
            dispatch = self._form_batch(job, rnd, now)
            if dispatch is not None:
                out.append(dispatch)
                slots -= len(dispatch.keys)
            if dispatch is None or not job.queue or job.capped:
                ready[best_i] = ready[-1]
                ready.pop()
        return out

    def finished(self, job_id: str, n_tasks: int, tokens: int) -> None:
        """n tasks of this job ended (any outcome), using `tokens` in all; unknown jobs are ignored."""
        job = self._jobs.get(job_id)
        if job is None or job.inflight == 0:
            return
        n = min(n_tasks, job.inflight)
        est = job.inflight_est * n // job.inflight
        job.inflight -= n
        job.inflight_est -= est
        # fair share was charged the estimate at dispatch; settle on the real use
        self._fair.charge(job.tenant.name, charge_units(tokens, n) - charge_units(est, n))

    def not_sent(self, job_id: str, n_tasks: int, tokens: int) -> None:
        """n dispatched tasks (of `tokens` estimated) were not sent after all: another
        replica leased them first. They leave the in-flight count and give back what the
        buckets charged, so a replica's share of a rate is spent on what it sends."""
        self.finished(job_id, n_tasks, 0)
        job = self._jobs.get(job_id)
        for buckets in job.all_buckets() if job is not None else ():
            buckets.give_back(n_tasks, tokens)

    def expired(self, now: float) -> list[tuple[str, list[int]]]:
        """Remove and return the queued tasks whose deadline is <= now, per job."""
        out = []
        for job_id, job in self._jobs.items():
            if job.queue:
                keys = job.queue.pop_expired(now)
                if keys:
                    job.tenant.queued -= len(keys)
                    out.append((job_id, keys))
        return out

    def wait_reason(self, job_id: str, now: float, servers: Sequence[ServerState]) -> str | None:
        """Why a job is not dispatching, or None when it is (or has nothing queued, or is
        no longer scheduled: it is ending)."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.paused:
            return PAUSED
        if not job.queue:
            return None
        rnd = _Round(servers, [s.free_slots for s in servers], [0] * len(servers), {})
        missing = self._no_server(job, rnd)
        if missing:
            return missing
        if job.capped:
            return INFLIGHT_CAP
        if self._rate_wait(job, now) > 0:
            return RATE_LIMITED
        mine = job.level(now, self.config.aging_per_s)
        for other in self._ready_jobs(rnd, now):
            if other.level(now, self.config.aging_per_s) < mine:
                return LOWER_PRIORITY
        return None

    def next_wakeup(self, now: float) -> float | None:
        """When a token bucket will next let a rate-limited job send; None if none is held."""
        soonest = math.inf
        for job in self._jobs.values():
            if job.queue and not job.paused and not job.capped:
                wait = self._rate_wait(job, now)
                if 0 < wait < soonest:
                    soonest = wait
        return None if soonest == math.inf else now + soonest

    # ---- helpers -----------------------------------------------------------------

    def _job(self, job_id: str) -> JobState:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"job {job_id!r} is not scheduled") from None

    def _tenant(self, name: str) -> TenantState:
        state = self._tenants.get(name)
        if state is None:
            limit = self.config.tenant_rate_limits.get(name)
            state = self._tenants[name] = TenantState(name, buckets_for(limit, self._share))
            self._fair.ensure(name)
        return state

    def _activate(self, tenant: str) -> None:
        active = (t.name for t in self._tenants.values() if t.queued > 0)
        self._fair.activate(tenant, active)

    def _ready_jobs(self, rnd: _Round, now: float) -> list[JobState]:
        """Jobs that could send something this round (buckets checked when forming a batch)."""
        ready = []
        for job in self._jobs.values():
            if job.paused or not job.queue or job.capped:
                continue
            if _head_eligible(rnd, job).indices and self._rate_wait(job, now) == 0:
                ready.append(job)
        return ready

    def _no_server(self, job: JobState, rnd: _Round) -> str | None:
        if _head_eligible(rnd, job).indices:
            return None
        model = (job.queue.head()[3].model if job.queue else "") or job.policy.model
        task_type = job.policy.task_type
        if any("*" in s.models or model in s.models for s in rnd.servers):
            return f"no server for model {model} with task type {task_type}"
        return f"no server for model {model}"

    def _rate_wait(self, job: JobState, now: float) -> float:
        """Seconds until the job's and its tenant's buckets let its head task through."""
        head_tokens = job.queue.head()[3].est_tokens
        wait = 0.0
        for buckets in job.all_buckets():
            buckets.refill(now)
            wait = max(wait, buckets.seconds_until(head_tokens))
        return wait

    def _form_batch(self, job: JobState, rnd: _Round, now: float) -> Dispatch | None:
        """One batch for this job, or None if it can send nothing more this round."""
        budget = self._budget(job, now)
        if budget is None:
            return None
        elig = _head_eligible(rnd, job)
        if job.policy.shard == "hash":
            picked = self._take_hashed(job, rnd, elig, budget)
        else:
            picked = self._take_in_order(job, rnd, elig, budget)
        if picked is None:
            return None
        server, entries = picked
        keys = tuple(e[3].key for e in entries)
        tokens = sum(e[3].est_tokens for e in entries)
        rnd.free[server] -= len(keys)
        rnd.load[server] += tokens
        job.inflight += len(keys)
        job.inflight_est += tokens
        job.waiting_since = now
        for b in job.all_buckets():
            b.take(len(keys), tokens)
        self._fair.charge(job.tenant.name, charge_units(tokens, len(keys)))
        job.tenant.queued -= len(keys)
        return Dispatch(rnd.servers[server].server_id, job.policy.job_id, keys, tokens)

    def _budget(self, job: JobState, now: float) -> _Budget | None:
        """How much one batch of this job may hold now, by batch limits, cap and buckets."""
        max_n = self.config.max_batch_tasks
        if job.policy.max_inflight is not None:
            max_n = min(max_n, job.policy.max_inflight - job.inflight)
        head_tokens = job.queue.head()[3].est_tokens
        bucket_room = math.inf
        for b in job.all_buckets():
            b.refill(now)
            max_n = min(max_n, b.request_room())
            bucket_room = min(bucket_room, b.token_room(head_tokens))
        if max_n <= 0 or head_tokens > bucket_room:
            return None
        return _Budget(max_n, min(float(self.config.max_batch_tokens), bucket_room), bucket_room)

    def _take_in_order(
        self, job: JobState, rnd: _Round, elig: _Eligible, budget: _Budget
    ) -> tuple[int, list[Entry]] | None:
        """least_loaded / round_robin: the queue's head tasks, in order, to one server."""
        if job.policy.shard == "round_robin":
            pos = round_robin(elig.indices, rnd.free, job.rr_turn % len(elig.indices))
            if pos is None:
                return None
            job.rr_turn = pos + 1
            server = elig.indices[pos]
        else:
            found = least_loaded(elig.indices, rnd.free, rnd.load)
            if found is None:
                return None
            server = found
        max_n = min(budget.max_tasks, rnd.free[server])
        queue, tokens = job.queue, 0
        taken: list[Entry] = []
        model = queue.head()[3].model
        while queue and len(taken) < max_n and queue.head()[3].model == model:
            est = queue.head()[3].est_tokens
            if taken and est + tokens > budget.max_tokens:
                break  # the head always goes: _budget checked it against the buckets
            tokens += est
            taken.append(queue.pop())
        return (server, taken) if taken else None

    def _take_hashed(
        self, job: JobState, rnd: _Round, elig: _Eligible, budget: _Budget
    ) -> tuple[int, list[Entry]] | None:
        """hash: from a window at the head, the tasks whose key maps to one server with slots."""
        queue, window = job.queue, []
        for _ in range(min(len(queue), 4 * self.config.max_batch_tasks)):
            window.append(queue.pop())
        target: int | None = None
        taken: list[Entry] = []
        rest: list[Entry] = []
        tokens, max_n = 0, budget.max_tasks
        model = window[0][3].model if window else ""
        for entry in window:
            task = entry[3]
            if task.model != model:  # another model's servers: a later batch
                rest.append(entry)
                continue
            home = self._home(task, rnd, elig)
            if target is None and home is not None and rnd.free[home] > 0:
                target = home
                max_n = min(max_n, rnd.free[home])
            fits = tokens + task.est_tokens <= (budget.max_tokens if taken else budget.bucket_room)
            if home == target and len(taken) < max_n and fits:
                taken.append(entry)
                tokens += task.est_tokens
            else:
                rest.append(entry)
        queue.unpop(rest)
        return (target, taken) if taken and target is not None else None

    def _home(self, task: QueuedTask, rnd: _Round, elig: _Eligible) -> int | None:
        """The server a task belongs to; a task without a key goes to the least loaded one."""
        if task.shard_key is None:
            return least_loaded(elig.indices, rnd.free, rnd.load)
        return elig.index_of[self._hash.home(elig.space, task.shard_key, elig.ids, elig.index_of)]


def _head_eligible(rnd: _Round, job: JobState) -> _Eligible:
    """The servers that may take the job's next batch: those of its head task's model."""
    return rnd.eligible_for(job.policy, job.queue.head()[3].model if job.queue else "")
