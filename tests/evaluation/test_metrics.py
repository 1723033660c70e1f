"""Metric values on hand-computed cases, and ROUGE-L / BLEU against the libraries
called directly on the same strings."""

from __future__ import annotations

from collections import Counter

import pytest
import sacrebleu
from batchinfer.v1 import task_pb2
from rouge_score import rouge_scorer

from gateway.evaluation.aggregate import ModelStats, macro_f1, percentiles
from gateway.evaluation.metrics import task_scores, text_scores
from gateway.store import TaskState

ALL = ("exact_match", "contains", "rouge_l", "bleu")


def test_exact_match_and_contains_normalise_case_and_spaces():
    assert text_scores(ALL[:2], "  PARIS \n", "paris") == {"exact_match": 1.0, "contains": 1.0}
    assert text_scores(ALL[:2], "The capital is Paris.", "Paris") == {
        "exact_match": 0.0,
        "contains": 1.0,
    }
    assert text_scores(ALL[:2], "Lyon", "Paris") == {"exact_match": 0.0, "contains": 0.0}


def test_rouge_l_by_hand_and_against_the_library():
    # LCS("the cat", "the cat sat") = 2: precision 2/3, recall 2/2, F = 0.8
    assert text_scores(("rouge_l",), "the cat sat", "the cat")["rouge_l"] == pytest.approx(0.8)
    out, ref = "The capital of France is Paris.", "Paris is the capital"
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, out)["rougeL"].fmeasure
    assert text_scores(("rouge_l",), out, ref)["rouge_l"] == pytest.approx(expected)


def test_bleu_by_hand_and_against_the_library():
    same = "the quick brown fox jumps"
    assert text_scores(("bleu",), same, same)["bleu"] == pytest.approx(1.0)
    out, ref = "the cat is on the mat", "there is a cat on the mat"
    expected = sacrebleu.sentence_bleu(out, [ref]).score / 100
    assert 0 < expected < 1
    assert text_scores(("bleu",), out, ref)["bleu"] == pytest.approx(expected)


def test_classify_accuracy_per_task_and_score_mean_logprob():
    hit = task_pb2.TaskResult(classification=task_pb2.ClassifyOutput(label="pos"))
    assert task_scores("classify", ("accuracy",), "pos", hit) == {"accuracy": 1.0}
    assert task_scores("classify", ("accuracy",), "neg", hit) == {"accuracy": 0.0}
    scored = task_pb2.TaskResult(score=task_pb2.ScoreOutput(logprob=-6.0, token_count=3))
    assert task_scores("score", ("mean_logprob",), "", scored) == {
        "logprob": -6.0,
        "mean_logprob": -2.0,
    }
    failed = task_pb2.TaskResult(error=task_pb2.TaskError(code="X"))
    assert task_scores("generate", ALL, "Paris", failed) == {}


def test_macro_f1_and_confusion_by_hand():
    # reference -> predicted: a->a 2, a->b 1, b->b 1
    # a: tp 2, fp 0, fn 1 -> 4/5; b: tp 1, fp 1, fn 0 -> 2/3; macro = (0.8 + 0.6667) / 2
    confusion = Counter({("a", "a"): 2, ("a", "b"): 1, ("b", "b"): 1})
    assert macro_f1(confusion) == pytest.approx((0.8 + 2 / 3) / 2)
    stats = ModelStats()
    for reference, predicted in [("a", "a"), ("a", "a"), ("a", "b"), ("b", "b")]:
        result = task_pb2.TaskResult(classification=task_pb2.ClassifyOutput(label=predicted))
        scores = {"accuracy": float(reference == predicted)}
        stats.add(TaskState.SUCCEEDED, 1.0, result, scores, reference)
    report = stats.report("m", classify=True)
    assert report.metrics["accuracy"] == pytest.approx(0.75)
    assert report.metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    cells = {(c.reference, c.predicted): c.count for c in report.confusion}
    assert cells == {("a", "a"): 2, ("a", "b"): 1, ("b", "b"): 1}


def test_latency_percentiles_and_throughput():
    assert percentiles([10.0, 20.0, 30.0, 40.0, 50.0], (50, 95)) == pytest.approx((30.0, 48.0))
    stats = ModelStats()
    for i, at in enumerate((100.0, 101.0, 102.0)):
        result = task_pb2.TaskResult(
            usage=task_pb2.Usage(completion_tokens=10),
            timings=task_pb2.Timings(queue_ms=5.0, compute_ms=10.0 * (i + 1)),
        )
        stats.add(TaskState.SUCCEEDED, at, result, {}, None)
    report = stats.report("m", classify=False)
    assert report.latency_p50_ms == pytest.approx(25.0)
    assert report.tasks_per_s == pytest.approx(1.5)  # 3 results over 2 s
    assert report.tokens_per_s == pytest.approx(15.0)
