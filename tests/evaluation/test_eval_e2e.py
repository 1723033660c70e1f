"""A two-model evaluation through a real gateway on real echo servers: each row once
per model, per-task scores in the lines, per-model aggregates in GetJob equal to the
means of the lines, and aggregates shown by WatchJob while the job runs."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from statistics import mean

import pytest
from batchinfer.v1 import gateway_pb2

from tests.gateway.test_cli_faults import acli
from tests.report.test_report_cli import Page
from tests.scheduling_e2e.conftest import EchoFleet

ROWS = 40
JOB = f"""version: 1
name: eval-echo
models: [alpha, beta]
task: generate
template: "{{{{ word }}}} {{{{ n }}}}"
params: {{max_new_tokens: 3}}
inputs:
  matrix: {{n: {list(range(ROWS // 2))}, word: [paris, rome]}}
  id: "{{{{ word }}}}-{{{{ n }}}}"
evaluate:
  reference: "{{{{ word }}}}"
  metrics: [exact_match, contains, rouge_l, bleu]
"""


@pytest.fixture
async def echo_fleet(tmp_path):
    fleet = EchoFleet(tmp_path)
    yield fleet
    await fleet.stop()


async def _running_reports(fleet: EchoFleet, job_id: str) -> gateway_pb2.Job | None:
    """The first WatchJob event with some but not all results counted per model."""
    request = gateway_pb2.WatchJobRequest(job_id=job_id, interval_ms=100)
    async for event in fleet.stub.WatchJob(request):
        done = sum(m.finished for m in event.job.models)
        if event.job.state == gateway_pb2.JOB_STATE_RUNNING and 0 < done < 2 * ROWS:
            return event.job
        if event.job.state >= gateway_pb2.JOB_STATE_COMPLETED:
            return None
    return None


async def test_two_models_scored_per_task_and_aggregated_per_model(echo_fleet, tmp_path):
    await echo_fleet.start(servers=2, delay_ms=20, window=2, batch=2)
    job = await echo_fleet.submit(JOB)
    running = await asyncio.wait_for(_running_reports(echo_fleet, job.job_id), 60)
    assert running is not None, "WatchJob never showed aggregates before the end"
    assert {m.model for m in running.models} == {"alpha", "beta"}

    lines = await echo_fleet.results(job.job_id)
    final = await echo_fleet.wait_done(job.job_id)
    assert final.counts.succeeded == 2 * ROWS
    got = defaultdict(list)
    for line in lines:
        assert line["id"] == f"{line['row_id']}@{line['model']}"
        assert line["finished_at"].endswith("Z")
        evaluation = line["evaluation"]
        assert evaluation["reference"] == line["row_id"].split("-")[0]
        assert evaluation["input"].startswith(evaluation["reference"])
        assert set(evaluation["scores"]) == {"exact_match", "contains", "rouge_l", "bleu"}
        got[line["model"]].append(line)
    for model in ("alpha", "beta"):
        assert sorted(x["row_id"] for x in got[model]) == sorted(
            f"{w}-{n}" for w in ("paris", "rome") for n in range(ROWS // 2)
        )

    reply = await echo_fleet.stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id))
    reports = {m.model: m for m in reply.job.models}
    assert set(reports) == {"alpha", "beta"}
    for model, report in reports.items():
        assert (report.finished, report.succeeded, report.failed) == (ROWS, ROWS, 0)
        for metric in ("exact_match", "contains", "rouge_l", "bleu"):
            expected = mean(x["evaluation"]["scores"][metric] for x in got[model])
            assert report.metrics[metric] == pytest.approx(expected)
        assert report.metrics["contains"] == 1.0  # echo repeats the prompt, which holds it
        assert report.metrics["exact_match"] == 0.0
        assert 0 < report.latency_p50_ms <= report.latency_p95_ms
        assert report.tasks_per_s > 0

    # The report of this job, read through the gateway, shows the same figures per model.
    page_file = tmp_path / "report.html"
    address = echo_fleet.gateway.address
    ran = await acli("report", job.job_id, "-g", address, "-o", str(page_file))
    assert ran.code == 0, ran.stderr
    text = page_file.read_text()
    page = Page(text)
    assert set(page.rows) == {"alpha", "beta"}
    head = re.search(r'<table class="models"><tr>(.*?)</tr>', text)
    assert head is not None
    columns = re.findall(r"<th>(.*?)</th>", head.group(1))
    for model, report in reports.items():
        cells = dict(zip(columns, page.rows[model], strict=True))
        assert [cells[c] for c in ("tasks", "succeeded", "failed")] == [str(ROWS), str(ROWS), "0"]
        for metric in ("exact_match", "contains", "rouge_l", "bleu"):
            assert float(cells[metric]) == pytest.approx(report.metrics[metric], rel=1e-3)
    charts = {image["data-chart"] for image in page.images}
    assert {"metrics", "latency", "throughput"} <= charts
