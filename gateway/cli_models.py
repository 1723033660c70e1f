"""The per-model table of `status JOB` and of the run / submit --watch summary: the
comparison of models side by side (counts, metrics, latency, throughput)."""

from __future__ import annotations

from collections.abc import Sequence

from batchinfer.v1 import gateway_pb2
from rich.table import Table


def model_table(models: Sequence[gateway_pb2.ModelReport]) -> Table | None:
    """None when the job has no results yet (nothing to compare)."""
    if not any(m.finished for m in models):
        return None
    metrics = sorted({name for m in models for name in m.metrics})
    table = Table("model", "done", "failed", *metrics, "p50 ms", "p95 ms", "tok/s", "tasks/s")
    for m in models:
        table.add_row(
            m.model,
            str(m.finished),
            str(m.failed),
            *(f"{m.metrics[name]:.3f}" if name in m.metrics else "-" for name in metrics),
            f"{m.latency_p50_ms:.0f}",
            f"{m.latency_p95_ms:.0f}",
            f"{m.tokens_per_s:.1f}",
            f"{m.tasks_per_s:.2f}",
        )
    return table


def confusion_lines(models: Sequence[gateway_pb2.ModelReport]) -> list[str]:
    """classify: one line per model, "reference→predicted: count" cells."""
    return [
        f"{m.model} confusion: "
        + ", ".join(f"{c.reference}→{c.predicted}: {c.count}" for c in m.confusion)
        for m in models
        if m.confusion
    ]
