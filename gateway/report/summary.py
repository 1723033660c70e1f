"""What a report shows, gathered from result lines one at a time: per model the counts,
each metric's sum, the latencies and finish times (numbers only), the classify confusion
counts and a bounded heap of the worst-scoring examples. Nothing else of a line is kept,
so a file of any length fits in the memory of its numbers.

The lines are hostile: a field of the wrong type is ignored, never trusted."""

from __future__ import annotations

import heapq
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

DEFAULT_MODEL = "model"
SHOWN_CHARS = 2000  # of an example's input, reference and output; the rest is cut


@dataclass(frozen=True)
class Example:
    """One scored result, as the report shows it (strings cut to SHOWN_CHARS)."""

    task_id: str
    metric: str
    score: float
    input: str
    reference: str
    output: str
    scores: dict[str, float]


class Worst:
    """The `keep` lowest-scoring examples offered, in a max-heap of that size: among
    equal scores the first offered stay."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._heap: list[tuple[tuple[float, int], Example]] = []
        self._offered = 0

    def offer(self, score: float, make: Callable[[], Example]) -> None:
        """`make` builds the example only when it is kept."""
        self._offered += 1
        key = (-score, -self._offered)  # the heap's root: the highest score kept, latest first
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, (key, make()))
        elif self._heap and key > self._heap[0][0]:
            heapq.heapreplace(self._heap, (key, make()))

    def examples(self) -> list[Example]:
        """Lowest score first; equal scores in the order they came."""
        return [e for _, e in sorted(self._heap, key=lambda item: (-item[0][0], -item[0][1]))]


@dataclass
class ModelStats:
    """Everything the report keeps of one model's lines."""

    name: str
    keep_examples: int
    tasks: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    tokens: int = 0
    latency_ms: array = field(default_factory=lambda: array("d"))  # queue + compute
    finished_at: array = field(default_factory=lambda: array("d"))  # epoch seconds
    metric_sums: dict[str, list[float]] = field(default_factory=dict)  # name -> [sum, count]
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reference, label)
    worst: Worst = field(init=False)

    def __post_init__(self) -> None:
        self.worst = Worst(self.keep_examples)

    def metric_mean(self, name: str) -> float | None:
        total, count = self.metric_sums.get(name, (0.0, 0))
        return total / count if count else None

    def latency_percentiles(self) -> tuple[float, float] | None:
        """p50 and p95 by linear interpolation between the closest ranks (numpy's default,
        the same as statistics.quantiles(method="inclusive"))."""
        if not self.latency_ms:
            return None
        p50, p95 = np.percentile(np.frombuffer(self.latency_ms, dtype=np.float64), [50, 95])
        return float(p50), float(p95)

    def span_s(self) -> float | None:
        """Seconds from the model's first result to its last (None: fewer than two times)."""
        if len(self.finished_at) < 2:
            return None
        span = max(self.finished_at) - min(self.finished_at)
        return span if span > 0 else None

    def tasks_per_s(self) -> float | None:
        span = self.span_s()
        return len(self.finished_at) / span if span else None

    def tokens_per_s(self) -> float | None:
        span = self.span_s()
        return self.tokens / span if span else None

    def labels(self) -> list[str]:
        """The classify labels seen, references and predictions, sorted."""
        return sorted({label for pair in self.confusion for label in pair})

    def macro_f1(self) -> float | None:
        """The unweighted mean over labels (references and predictions) of each label's F1,
        2·TP / (2·TP + FP + FN), as scikit-learn's f1_score(average="macro") computes it."""
        if not self.confusion:
            return None
        hits: Counter[str] = Counter()
        misses: Counter[str] = Counter()  # FP of the predicted label plus FN of the reference
        for (reference, predicted), n in self.confusion.items():
            if reference == predicted:
                hits[reference] += n
            else:
                misses[reference] += n
                misses[predicted] += n
        labels = self.labels()
        return sum(2 * hits[x] / (2 * hits[x] + misses[x]) for x in labels) / len(labels)


@dataclass
class JobInfo:
    """The job the report is about: from GetJob, or made up from a results file."""

    title: str
    job_id: str = ""
    state: str = ""
    model: str = DEFAULT_MODEL
    counts: dict[str, int] = field(default_factory=dict)


class Summary:
    """Result lines in, per-model figures out; `add` every line, then read `models`."""

    def __init__(self, default_model: str = DEFAULT_MODEL, keep_examples: int = 5) -> None:
        self.default_model = default_model or DEFAULT_MODEL
        self.keep_examples = keep_examples
        self.ranking_metric: str | None = None  # worst examples by this; else the first seen
        self.models: dict[str, ModelStats] = {}
        self.metrics: list[str] = []  # in the order first seen
        self.lines = 0
        self.statuses: Counter[str] = Counter()

    def add(self, line: Mapping[str, Any]) -> None:
        self.lines += 1
        name = _text(line.get("model")) or self.default_model
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats(name, self.keep_examples)
        status = _text(line.get("status")) or "failed"
        self.statuses[status] += 1
        stats.tasks += 1
        if status == "succeeded":
            stats.succeeded += 1
        elif status == "cancelled":
            stats.cancelled += 1
        else:
            stats.failed += 1
        usage = _mapping(line.get("usage"))
        stats.tokens += _count(usage.get("completion_tokens"))  # generated, as GetJob counts
        finished = _timestamp(line.get("finished_at"))
        if finished is not None:
            stats.finished_at.append(finished)
        if status == "succeeded":
            timings = _mapping(line.get("timings_ms"))
            queue, compute = _number(timings.get("queue")), _number(timings.get("compute"))
            if queue is not None and compute is not None:
                stats.latency_ms.append(queue + compute)
        evaluation = _mapping(line.get("evaluation"))
        if evaluation:
            self._add_evaluation(stats, line, evaluation)

    def _add_evaluation(
        self, stats: ModelStats, line: Mapping[str, Any], evaluation: Mapping[str, Any]
    ) -> None:
        scores = {
            str(k): number
            for k, v in _mapping(evaluation.get("scores")).items()
            if (number := _number(v)) is not None
        }
        for metric, value in scores.items():
            if metric not in self.metrics:
                self.metrics.append(metric)
            sums = stats.metric_sums.setdefault(metric, [0.0, 0])
            sums[0] += value
            sums[1] += 1
        output = _mapping(line.get("output"))
        reference = evaluation.get("reference")
        if isinstance(output.get("label"), str) and isinstance(reference, str):
            stats.confusion[(reference, output["label"])] += 1
        ranking = self.ranking_metric or (self.metrics[0] if self.metrics else None)
        if ranking is None or ranking not in scores:
            return
        self.ranking_metric = ranking

        def make() -> Example:
            return Example(
                task_id=_cut(_text(line.get("id"))),
                metric=ranking,
                score=scores[ranking],
                input=_cut(_text(evaluation.get("input"))),
                reference=_cut(_text(reference)),
                output=_cut(output_text(output, line.get("error"))),
                scores=dict(scores),
            )

        stats.worst.offer(scores[ranking], make)

    def add_all(self, lines: Iterable[Mapping[str, Any]]) -> Summary:
        for line in lines:
            self.add(line)
        return self


def output_text(output: Mapping[str, Any], error: Any) -> str:
    """What a result produced, as one string: its text, label, log-probability or error."""
    if isinstance(output.get("text"), str):
        return str(output["text"])
    if isinstance(output.get("label"), str):
        return str(output["label"])
    if (logprob := _number(output.get("logprob"))) is not None:
        return f"logprob {logprob:.4f}"
    if isinstance(output.get("embedding"), list):
        return f"embedding of {len(output['embedding'])} values"
    error = _mapping(error)
    return f"error {_text(error.get('code'))}: {_text(error.get('message'))}" if error else ""


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + " […]"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _timestamp(value: Any) -> float | None:
    """RFC 3339 (`...Z` or an offset) to epoch seconds; a time without a zone is UTC."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
