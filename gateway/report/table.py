"""The per-model comparison table, as plain strings, for both the HTML and the Markdown
report: one row per model, one column per figure (the seed article's table)."""

from __future__ import annotations

from gateway.report.summary import ModelStats, Summary

MISSING = "—"
METHODS = (
    "Latency is queue + compute per succeeded task; p50 and p95 by linear interpolation "
    "between the closest ranks (numpy.percentile's default, the same as "
    'statistics.quantiles(method="inclusive")). tasks/s and tokens/s (completion tokens, as in GetJob) '
    "are a model's results, and their tokens, divided by the seconds from its first "
    "finished_at to its last. Each metric is the mean of its per-task scores; macro-F1 is "
    "the unweighted mean of each label's F1 over the classify references and predictions."
)


def _figure(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}g}"


def headers(summary: Summary) -> list[str]:
    columns = ["model", "tasks", "succeeded", "failed", "cancelled", *summary.metrics]
    if any(m.confusion for m in summary.models.values()):
        columns.append("macro-F1")
    return [*columns, "latency p50 (ms)", "latency p95 (ms)", "tokens/s", "tasks/s"]


def row(summary: Summary, stats: ModelStats) -> list[str]:
    cells = [stats.name, str(stats.tasks), str(stats.succeeded), str(stats.failed)]
    cells.append(str(stats.cancelled))
    cells += [_figure(stats.metric_mean(metric)) for metric in summary.metrics]
    if any(m.confusion for m in summary.models.values()):
        cells.append(_figure(stats.macro_f1()))
    percentiles = stats.latency_percentiles()
    cells += [MISSING, MISSING] if percentiles is None else [f"{p:.1f}" for p in percentiles]
    cells += [_figure(stats.tokens_per_s()), _figure(stats.tasks_per_s())]
    return cells


def rows(summary: Summary) -> list[list[str]]:
    return [row(summary, stats) for stats in summary.models.values()]
