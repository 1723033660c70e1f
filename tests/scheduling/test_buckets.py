from __future__ import annotations

import pytest

from gateway.scheduling import RateLimit
from gateway.scheduling.buckets import RateBuckets, TokenBucket


def test_bucket_starts_full_and_refills_at_rate_up_to_burst() -> None:
    b = TokenBucket(rate=2.0, burst=5.0)
    b.refill(0.0)
    assert b.level == 5.0
    b.take(5)
    b.refill(1.0)
    assert b.level == pytest.approx(2.0)
    b.refill(100.0)
    assert b.level == 5.0


def test_time_going_backwards_adds_nothing() -> None:
    b = TokenBucket(rate=1.0, burst=10.0)
    b.refill(10.0)
    b.take(10)
    b.refill(5.0)
    assert b.level == 0.0
    b.refill(11.0)
    assert b.level == pytest.approx(1.0)


def test_oversize_request_passes_alone_only_when_full() -> None:
    b = TokenBucket(rate=10.0, burst=100.0)
    b.refill(0.0)
    assert b.room(500) == 500  # full: the oversize task may go, leaving debt
    b.take(500)
    assert b.level == -400
    assert b.seconds_until(500) == pytest.approx(50.0)  # back to full: 500 tokens at 10/s
    b.refill(49.0)
    assert b.room(500) < 500


def test_rate_buckets_defaults_and_rooms() -> None:
    rb = RateBuckets(RateLimit(requests_per_s=3.0, tokens_per_s=100.0))
    rb.refill(0.0)
    assert rb.request_room() == 3  # burst defaults to one second's worth
    assert rb.token_room(10) == pytest.approx(100.0)
    rb.take(3, 100)
    assert rb.request_room() == 0
    assert rb.seconds_until(50) == pytest.approx(0.5)  # tokens: 50 at 100/s; requests: 1 at 3/s
    only_tokens = RateBuckets(RateLimit(tokens_per_s=10.0, token_burst=20.0))
    only_tokens.refill(0.0)
    assert only_tokens.request_room() > 10**9


def test_a_share_scales_rates_and_bursts_and_keeps_one_request() -> None:
    rb = RateBuckets(RateLimit(requests_per_s=60.0, tokens_per_s=900.0), fraction=1 / 3)
    rb.refill(0.0)
    assert rb.request_room() == 20  # a third of the burst
    assert rb.token_room(10) == pytest.approx(300.0)
    rb.take(20, 300)
    assert rb.seconds_until(1) == pytest.approx(1 / 20)  # a third of the rate
    rb.share(1 / 2)  # a replica died: the rest take its part
    assert rb.requests is not None and rb.requests.rate == 30.0 and rb.requests.burst == 30.0
    rb.share(1 / 100)  # the burst never drops below one request, or nothing would go
    assert rb.requests.burst == 1.0 and rb.requests.rate == pytest.approx(0.6)


def test_rate_limit_rejects_non_positive_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match="tokens_per_s"):
        RateLimit(tokens_per_s=0)
