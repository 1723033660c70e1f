"""The report's charts as PNG bytes, drawn by matplotlib's Agg canvas on figures of their
own (no pyplot, so no global state and no display). Labels come from result lines: they
are drawn as plain text (mathtext off, so a `$` in a label is not parsed) and cut short."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ParamSpec

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gateway.report.summary import ModelStats, Summary

LABEL_CHARS = 24
MAX_LABELS = 20  # of a confusion matrix: the most frequent references; the rest not drawn
HISTOGRAM_BINS = 30
THROUGHPUT_BINS = 60
DPI = 100
P = ParamSpec("P")


def _label(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _plain_text(draw: Callable[P, bytes | None]) -> Callable[P, bytes | None]:
    """Draws with mathtext off: a Text reads the setting when it is made."""

    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> bytes | None:
        with rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


@_plain_text
def metric_bars(models: Sequence[ModelStats], metrics: Sequence[str]) -> bytes | None:
    """One small bar chart per metric: its mean per model (metrics differ in scale)."""
    if not metrics:
        return None
    columns = min(len(metrics), 3)
    rows = -(-len(metrics) // columns)
    figure = _figure(3.6 * columns, 2.8 * rows)
    names = [_label(m.name) for m in models]
    colors = [f"C{i % 10}" for i in range(len(models))]
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, index + 1)
        means = [m.metric_mean(metric) for m in models]
        axes.bar(names, [v if v is not None else 0.0 for v in means], color=colors)
        for position, value in enumerate(means):
            text = "n/a" if value is None else f"{value:.3g}"
            axes.annotate(text, (position, value or 0.0), ha="center", va="bottom", fontsize=8)
        axes.set_title(_label(metric), fontsize=10)
        axes.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _png(figure)


@_plain_text
def latency_histograms(models: Sequence[ModelStats]) -> bytes | None:
    """Queue + compute milliseconds of succeeded tasks, one panel per model, shared bins."""
    shown = [m for m in models if m.latency_ms]
    if not shown:
        return None
    values = [np.frombuffer(m.latency_ms, dtype=np.float64) for m in shown]
    low = min(float(v.min()) for v in values)
    high = max(float(v.max()) for v in values)
    bins = np.linspace(low, high if high > low else low + 1.0, HISTOGRAM_BINS + 1)
    figure = _figure(7.0, 1.0 + 1.6 * len(shown))
    for index, (stats, data) in enumerate(zip(shown, values, strict=True)):
        axes = figure.add_subplot(len(shown), 1, index + 1)
        axes.hist(data, bins=list(bins), color=f"C{models.index(stats) % 10}")
        axes.set_ylabel("tasks", fontsize=8)
        axes.set_title(_label(stats.name), fontsize=9, loc="left")
    axes.set_xlabel("latency, queue + compute (ms)")
    return _png(figure)


@_plain_text
def throughput(models: Sequence[ModelStats]) -> bytes | None:
    """Results per second over time (by finished_at), one line per model, on bins of one
    width from the first result of any model to the last."""
    shown = [m for m in models if m.finished_at]
    if not shown:
        return None
    times = [np.frombuffer(m.finished_at, dtype=np.float64) for m in shown]
    start = min(float(t.min()) for t in times)
    span = max(float(t.max()) for t in times) - start
    width = max(span / THROUGHPUT_BINS, 1.0)
    edges = np.arange(0.0, span + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    figure = _figure(7.0, 3.0)
    axes = figure.add_subplot(1, 1, 1)
    for stats, data in zip(shown, times, strict=True):
        counts, _ = np.histogram(data - start, bins=edges)
        axes.step(edges[:-1], counts / width, where="post", label=_label(stats.name))
    axes.set_xlabel(f"seconds since the first result (bins of {width:.3g} s)")
    axes.set_ylabel("results / s")
    axes.legend(fontsize=8)
    return _png(figure)


@_plain_text
def confusion_matrix(stats: ModelStats) -> bytes | None:
    """References down, predicted labels across, counts in the cells."""
    if not stats.confusion:
        return None
    frequency: dict[str, int] = {}
    for (reference, predicted), count in stats.confusion.items():
        frequency[reference] = frequency.get(reference, 0) + count
        frequency.setdefault(predicted, 0)
    labels = sorted(frequency, key=lambda x: (-frequency[x], x))[:MAX_LABELS]
    labels.sort()
    matrix = np.array(
        [[stats.confusion.get((r, p), 0) for p in labels] for r in labels], dtype=np.int64
    )
    size = 2.0 + 0.45 * len(labels)
    figure = _figure(size + 1.0, size)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    ticks = range(len(labels))
    shown = [_label(x) for x in labels]
    axes.set_xticks(ticks, shown, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, shown, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("reference")
    axes.set_title(_label(stats.name), fontsize=10)
    for row in ticks:
        for column in ticks:
            value = int(matrix[row, column])
            dark = value > matrix.max() / 2
            color = "white" if dark else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color, fontsize=8)
    return _png(figure)


@dataclass
class Charts:
    """Every chart of a report, PNG bytes; None (or no entry) where there is nothing to draw."""

    metrics: bytes | None = None
    latency: bytes | None = None
    throughput: bytes | None = None
    confusion: dict[str, bytes] = field(default_factory=dict)  # by model

    def files(self) -> dict[str, bytes]:
        """The charts by a file name each (`confusion-2.png`: the second model's)."""
        named = {"metrics": self.metrics, "latency": self.latency, "throughput": self.throughput}
        found = {f"{name}.png": png for name, png in named.items() if png is not None}
        for index, png in enumerate(self.confusion.values(), 1):
            found[f"confusion-{index}.png"] = png
        return found


def draw(summary: Summary) -> Charts:
    models = list(summary.models.values())
    confusion = {m.name: png for m in models if (png := confusion_matrix(m)) is not None}
    return Charts(
        metrics=metric_bars(models, summary.metrics),
        latency=latency_histograms(models),
        throughput=throughput(models),
        confusion=confusion,
    )
