"""The Markdown report: the job, the per-model table and the worst examples, with the
charts as PNG files next to it (`REPORT-metrics.png`, ...) that it links to.

A string from a result line may hold Markdown or HTML: each is HTML-escaped and the
characters that Markdown reads as syntax in a table cell are written as entities, so a
cell shows its text and never becomes a link, an image, a tag or a new cell."""

from __future__ import annotations

from gateway.report.summary import Example, JobInfo, Summary
from gateway.report.table import METHODS, headers, rows

# HTML's specials and what would be syntax in a GitHub-flavoured Markdown cell, in one
# pass (so no entity is escaped twice).
_ENTITIES = str.maketrans(
    {c: f"&#{ord(c)};" for c in "&<>\"'\\`*_[]!|~"} | {"\n": "<br>", "\r": ""}
)


def cell(text: str) -> str:
    return text.translate(_ENTITIES)


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(cell(h) for h in head) + " |"]
    lines.append("|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in cells) + " |" for cells in body]
    return lines


def _examples(examples: list[Example]) -> list[str]:
    body = [
        [
            str(rank),
            e.task_id,
            f"{e.score:.4g}",
            e.input,
            e.reference,
            e.output,
            ", ".join(f"{k} {v:.4g}" for k, v in e.scores.items()),
        ]
        for rank, e in enumerate(examples, 1)
    ]
    head = ["#", "task", "score", "input", "reference", "output", "all scores"]
    return _table(head, body)


def render_markdown(job: JobInfo, summary: Summary, images: dict[str, str]) -> str:
    """`images`: chart name (`metrics`, `latency`, `throughput`, `confusion-N`) to the
    file name written next to the report."""
    lines = [f"# {cell(job.title)}", ""]
    facts = [("job", job.job_id), ("state", job.state)]
    facts += [(name, str(count)) for name, count in job.counts.items()]
    lines += [f"- {cell(k)}: {cell(v)}" for k, v in facts if v]
    lines += ["", "## Models", "", *_table(headers(summary), rows(summary)), ""]
    for name, file in images.items():
        lines += [f"![{name}](<{file}>)", ""]
    worst = [(m.name, m.worst.examples()) for m in summary.models.values()]
    if any(examples for _, examples in worst):
        lines += [
            "## Worst examples",
            "",
            f"Lowest {cell(summary.ranking_metric or '')} first.",
            "",
        ]
        for name, examples in worst:
            if examples:
                lines += [f"### {cell(name)}", "", *_examples(examples), ""]
    lines += [METHODS, ""]
    return "\n".join(lines)
