"""Scheduling policy for the gateway: pure, no I/O, time passed in (see policy.py)."""

from gateway.scheduling.data import (
    INFLIGHT_CAP,
    LOWER_PRIORITY,
    PAUSED,
    RATE_LIMITED,
    SHARD_STRATEGIES,
    Dispatch,
    JobPolicy,
    QueuedTask,
    RateLimit,
    SchedulerConfig,
    ServerState,
)
from gateway.scheduling.policy import Scheduler

__all__ = [
    "INFLIGHT_CAP",
    "LOWER_PRIORITY",
    "PAUSED",
    "RATE_LIMITED",
    "SHARD_STRATEGIES",
    "Dispatch",
    "JobPolicy",
    "QueuedTask",
    "RateLimit",
    "Scheduler",
    "SchedulerConfig",
    "ServerState",
]
