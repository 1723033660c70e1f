"""`batchinfer report`: a job's results as a report a person looks at: the per-model
table, charts of the metrics, latencies and throughput, confusion matrices and the
worst-scoring examples. Lines come from the gateway (StreamResults, as `batchinfer
results` reads them) or a results file, one at a time (summary.py keeps only numbers
and a bounded heap of examples); html.py and markdown.py write it out."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchinfer.v1 import gateway_pb2

from gateway.report.summary import DEFAULT_MODEL, JobInfo, Summary

FORMATS = ("html", "md")


class ReportInputError(ValueError):
    """A results file that cannot be read as JSONL result lines (names the line)."""


def file_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except ValueError as exc:
                raise ReportInputError(f"{path}, line {number}: not JSON ({exc})") from None
            if not isinstance(line, dict):
                raise ReportInputError(f"{path}, line {number}: not a JSON object")
            yield line


def from_file(path: Path, summary: Summary) -> JobInfo:
    """Reads every line of a results file into `summary` (raises ReportInputError, OSError)."""
    summary.add_all(file_lines(path))
    counts = {"total": summary.lines}
    counts |= {status: summary.statuses[status] for status in ("succeeded", "failed", "cancelled")}
    return JobInfo(title=path.name, model=summary.default_model, counts=counts)


class _SummarySink:
    """A ResultSink for GatewayClient.follow_results: each line into the summary."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def write(self, item: gateway_pb2.JobResult, line: dict[str, Any]) -> None:
        self.summary.add(line)

    def flush(self) -> None:
        pass


def job_info(job: gateway_pb2.Job) -> JobInfo:
    c = job.counts
    counts = {"total": c.total, "succeeded": c.succeeded, "failed": c.failed}
    counts |= {"cancelled": c.cancelled, "reused": c.reused}
    state = gateway_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    return JobInfo(
        title=job.name or job.job_id,
        job_id=job.job_id,
        state=state,
        model=job.model or DEFAULT_MODEL,
        counts=counts,
    )


async def from_gateway(client: Any, job_id: str, summary: Summary) -> gateway_pb2.Job:
    """Follows the job's results to its end into `summary` (a GatewayClient's errors
    propagate); returns the job as it ended. Lines without a model are GetJob's model's."""
    job = await client.get(job_id)
    summary.default_model = job.model or summary.default_model
    await client.follow_results(job_id, io.StringIO(), sink=_SummarySink(summary))
    return await client.get(job_id)


def render(fmt: str, job: JobInfo, summary: Summary, stem: str) -> tuple[str, dict[str, bytes]]:
    """The report's text and, for Markdown, its chart files by name (`STEM-metrics.png`)."""
    from gateway.report.charts import draw  # matplotlib: imported only to draw

    charts = draw(summary)
    if fmt == "html":
        from gateway.report.html import render_html

        return render_html(job, summary, charts), {}
    from gateway.report.markdown import render_markdown

    files = {f"{stem}-{name}": png for name, png in charts.files().items()}
    names = {name.removesuffix(".png"): f"{stem}-{name}" for name in charts.files()}
    return render_markdown(job, summary, names), files
