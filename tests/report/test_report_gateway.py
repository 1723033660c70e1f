"""`batchinfer report JOB` end to end: a real gateway and real echo inference servers in
this process, the CLI as a subprocess reading the finished job through GetJob and
StreamResults."""

from __future__ import annotations

import pytest

from tests.gateway.test_cli_faults import acli
from tests.report.test_report_cli import PNG, Page, png_of
from tests.scheduling_e2e.conftest import job_text

pytestmark = pytest.mark.timeout(180)


async def test_report_of_a_finished_job_on_echo_servers(echo_fleet, tmp_path):
    await echo_fleet.start(servers=2, delay_ms=1.0)
    job = await echo_fleet.submit(job_text("echo-report", 12, model="echo-model"))
    await echo_fleet.wait_done(job.job_id)
    report = tmp_path / "report.html"
    address = echo_fleet.gateway.address
    ran = await acli("report", job.job_id, "-g", address, "-o", str(report))
    assert ran.code == 0, ran.stderr
    page = Page(report.read_text())
    assert list(page.rows) == ["echo-model"]  # lines without a model: GetJob's
    assert page.rows["echo-model"][1:5] == ["12", "12", "0", "0"]
    latency = [image for image in page.images if image["data-chart"] == "latency"]
    assert len(latency) == 1 and png_of(latency[0]).startswith(PNG)
    text = report.read_text()
    assert "echo-report" in text and job.job_id in text and "completed" in text

    markdown = tmp_path / "report.md"
    ran = await acli("report", job.job_id, "-g", address, "-o", str(markdown))
    assert ran.code == 0, ran.stderr
    assert "| echo-model | 12 | 12 | 0 | 0 |" in markdown.read_text()
