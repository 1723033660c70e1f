"""Which tenant a job runs as, and which templates it extends: pure functions of the
submission layer, no server."""

from __future__ import annotations

import pytest

from gateway.errors import PermissionDenied
from gateway.jobfile import load_job
from gateway.principals import ANONYMOUS, Principal
from gateway.store import TemplateRecord
from gateway.submission import _layered, job_tenant
from tests.security.harness import job_yaml

ALICE = Principal("alice", tenants=("team-a", "team-c"))
OPS = Principal("ops", admin=True)


def _job(schedule: str = ""):
    return load_job(text=job_yaml(schedule=schedule), filename="job.yaml")


def test_a_job_without_a_tenant_runs_as_the_callers_first() -> None:
    assert job_tenant(_job(), ALICE) == "team-a"
    assert job_tenant(_job(), ANONYMOUS) == "default"  # no authentication: as before
    assert job_tenant(_job(), OPS) == "default"


def test_a_job_naming_a_tenant_needs_the_caller_to_have_it() -> None:
    assert job_tenant(_job("tenant: team-c"), ALICE) == "team-c"
    assert job_tenant(_job("tenant: anything"), OPS) == "anything"
    assert job_tenant(_job("tenant: default"), ANONYMOUS) == "default"
    with pytest.raises(PermissionDenied) as caught:
        job_tenant(_job("tenant: team-b"), ALICE)
    assert caught.value.field == "schedule.tenant"
    assert "'team-b'" in str(caught.value) and "team-a, team-c" in str(caught.value)
    # Naming the default tenant explicitly is a claim like any other.
    with pytest.raises(PermissionDenied):
        job_tenant(_job("tenant: default"), ALICE)


def test_a_tenants_template_wins_over_a_shared_one_of_the_same_name() -> None:
    rows = [
        TemplateRecord("", "base", "1", "shared", 1.0),
        TemplateRecord("team-a", "base", "1", "a", 2.0),
        TemplateRecord("team-c", "base", "1", "c", 3.0),
        TemplateRecord("team-c", "only-c", "1", "c", 3.0),
        TemplateRecord("", "only-shared", "1", "s", 1.0),
    ]
    assert _layered(rows, ["team-a", "team-c"]) == {
        ("base", "1"): "a",
        ("only-c", "1"): "c",
        ("only-shared", "1"): "s",
    }
    assert _layered(rows, ["team-c"])[("base", "1")] == "c"
    assert _layered([rows[0], rows[1]], ["team-x"])[("base", "1")] == "a"  # others beat shared
    assert _layered([rows[0]], ["team-a"]) == {("base", "1"): "shared"}
