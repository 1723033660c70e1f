"""Authentication and tenant isolation against one real gateway subprocess with a
principals file (and no inference server, so jobs stay unfinished): a matrix of principal
x RPC x own/other tenant's job x missing/wrong/right token, tenants claimed in job files,
idempotency-key and template squatting, reloading the file, the audit log, the CLI's
token, and no token in any log."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.local import Process, gateway_argv, start_process
from gateway.principals import token_sha256
from tests.security.harness import (
    TOKENS,
    Caller,
    audit_lines,
    cli,
    job_yaml,
    log_files,
    principals_yaml,
)

pytestmark = pytest.mark.slow

OK, UNAUTH, DENIED, NOT_FOUND = (
    grpc.StatusCode.OK,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
)
JOB_RPCS = (
    "GetJob",
    "WatchJob",
    "StreamResults",
    "PauseJob",
    "ResumeJob",
    "UpdateJob",
    "CancelJob",
)


class Gateway:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.auth_file = folder / "principals.yaml"
        self.auth_file.write_text(principals_yaml())
        argv = gateway_argv([], folder / "gw", extra=["--auth-file", str(self.auth_file)])
        argv += ["--log-level", "INFO"]
        self.log = folder / "gateway.log"
        self.process: Process = start_process("gateway", argv, self.log, timeout=60)
        self.channel = grpc.insecure_channel(self.process.address)
        self.stub = gateway_pb2_grpc.BatchGatewayStub(self.channel)
        self.jobs: dict[str, str] = {}  # principal -> a job of its first tenant

    def as_(self, who: str | None, token: str | None = None) -> Caller:
        return Caller(self.stub, token if who is None else TOKENS[who])

    def stop(self) -> None:
        self.channel.close()
        self.process.stop(timeout=20)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    gateway = Gateway(tmp_path_factory.mktemp("isolation"))
    try:
        for who in ("alice", "bob"):
            gateway.jobs[who] = gateway.as_(who).submit(job_yaml(f"{who}-job")).job_id
        yield gateway
    finally:
        gateway.stop()


def _target(gw: Gateway, rpc: str, owner: str) -> str:
    """The job a check acts on: the owner's long-lived job, or a fresh one to cancel."""
    if rpc == "CancelJob":
        return gw.as_(owner).submit(job_yaml(f"{owner}-to-cancel")).job_id
    return gw.jobs[owner]


# (caller, owner of the job, expected): own tenant, other tenant, admin.
CASES = [
    ("alice", "alice", OK),
    ("alice", "bob", NOT_FOUND),
    ("bob", "bob", OK),
    ("bob", "alice", NOT_FOUND),
    ("carol", "bob", OK),  # another principal of the same tenant
    ("ops", "alice", OK),
    ("ops", "bob", OK),
]


@pytest.mark.parametrize("rpc", JOB_RPCS)
@pytest.mark.parametrize(("who", "owner", "expected"), CASES)
def test_a_caller_sees_and_controls_only_its_tenants_jobs(
    gw: Gateway, rpc: str, who: str, owner: str, expected: grpc.StatusCode
) -> None:
    job_id = _target(gw, rpc, owner)
    code, details = gw.as_(who).code(rpc, job_id)
    assert code == expected, details
    if expected == NOT_FOUND:  # the same answer as for a job that does not exist
        assert details == f"no job {job_id!r}"
        assert gw.as_(who).code(rpc, "0" * 16) == (NOT_FOUND, f"no job {'0' * 16!r}")


@pytest.mark.parametrize(
    "rpc", [*JOB_RPCS, "ListJobs", "ListTemplates", "SubmitJob", "ValidateJob"]
)
@pytest.mark.parametrize("token", [None, "not-a-known-token", "Bearer-less"])
def test_a_missing_or_unknown_token_is_unauthenticated(
    gw: Gateway, rpc: str, token: str | None
) -> None:
    caller = gw.as_(None, token)
    if token == "Bearer-less":  # a header that is not `Bearer <token>`
        caller.token = None
        md = (("authorization", TOKENS["alice"]),)
        try:
            gw.stub.GetJob(gateway_pb2.GetJobRequest(job_id=gw.jobs["alice"]), metadata=md)
        except grpc.RpcError as exc:
            assert exc.code() == UNAUTH and TOKENS["alice"] not in (exc.details() or "")
        else:
            pytest.fail("a token without `Bearer` was accepted")
        return
    code, details = caller.code(rpc, gw.jobs["alice"])
    assert code == UNAUTH
    assert ("missing credentials" if token is None else "unknown bearer token") in details


def test_health_and_reflection_stay_open(gw: Gateway) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(gw.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in next(iter(answers)).list_services_response.service}
    assert "batchinfer.v1.BatchGateway" in names


def test_list_jobs_shows_only_the_callers_tenants(gw: Gateway) -> None:
    def listed(who: str, tenant: str = "") -> set[str]:
        request = gateway_pb2.ListJobsRequest(tenant=tenant, limit=1000)
        return {j.job_id for j in gw.stub.ListJobs(request, metadata=gw.as_(who).md).jobs}

    alice, bob = gw.jobs["alice"], gw.jobs["bob"]
    assert alice in listed("alice") and bob not in listed("alice")
    assert bob in listed("bob") and alice not in listed("bob")
    assert listed("bob", tenant="team-a") == set()  # asking for another tenant gives nothing
    assert {alice, bob} <= listed("ops")
    assert listed("ops", tenant="team-b") >= {bob} and alice not in listed("ops", "team-b")


def test_the_tenant_comes_from_the_credentials_not_the_job_file(gw: Gateway) -> None:
    alice = gw.as_("alice")
    default = alice.submit(job_yaml("no-tenant"))
    assert (default.tenant, default.principal) == ("team-a", "alice")  # her first tenant
    assert alice.submit(job_yaml("second", schedule="tenant: team-c")).tenant == "team-c"
    with pytest.raises(grpc.RpcError) as caught:
        alice.submit(job_yaml("claim", schedule="tenant: team-b"))
    assert caught.value.code() == DENIED
    assert caught.value.details().startswith("schedule.tenant: principal 'alice' may not")
    assert "team-b" in caught.value.details()
    # An admin submits for any tenant; without one named, the job file's default.
    assert gw.as_("ops").submit(job_yaml("for-b", schedule="tenant: team-b")).tenant == "team-b"
    assert gw.as_("ops").submit(job_yaml("ops-default")).tenant == "default"
    # Nothing was stored for the refused job.
    names = {j.name for j in gw.stub.ListJobs(gateway_pb2.ListJobsRequest(limit=1000), metadata=gw.as_("ops").md).jobs}  # fmt: skip
    assert "claim" not in names


def test_a_dry_run_checks_the_tenant_as_a_submission_would(gw: Gateway) -> None:
    alice = gw.as_("alice")
    assert alice.validate(job_yaml("dry")).tenant == "team-a"
    assert alice.validate(job_yaml("dry", schedule="tenant: team-c")).tenant == "team-c"
    with pytest.raises(grpc.RpcError) as caught:
        alice.validate(job_yaml("dry", schedule="tenant: team-b"))
    assert caught.value.code() == DENIED and "schedule.tenant" in caught.value.details()


def test_an_idempotency_key_taken_in_another_tenant_is_not_the_victims_job(gw: Gateway) -> None:
    key = f"squat-{uuid.uuid4().hex[:8]}"
    text = job_yaml("nightly")
    squatter = gw.as_("bob").submit(text, key=key)  # first, with the key alice will use
    mine = gw.as_("alice").submit(text, key=key)
    assert mine.job_id != squatter.job_id
    assert (mine.tenant, mine.principal) == ("team-a", "alice")
    # A real retry (same key, same spec) gets the job back...
    assert gw.as_("alice").submit(text, key=key).job_id == mine.job_id
    # ...and so does another principal of the tenant that owns the key.
    assert gw.as_("carol").submit(text, key=key).job_id == squatter.job_id
    # The same key with another spec is refused, not answered with the other job.
    with pytest.raises(grpc.RpcError) as caught:
        gw.as_("alice").submit(job_yaml("nightly", rows=5), key=key)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert mine.job_id in caught.value.details() and "different job spec" in caught.value.details()


def _register(gw: Gateway, who: str, name: str, body: str, **fields) -> gateway_pb2.Template:
    request = gateway_pb2.RegisterTemplateRequest(name=name, version="1", body=body, **fields)
    return gw.stub.RegisterTemplate(request, metadata=gw.as_(who).md, timeout=10).template


def _refused(gw: Gateway, who: str, **fields) -> tuple[grpc.StatusCode, str]:
    try:
        _register(gw, who, "company-base", "schedule: {priority: 1}", **fields)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return OK, ""


def test_template_names_are_per_tenant_and_need_the_role(gw: Gateway) -> None:
    code, details = _refused(gw, "bob")  # team-b, but no templates role
    assert code == DENIED and "needs role templates" in details
    assert _refused(gw, "alice", tenant="team-b")[0] == DENIED
    assert _refused(gw, "alice", shared=True)[0] == DENIED
    # carol registers company-base@1 first, in team-b; alice's team-a is not affected.
    assert _register(gw, "carol", "company-base", "schedule: {priority: 7}").tenant == "team-b"
    assert _register(gw, "alice", "company-base", "schedule: {priority: 2}").tenant == "team-a"
    assert _register(gw, "ops", "shared-base", "schedule: {priority: 8}", shared=True).tenant == ""
    mine = gw.as_("alice").submit(job_yaml("ext", extends="company-base@1"))
    theirs = gw.as_("carol").submit(job_yaml("ext", extends="company-base@1"))
    assert (mine.priority, theirs.priority) == (2, 7)
    assert gw.as_("bob").submit(job_yaml("ext2", extends="shared-base@1")).priority == 8
    # A dry run sees the same templates: alice's, not another tenant's.
    assert gw.as_("alice").validate(job_yaml("dry", extends="company-base@1")).task_count == 3
    folder = gw.folder / "validate"
    folder.mkdir(exist_ok=True)
    (folder / "job.yaml").write_text(job_yaml("dry", extends="company-base@1"))
    code, output = cli(
        ["validate", str(folder / "job.yaml"), "-g", gw.process.address, "--token", TOKENS["ops"]],
        gw.folder / "cli.log",
    )
    assert code == 2 and "company-base@1" in output  # ops (no tenant) sees no team's template
    code, output = cli(
        ["validate", str(folder / "job.yaml"), "-g", gw.process.address],
        gw.folder / "cli.log",
        env={"BATCHINFER_TOKEN": TOKENS["alice"]},
    )
    assert code == 0, output
    seen = {
        (t.name, t.tenant)
        for t in gw.stub.ListTemplates(
            gateway_pb2.ListTemplatesRequest(), metadata=gw.as_("alice").md
        ).templates
    }
    assert ("company-base", "team-a") in seen and ("shared-base", "") in seen
    assert ("company-base", "team-b") not in seen


def test_a_changed_principals_file_is_used_without_a_restart(gw: Gateway) -> None:
    dave = "tok-dave-0e77b1"
    entry = f"  - {{name: dave, token_sha256: {token_sha256(dave)}, tenants: [team-d]}}\n"
    temporary = gw.auth_file.with_suffix(".new")
    temporary.write_text(principals_yaml(entry))
    os.replace(temporary, gw.auth_file)  # atomically, as an operator should
    deadline = time.monotonic() + 10
    while Caller(gw.stub, dave).code("ListJobs")[0] != OK:
        assert time.monotonic() < deadline, "the new principal was never accepted"
        time.sleep(0.2)
    assert Caller(gw.stub, dave).submit(job_yaml("dave")).tenant == "team-d"


def test_the_cli_sends_the_token_from_the_flag_or_the_environment(gw: Gateway) -> None:
    log = gw.folder / "cli.log"
    address, job = gw.process.address, gw.jobs["alice"]
    code, _ = cli(["status", job, "-g", address], log, env={"BATCHINFER_TOKEN": TOKENS["alice"]})
    assert code == 0
    code, output = cli(["status", job, "-g", address, "--token", TOKENS["bob"]], log)
    assert code == 1 and f"job {job} not found" in output
    code, output = cli(["pause", job, "-g", address, "--token", "wrong-tok-31337"], log)
    assert code == 1 and "UNAUTHENTICATED" in output and "wrong-tok-31337" not in output
    code, output = cli(["status", "-g", address], log, env={})
    assert code == 1 and "missing credentials" in output


def test_every_control_action_and_refusal_is_in_the_audit_log(gw: Gateway) -> None:
    lines = audit_lines(gw.log)
    text = [line["message"] for line in lines]
    assert any(
        m.startswith("audit principal=bob rpc=CancelJob")
        and "tenant=team-a" in m
        and "outcome=NOT_FOUND" in m
        for m in text
    ), text[:20]
    assert any(
        m.startswith("audit principal=alice rpc=PauseJob") and "outcome=OK" in m for m in text
    )
    assert any(
        "principal=(unauthenticated) rpc=GetJob" in m and "UNAUTHENTICATED" in m for m in text
    )
    assert any("rpc=SubmitJob" in m and "PERMISSION_DENIED" in m and "schedule.tenant" in m for m in text)  # fmt: skip
    assert any("rpc=RegisterTemplate" in m and "template=company-base@1" in m for m in text)
    refused = [line for line in lines if "outcome=OK" not in line["message"]]
    assert refused and all(line["level"] == "WARNING" for line in refused)
    # Reads that succeed are not audited; control actions are, with the job.
    assert not any("rpc=GetJob" in m and "outcome=OK" in m for m in text)
    assert all("job=" in m for m in text if "rpc=CancelJob" in m)


def test_no_token_appears_in_any_log(gw: Gateway) -> None:
    """Run last in this module: every log the gateway and the CLI wrote so far."""
    files = list(log_files(gw.folder))
    assert any(p.name == "gateway.log" for p in files)
    secrets = [*TOKENS.values(), "tok-dave-0e77b1", "wrong-tok-31337", "not-a-known-token"]
    for path in files:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{secret} in {path}"
