"""Token buckets with the time passed in: requests/s and tokens/s, each with a burst.

Over any window [a, b] a bucket lets through at most burst + rate * (b - a).
Several gateway replicas each hold a share of every limit (rate and burst times
1/replicas, see RateBuckets.share), so together they send what one would.
One exception, so that a job cannot wedge: a single task whose estimated
tokens exceed the token burst is let through alone when the bucket is full,
leaving the bucket in debt until it refills.
"""

from __future__ import annotations

import math

from gateway.scheduling.data import RateLimit

_EPS = 1e-9  # float slack so that a bucket refilled to exactly n allows n


class TokenBucket:
    """One classic bucket: capacity `burst`, refilled at `rate` per second, starting full."""

    __slots__ = ("burst", "last", "level", "rate")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.level = burst
        self.last = now

    def refill(self, now: float) -> None:
        if self.last is None or now > self.last:
            if self.last is not None:
                self.level = min(self.burst, self.level + self.rate * (now - self.last))
            self.last = now

    def room(self, want: float) -> float:
        """How much may be taken now; an oversize `want` is allowed whole when the bucket is full."""
        if want > self.burst and self.level >= self.burst - _EPS:
            return want
        return self.level + _EPS

    def take(self, amount: float) -> None:
        self.level -= amount

    def rescale(self, rate: float, burst: float) -> None:
        """A new rate and burst; what is banked beyond the new burst is dropped."""
        self.rate, self.burst = rate, burst
        self.level = min(self.level, burst)

    def seconds_until(self, want: float) -> float:
        """Seconds until `room(want)` covers `want` (0 when it already does)."""
        need = min(want, self.burst) - self.level
        return 0.0 if need <= _EPS else need / self.rate


class RateBuckets:
    """The request and token buckets of one job or tenant (either may be absent)."""

    __slots__ = ("limit", "requests", "tokens")

    def __init__(self, limit: RateLimit, fraction: float = 1.0) -> None:
        self.limit = limit
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        if limit.requests_per_s is not None:
            self.requests = TokenBucket(limit.requests_per_s, self._request_burst())
        if limit.tokens_per_s is not None:
            self.tokens = TokenBucket(limit.tokens_per_s, self._token_burst())
        if fraction != 1.0:
            self.share(fraction)

    def _request_burst(self) -> float:
        limit = self.limit
        assert limit.requests_per_s is not None
        return limit.burst if limit.burst is not None else max(1.0, limit.requests_per_s)

    def _token_burst(self) -> float:
        limit = self.limit
        assert limit.tokens_per_s is not None
        return limit.token_burst if limit.token_burst is not None else limit.tokens_per_s

    def share(self, fraction: float) -> None:
        """Hold `fraction` of the limit (1/live replicas): rates and bursts scaled by it.
        A request burst stays at least 1, so a replica's share can always send a task."""
        if self.requests is not None and self.limit.requests_per_s is not None:
            burst = max(1.0, self._request_burst() * fraction)
            self.requests.rescale(self.limit.requests_per_s * fraction, burst)
        if self.tokens is not None and self.limit.tokens_per_s is not None:
            self.tokens.rescale(self.limit.tokens_per_s * fraction, self._token_burst() * fraction)

    def refill(self, now: float) -> None:
        if self.requests is not None:
            self.requests.refill(now)
        if self.tokens is not None:
            self.tokens.refill(now)

    def request_room(self) -> int:
        if self.requests is None:
            return 1 << 62
        return max(0, math.floor(self.requests.level + _EPS))

    def token_room(self, head_tokens: int) -> float:
        return math.inf if self.tokens is None else self.tokens.room(head_tokens)

    def take(self, n_tasks: int, tokens: int) -> None:
        if self.requests is not None:
            self.requests.take(n_tasks)
        if self.tokens is not None:
            self.tokens.take(tokens)

    def give_back(self, n_tasks: int, tokens: int) -> None:
        """Returns what `take` charged for tasks that were never sent (up to the bursts)."""
        for bucket, amount in ((self.requests, n_tasks), (self.tokens, tokens)):
            if bucket is not None:
                bucket.level = min(bucket.burst, bucket.level + amount)

    def seconds_until(self, head_tokens: int) -> float:
        """Seconds until one task of `head_tokens` tokens fits both buckets."""
        wait = 0.0
        if self.requests is not None:
            wait = self.requests.seconds_until(1)
        if self.tokens is not None:
            wait = max(wait, self.tokens.seconds_until(head_tokens))
        return wait
