"""The scheduler's own bookkeeping per job and per tenant."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.scheduling.buckets import RateBuckets
from gateway.scheduling.data import JobPolicy, RateLimit
from gateway.scheduling.queues import JobQueue


@dataclass(slots=True)
class TenantState:
    name: str
    buckets: RateBuckets | None
    queued: int = 0


@dataclass(slots=True)
class JobState:
    policy: JobPolicy
    tenant: TenantState
    buckets: RateBuckets | None
    queue: JobQueue = field(default_factory=JobQueue)
    paused: bool = False
    inflight: int = 0
    inflight_est: int = 0  # est tokens of the tasks in flight, to correct the fair-share charge
    rr_turn: int = 0
    waiting_since: float = 0.0  # last dispatch, or when the queue last became non-empty

    @property
    def capped(self) -> bool:
        cap = self.policy.max_inflight
        return cap is not None and self.inflight >= cap

    def all_buckets(self) -> tuple[RateBuckets, ...]:
        return tuple(b for b in (self.buckets, self.tenant.buckets) if b is not None)

    def level(self, now: float, aging_per_s: float) -> int:
        """Effective priority: the priority less one level per 1/aging_per_s s unserved, >= 0.

        Waiting counts from the job's last dispatch, not from its oldest task's
        arrival: a bulk job queued at once would otherwise age as a whole and
        override priorities and fair share for good while still being served.
        """
        wait = now - self.waiting_since
        if wait <= 0:
            return self.policy.priority
        return max(0, self.policy.priority - int(aging_per_s * wait))


def buckets_for(limit: RateLimit | None, fraction: float = 1.0) -> RateBuckets | None:
    return None if limit is None else RateBuckets(limit, fraction)
