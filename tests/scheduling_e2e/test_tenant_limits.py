"""Per-tenant limits from the gateway's configuration file, end to end on echo servers."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2

from gateway.settings import SettingsError, load_gateway_file
from tests.scheduling_e2e.conftest import job_text

DONE = gateway_pb2.JOB_STATE_COMPLETED


def gateway_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


async def test_a_tenants_rate_limit_holds_its_jobs_while_another_tenant_runs(echo_fleet, tmp_path):
    tenants = load_gateway_file(
        gateway_file(tmp_path, "tenants:\n  slow: {requests_per_s: 2, burst: 1}\n")
    )
    await echo_fleet.start(delay_ms=1, window=16, batch=8, tenants=tenants)
    slow = await echo_fleet.submit(job_text("slow", 40, tenant="slow"))
    fast = await echo_fleet.submit(job_text("fast", 40, tenant="fast"))
    assert (await echo_fleet.wait_done(fast.job_id)).counts.succeeded == 40
    held = await echo_fleet.wait_for(
        slow.job_id, lambda j: j.wait_reason == "rate limited", "held by its tenant's rate"
    )
    assert held.state != DONE
    # The other tenant's 40 tasks ran while this one's bucket let out about 2 a second.
    assert held.counts.succeeded < 20


async def test_a_tenants_own_admission_cap_refuses_a_job_over_it(echo_fleet, tmp_path):
    tenants = load_gateway_file(
        gateway_file(tmp_path, "tenants:\n  small: {max_queued_tasks: 10}\n")
    )
    await echo_fleet.start(tenants=tenants)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await echo_fleet.submit(job_text("big", 11, tenant="small"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = await echo_fleet.submit(job_text("big", 11, tenant="other"))  # no cap for others
    assert (await echo_fleet.wait_done(other.job_id)).counts.succeeded == 11


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("tenants:\n  a: {requests_per_s: .inf}\n", "tenants.a.requests_per_s"),
        ("tenants:\n  a: {weight: -1}\n", "tenants.a.weight"),
        ("tenants:\n  a: {rps: 3}\n", "unknown setting 'rps'"),
        ("tenant:\n  a: {}\n", "unknown section 'tenant'"),
        ("tenants:\n  a: {max_queued_tasks: 2.5}\n", "whole number"),
    ],
)
def test_a_bad_gateway_file_names_the_setting(tmp_path, text, named):
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_gateway_file(gateway_file(tmp_path, text))
