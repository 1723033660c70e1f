"""The per-model table of `status JOB` and of the run / submit --watch summary: the
comparison of models side by side (counts, metrics, latency, throughput)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from batchinfer.v1 import gateway_pb2
from rich.table import Table


def model_table(models: Sequence[gateway_pb2.ModelReport]) -> Table | None:
    """One column per model and one row per figure, so that any number of metrics fits
    an 80-column terminal. None when the job has no results yet (nothing to compare)."""
    if not any(m.finished for m in models):
        return None
    metrics = sorted({name for m in models for name in m.metrics})
    table = Table("", *(m.model for m in models))
    rows: list[tuple[str, Callable[[gateway_pb2.ModelReport], str]]] = [
        ("done", lambda m: str(m.finished)),
        ("failed", lambda m: str(m.failed)),
        *(
            (name, lambda m, name=name: f"{m.metrics[name]:.3f}" if name in m.metrics else "-")
            for name in metrics
        ),
        ("latency p50 ms", lambda m: f"{m.latency_p50_ms:.0f}"),
        ("latency p95 ms", lambda m: f"{m.latency_p95_ms:.0f}"),
        ("tokens/s", lambda m: f"{m.tokens_per_s:.1f}"),
        ("tasks/s", lambda m: f"{m.tasks_per_s:.2f}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(m) for m in models))
    return table


def confusion_lines(models: Sequence[gateway_pb2.ModelReport]) -> list[str]:
    """classify: one line per model, "reference→predicted: count" cells."""
    return [
        f"{m.model} confusion: "
        + ", ".join(f"{c.reference}→{c.predicted}: {c.count}" for c in m.confusion)
        for m in models
        if m.confusion
    ]
