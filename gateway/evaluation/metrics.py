"""The metrics an `evaluate:` section may name, by task type, and one task's scores.

Text metrics compare the output with the reference after normalising both (strip,
case-fold); ROUGE-L comes from `rouge-score` and BLEU from `sacrebleu` (sentence BLEU,
on a 0-1 scale: sacrebleu's 0-100 divided by 100). Classify's per-task score is
accuracy (1.0 or 0.0); macro-F1 and the confusion matrix only exist over many tasks
(aggregate.py). Pure functions: no store, no event loop.
"""

from __future__ import annotations

from functools import cache

import sacrebleu
from batchinfer.v1 import task_pb2
from rouge_score import rouge_scorer

MAX_SCORED_CHARS = 20_000  # of output and reference each: bounds ROUGE/BLEU time per task


def normalise(text: str) -> str:
    return text.strip().casefold()


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"])


def text_scores(metrics: tuple[str, ...], output: str, reference: str) -> dict[str, float]:
    """The text metrics of one output against its reference."""
    out, ref = output[:MAX_SCORED_CHARS], reference[:MAX_SCORED_CHARS]
    scores: dict[str, float] = {}
    if "exact_match" in metrics:
        scores["exact_match"] = float(normalise(out) == normalise(ref))
    if "contains" in metrics:
        scores["contains"] = float(normalise(ref) in normalise(out))
    if "rouge_l" in metrics:
        scores["rouge_l"] = _rouge().score(ref, out)["rougeL"].fmeasure
    if "bleu" in metrics:
        scores["bleu"] = sacrebleu.sentence_bleu(out, [ref]).score / 100.0
    return scores


def task_scores(
    task_type: str, metrics: tuple[str, ...], reference: str, result: task_pb2.TaskResult
) -> dict[str, float]:
    """One finished task's scores; {} for a failed task or an output of another kind."""
    kind = result.WhichOneof("output")
    if task_type in ("generate", "chat") and kind == "text":
        return text_scores(metrics, result.text.text, reference)
    if task_type == "classify" and kind == "classification":
        return {"accuracy": float(result.classification.label == reference)}
    if task_type == "score" and kind == "score" and "mean_logprob" in metrics:
        count = result.score.token_count
        mean = result.score.logprob / count if count else 0.0
        return {"logprob": result.score.logprob, "mean_logprob": mean}
    return {}
