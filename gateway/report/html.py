"""The HTML report: one self-contained file, its charts embedded as base64 PNG data URIs.
Every string that came from a result line or the gateway goes through `html.escape`, and
the page's Content-Security-Policy allows no script and no fetch besides data: images,
so an escaping slip still runs nothing."""

from __future__ import annotations

import base64
from html import escape

from gateway.report.charts import Charts
from gateway.report.summary import Example, JobInfo, Summary
from gateway.report.table import METHODS, headers, rows

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: pre-wrap; max-width: 28em; overflow-wrap: anywhere; font-size: 0.9em; }
img { max-width: 100%; }
p.note { color: #555; font-size: 0.9em; }
"""


def _img(png: bytes, alt: str, name: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="chart" data-chart="{escape(name)}" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _job(job: JobInfo) -> str:
    facts = [("job", job.job_id), ("state", job.state)]
    facts += [(name, str(count)) for name, count in job.counts.items()]
    items = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in facts if v)
    return f'<table class="job">{items}</table>'


def _table(summary: Summary) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers(summary))
    body = []
    for cells in rows(summary):
        tds = [f"<th>{escape(cells[0])}</th>"]
        tds += [f'<td class="num">{escape(c)}</td>' for c in cells[1:]]
        body.append(f'<tr class="model" data-model="{escape(cells[0])}">{"".join(tds)}</tr>')
    return f'<table class="models"><tr>{head}</tr>{"".join(body)}</table>'


def _examples(name: str, examples: list[Example]) -> str:
    if not examples:
        return ""
    head = "<tr><th>#</th><th>task</th><th>score</th><th>input</th><th>reference</th>"
    head += "<th>output</th><th>all scores</th></tr>"
    body = []
    for rank, example in enumerate(examples, 1):
        scores = ", ".join(f"{k} {v:.4g}" for k, v in example.scores.items())
        cells = [
            f'<td class="num">{rank}</td>',
            f'<td class="text">{escape(example.task_id)}</td>',
            f'<td class="num">{example.score:.4g}</td>',
            f'<td class="text">{escape(example.input)}</td>',
            f'<td class="text">{escape(example.reference)}</td>',
            f'<td class="text">{escape(example.output)}</td>',
            f'<td class="text">{escape(scores)}</td>',
        ]
        body.append(f'<tr class="example">{"".join(cells)}</tr>')
    return (
        f"<h3>{escape(name)}</h3>"
        f'<table class="examples" data-model="{escape(name)}">{head}{"".join(body)}</table>'
    )


def render_html(job: JobInfo, summary: Summary, charts: Charts) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>batchinfer report: {escape(job.title)}</title><style>{STYLE}</style></head>",
        f"<body><h1>{escape(job.title)}</h1>",
        _job(job),
        "<h2>Models</h2>",
        _table(summary),
    ]
    if charts.metrics:
        parts += [
            "<h2>Metrics</h2>",
            _img(charts.metrics, "each metric's mean per model", "metrics"),
        ]
    if charts.latency:
        parts += ["<h2>Latency</h2>", _img(charts.latency, "latency histograms", "latency")]
    if charts.throughput:
        parts += [
            "<h2>Throughput</h2>",
            _img(charts.throughput, "results per second", "throughput"),
        ]
    if charts.confusion:
        parts.append("<h2>Confusion matrices</h2>")
        parts += [
            _img(png, f"confusion matrix of {name}", "confusion")
            for name, png in charts.confusion.items()
        ]
    worst = [(m.name, m.worst.examples()) for m in summary.models.values()]
    if any(examples for _, examples in worst):
        metric = escape(summary.ranking_metric or "")
        parts.append(f"<h2>Worst examples</h2><p class=note>Lowest {metric} first.</p>")
        parts += [_examples(name, examples) for name, examples in worst]
    parts += [f'<p class="note">{escape(METHODS)}</p>', "</body></html>"]
    return "\n".join(parts) + "\n"
