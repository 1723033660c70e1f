"""The report's figures from result lines: each checked against a hand computation on
the fixtures (tests/report/fixtures.py) or a standard library's."""

from __future__ import annotations

import statistics

import pytest

from gateway.report.summary import Summary, Worst
from gateway.report.table import headers, rows
from tests.report.fixtures import EXPECTED, HOSTILE, classify_eval, line, text_eval


def test_the_table_of_a_two_model_evaluation_is_the_hand_computed_one():
    summary = Summary().add_all(text_eval())
    assert headers(summary) == [
        "model", "tasks", "succeeded", "failed", "cancelled", "exact_match", "rouge_l",
        "latency p50 (ms)", "latency p95 (ms)", "tokens/s", "tasks/s",
    ]  # fmt: skip
    assert rows(summary) == [EXPECTED["smol"], EXPECTED["tiny"]]


def test_percentiles_are_statistics_quantiles_inclusive():
    summary = Summary().add_all(text_eval())
    for name in ("smol", "tiny"):
        stats = summary.models[name]
        cuts = statistics.quantiles(list(stats.latency_ms), n=100, method="inclusive")
        assert stats.latency_percentiles() == pytest.approx((cuts[49], cuts[94]))


def test_macro_f1_and_accuracy_of_classify_lines():
    summary = Summary().add_all(classify_eval())
    a, b = summary.models["a"], summary.models["b"]
    assert a.macro_f1() == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    assert b.macro_f1() == 1.0
    assert a.metric_mean("accuracy") == 0.5
    assert a.confusion == {
        ("cat", "cat"): 1,
        ("cat", "dog"): 1,
        ("dog", "dog"): 1,
        ("bird", "dog"): 1,
    }
    assert headers(summary)[6] == "macro-F1" and rows(summary)[0][6] == "0.3889"


def test_worst_examples_lowest_first_ties_in_arrival_order():
    summary = Summary(keep_examples=2).add_all(text_eval())
    assert [e.task_id for e in summary.models["smol"].worst.examples()] == ["r3@smol", "r1@smol"]
    assert [e.task_id for e in summary.models["tiny"].worst.examples()] == ["r1@tiny", "r2@tiny"]
    ranked = Summary(keep_examples=3)
    ranked.ranking_metric = "rouge_l"
    ranked.add_all(text_eval())
    worst = ranked.models["tiny"].worst.examples()
    assert [(e.task_id, e.score) for e in worst] == [
        ("r2@tiny", 0.0),
        ("r4@tiny", 0.1),
        ("r1@tiny", 0.2),
    ]
    assert worst[1].output == HOSTILE and worst[1].input == "Q r4?"
    assert worst[1].reference.startswith("Berlin")


def test_the_heap_stays_bounded_over_many_lines():
    worst = Worst(keep=3)
    for i in range(10_000):
        worst.offer(float((i * 7919) % 10_007), lambda i=i: i)  # type: ignore[misc]
    assert len(worst._heap) == 3
    assert worst.examples() == sorted(range(10_000), key=lambda i: (i * 7919) % 10_007)[:3]


def test_lines_without_the_evaluation_fields_give_one_model_and_no_metrics():
    plain = [{k: v for k, v in item.items() if k not in ("model", "finished_at", "evaluation", "row_id")}
             for item in text_eval()]  # fmt: skip
    summary = Summary(default_model="smollm2").add_all(plain)
    assert list(summary.models) == ["smollm2"]
    assert headers(summary) == [
        "model", "tasks", "succeeded", "failed", "cancelled",
        "latency p50 (ms)", "latency p95 (ms)", "tokens/s", "tasks/s",
    ]  # fmt: skip
    # 50 100 150 200 250 300 1050 ms: p95 at rank 5.7, 300 + 0.7 * 750; no times, no rates.
    assert rows(summary) == [["smollm2", "8", "7", "1", "0", "200.0", "825.0", "—", "—"]]


def test_fields_of_the_wrong_type_are_ignored_not_trusted():
    summary = Summary()
    summary.add({"status": 3, "model": ["x"], "usage": "many", "timings_ms": {"queue": "1"}})
    summary.add({**line("r1", "m", output="o", scores={"s": float("nan"), "t": True, "u": 0.5})})
    summary.add({**line("r2", "m", output="o", scores={"u": 1.0}), "finished_at": "yesterday"})
    assert summary.models["model"].failed == 1
    assert summary.metrics == ["u"]
    assert summary.models["m"].metric_mean("u") == 0.75
    assert len(summary.models["m"].finished_at) == 1
