"""Plain data the scheduler reads and returns: no behaviour beyond validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SHARD_STRATEGIES = frozenset({"least_loaded", "hash", "round_robin"})

# Why a job waits (wait_reason); "no server for model X" is built on the fly.
PAUSED = "paused"
RATE_LIMITED = "rate limited"
LOWER_PRIORITY = "lower priority"
INFLIGHT_CAP = "in-flight cap"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A pair of token buckets: requests (tasks) per second and model tokens per second.

    A field left as None means no limit on that axis; a burst left as None
    defaults to one second's worth of its rate (at least one request).
    """

    requests_per_s: float | None = None
    burst: float | None = None
    tokens_per_s: float | None = None
    token_burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "burst", "tokens_per_s", "token_burst"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"rate_limit.{name} must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class QueuedTask:
    """One task as the dispatcher hands it in; `key` is the dispatcher's opaque handle."""

    key: int
    est_tokens: int
    deadline: float | None = None  # absolute, same clock as `now`
    shard_key: str | None = None
    model: str = ""  # a job of several models: this task's; "" is the job's model


@dataclass(slots=True)
class JobPolicy:
    """How one job is scheduled; built by the gateway from the job file."""

    job_id: str
    tenant: str
    priority: int  # 0 highest .. 9 lowest
    model: str
    task_type: str
    rate: RateLimit | None = None
    max_inflight: int | None = None
    shard: str = "least_loaded"
    submitted_at: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= 9:
            raise ValueError(f"job {self.job_id}: priority must be 0..9, got {self.priority!r}")
        if self.shard not in SHARD_STRATEGIES:
            raise ValueError(
                f"job {self.job_id}: shard must be one of {sorted(SHARD_STRATEGIES)}, "
                f"got {self.shard!r}"
            )
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ValueError(
                f"job {self.job_id}: max_inflight must be >= 1, got {self.max_inflight!r}"
            )


@dataclass(frozen=True, slots=True)
class ServerState:
    """A snapshot of one inference server, built by the dispatcher each round."""

    server_id: str
    free_slots: int  # credits left on its stream
    outstanding_tokens: int  # est tokens sent and not finished
    models: frozenset[str]  # "*" means any model
    task_types: frozenset[str]  # "*" means any task type

    def serves(self, model: str, task_type: str) -> bool:
        return ("*" in self.models or model in self.models) and (
            "*" in self.task_types or task_type in self.task_types
        )


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One decision: send these tasks of one job to one server as one TaskBatch."""

    server_id: str
    job_id: str
    keys: tuple[int, ...]
    est_tokens: int


@dataclass(frozen=True)
class SchedulerConfig:
    """Gateway-wide scheduling settings."""

    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    """Fair-share weight per tenant; unknown tenants get 1.0."""
    tenant_rate_limits: Mapping[str, RateLimit] = field(default_factory=dict)
    """Per-tenant token buckets, on top of each job's own."""
    aging_per_s: float = 1 / 60
    """Priority levels a job gains per second its oldest task has waited."""
    max_batch_tasks: int = 64
    """Tasks per Dispatch at most."""
    max_batch_tokens: int = 65536
    """Estimated tokens per Dispatch at most (a single larger task is still sent alone)."""

    def __post_init__(self) -> None:
        for tenant, weight in self.tenant_weights.items():
            if weight <= 0:
                raise ValueError(f"tenant_weights[{tenant!r}] must be > 0, got {weight!r}")
        if self.aging_per_s < 0:
            raise ValueError(f"aging_per_s must be >= 0, got {self.aging_per_s!r}")
        if self.max_batch_tasks < 1:
            raise ValueError(f"max_batch_tasks must be >= 1, got {self.max_batch_tasks!r}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens!r}")
