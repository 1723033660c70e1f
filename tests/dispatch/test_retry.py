"""The retry policy as plain function calls."""

from __future__ import annotations

from types import SimpleNamespace

from gateway.dispatch.retry import FINAL, Retry, backoff, decide

RETRY = SimpleNamespace(
    max_attempts=3, initial_backoff=1.0, max_backoff=5.0, multiplier=2.0, jitter=0.2
)


def test_a_retryable_error_is_retried_until_max_attempts_are_spent() -> None:
    assert decide(True, 1, RETRY, rand=lambda: 0.5) == Retry(1.0)
    assert decide(True, 2, RETRY, rand=lambda: 0.5) == Retry(2.0)
    assert decide(True, 3, RETRY) is FINAL


def test_the_servers_word_decides_whatever_the_code() -> None:
    # INTERNAL is a bug unless the server marks it retryable; UNAVAILABLE without the flag is final.
    assert decide(False, 1, RETRY) is FINAL


def test_backoff_grows_is_capped_and_jitters_within_bounds() -> None:
    assert [backoff(RETRY, n, rand=lambda: 0.5) for n in (1, 2, 3, 4, 5)] == [
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert backoff(RETRY, 1, rand=lambda: 0.0) == 0.8
    assert backoff(RETRY, 1, rand=lambda: 1.0) == 1.2
