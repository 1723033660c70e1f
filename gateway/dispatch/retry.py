"""Whether a task's error is worth another attempt, and when: a small pure policy.

The server that ran the task is the one source of truth for retryability: it sets
`TaskError.retryable` (UNAVAILABLE while it drains, a model failure it could not pin
on the task). INTERNAL from a server that does not say it is retryable is a bug, not a
retry. Errors the gateway makes itself (a lost lease) carry `retryable` too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RetrySettings(Protocol):
    """A job's `retry` section (gateway.jobfile.schema.Retry)."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    jitter: float


@dataclass(frozen=True, slots=True)
class Final:
    """Record the outcome as it is."""


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the task again after `delay` seconds."""

    delay: float


FINAL = Final()


def backoff(retry: RetrySettings, spent: int, rand: Callable[[], float] = random.random) -> float:
    """Jittered exponential backoff before attempt `spent + 1`."""
    base = min(retry.initial_backoff * retry.multiplier ** max(spent - 1, 0), retry.max_backoff)
    return max(base * (1 + retry.jitter * (2 * rand() - 1)), 0.0)


def decide(
    retryable: bool,
    spent: int,
    retry: RetrySettings,
    rand: Callable[[], float] = random.random,
) -> Final | Retry:
    """What to do with a task whose attempt number `spent` ended in an error."""
    if not retryable or spent >= retry.max_attempts:
        return FINAL
    return Retry(round(backoff(retry, spent, rand), 3))
