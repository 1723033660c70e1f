"""Per-model aggregates of a job's results: counts, latency percentiles (queue +
compute), throughput, the means of the per-task scores and, for classify, the
confusion counts and macro-F1 (from those counts: per label 2TP / (2TP + FP + FN),
averaged over the labels seen as reference or prediction, as scikit-learn's
f1_score(average="macro") does). Plain data; folded one result at a time."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field

from batchinfer.v1 import gateway_pb2, task_pb2

from gateway.store import TaskState


@dataclass(slots=True)
class ModelStats:
    finished: int = 0
    succeeded: int = 0
    failed: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    first_at: float = math.inf
    last_at: float = -math.inf
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(
        self,
        state: TaskState,
        finished_at: float,
        result: task_pb2.TaskResult,
        scores: dict[str, float],
        reference: str | None,
    ) -> None:
        self.finished += 1
        self.succeeded += state == TaskState.SUCCEEDED
        self.failed += state == TaskState.FAILED
        self.first_at, self.last_at = (
            min(self.first_at, finished_at),
            max(self.last_at, finished_at),
        )
        self.completion_tokens += result.usage.completion_tokens
        latency = result.timings.queue_ms + result.timings.compute_ms
        if latency > 0:
            self.latencies_ms.append(latency)
        for name, value in scores.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
            self.counts[name] = self.counts.get(name, 0) + 1
        if reference is not None and result.WhichOneof("output") == "classification":
            self.confusion[(reference, result.classification.label)] += 1

    def report(self, model: str, classify: bool) -> gateway_pb2.ModelReport:
        out = gateway_pb2.ModelReport(
            model=model, finished=self.finished, succeeded=self.succeeded, failed=self.failed
        )
        out.metrics.update({name: self.sums[name] / n for name, n in self.counts.items() if n})
        if self.latencies_ms:
            out.latency_p50_ms, out.latency_p95_ms = percentiles(self.latencies_ms, (50, 95))
        span = self.last_at - self.first_at
        if span > 0:
            out.tokens_per_s = self.completion_tokens / span
            out.tasks_per_s = self.finished / span
        if classify:
            out.metrics["macro_f1"] = macro_f1(self.confusion)
            for (reference, predicted), count in sorted(self.confusion.items()):
                out.confusion.add(reference=reference, predicted=predicted, count=count)
        return out


def percentiles(values: list[float], points: tuple[int, ...]) -> tuple[float, ...]:
    """Inclusive-method percentiles (linear between the order statistics)."""
    if len(values) == 1:
        return tuple(values[0] for _ in points)
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return tuple(cuts[p - 1] for p in points)


def macro_f1(confusion: Counter[tuple[str, str]]) -> float:
    labels = {label for pair in confusion for label in pair}
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        tp = confusion[(label, label)]
        fp = sum(n for (r, p), n in confusion.items() if p == label and r != label)
        fn = sum(n for (r, p), n in confusion.items() if r == label and p != label)
        total += 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return total / len(labels)
