"""The gateway's task-span budget: whole small jobs traced, a steady rate after a burst."""

from __future__ import annotations

import pytest

from collector import settings
from gateway.telemetry import SpanBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_ten_seconds_worth_then_the_rate() -> None:
    clock = FakeClock()
    budget = SpanBudget(100.0, clock)
    assert sum(budget.take() for _ in range(5000)) == 1000
    clock.now += 0.5
    assert sum(budget.take() for _ in range(5000)) == 50
    clock.now += 60.0  # refills to the burst, not beyond
    assert sum(budget.take() for _ in range(5000)) == 1000


def test_zero_rate_records_nothing() -> None:
    budget = SpanBudget(0.0, FakeClock())
    assert not any(budget.take() for _ in range(10))


def test_rate_setting_reads_the_variable_and_names_it_when_bad() -> None:
    assert settings.task_spans_per_s({}) == settings.DEFAULT_TASK_SPANS_PER_S
    assert settings.task_spans_per_s({"BATCHINFER_TASK_SPANS_PER_S": "2.5"}) == 2.5
    with pytest.raises(ValueError, match="BATCHINFER_TASK_SPANS_PER_S"):
        settings.task_spans_per_s({"BATCHINFER_TASK_SPANS_PER_S": "-1"})
    with pytest.raises(ValueError, match="BATCHINFER_TASK_SPANS_PER_S"):
        settings.task_spans_per_s({"BATCHINFER_TASK_SPANS_PER_S": "lots"})
