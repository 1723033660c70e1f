"""Every error path and control call of the public API, over real gRPC."""

from __future__ import annotations

import asyncio
import io

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, task_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.gateway.conftest import job_yaml
from tests.gateway.fake_server import Script
from tests.status_details import status_detail


def spec_request(text: str, **kwargs) -> gateway_pb2.SubmitJobRequest:
    return gateway_pb2.SubmitJobRequest(spec=gateway_pb2.JobSpec(job_yaml=text, **kwargs))


async def submit(stub, *requests):
    async def gen():
        for r in requests:
            yield r

    return (await stub.SubmitJob(gen(), timeout=30)).job


@pytest.fixture
async def stub(fleet):
    await fleet.start([Script(window=16)])
    return fleet.client.stub


async def test_unknown_job_is_not_found(stub):
    for call, request in [
        (stub.GetJob, gateway_pb2.GetJobRequest(job_id="nope")),
        (stub.CancelJob, gateway_pb2.CancelJobRequest(job_id="nope")),
        (stub.PauseJob, gateway_pb2.PauseJobRequest(job_id="nope")),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in err.value.details()


async def test_bad_job_file_names_the_field_and_creates_nothing(stub):
    text = job_yaml(3).replace("max_new_tokens: 4", "max_new_tokens: 0")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, spec_request(text))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [
        v.field for v in status_detail(err.value, error_details_pb2.BadRequest).field_violations
    ]
    assert any("max_new_tokens" in f for f in fields)
    jobs = await stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=10)
    assert len(jobs.jobs) == 0


async def test_bad_row_is_named(stub):
    text = job_yaml(3).replace("'p{{ n }}'", "'{{ missing_field }}'")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, spec_request(text))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = status_detail(err.value, error_details_pb2.BadRequest).field_violations
    assert any("row" in v.field for v in violations)
    assert "missing_field" in err.value.details()


async def test_undefined_variable_and_garbage(stub):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, spec_request(job_yaml(2).replace("name: t", "name: ${JOBNAME}")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "JOBNAME" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, spec_request("{{{: not yaml"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, gateway_pb2.SubmitJobRequest(input_chunk=b"x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_variables_come_only_from_the_submission(stub, monkeypatch):
    monkeypatch.setenv("SECRET_IN_GATEWAY_ENV", "leaked")
    text = job_yaml(1).replace("'p{{ n }}'", "'${SECRET_IN_GATEWAY_ENV}'")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, spec_request(text))
    assert "SECRET_IN_GATEWAY_ENV" in err.value.details()
    job = await submit(stub, spec_request(text, variables={"SECRET_IN_GATEWAY_ENV": "given"}))
    assert job.job_id


async def test_idempotency_key_returns_the_same_job(stub):
    first = await submit(stub, spec_request(job_yaml(5), idempotency_key="k1"))
    second = await submit(stub, spec_request(job_yaml(5), idempotency_key="k1"))
    assert first.job_id == second.job_id
    jobs = await stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=10)
    assert [j.job_id for j in jobs.jobs] == [first.job_id]


async def test_uploaded_input_file(stub, tmp_path):
    text = (
        "version: 1\nname: up\nmodel: m\ntask: generate\ntemplate: 'q{{ x }}'\n"
        "inputs: {file: rows.jsonl, id: 'r{{ x }}'}\n"
    )
    rows = b"".join(b'{"x": %d}\n' % i for i in range(50))
    job = await submit(
        stub,
        spec_request(text, filename="up.yaml"),
        gateway_pb2.SubmitJobRequest(input_chunk=rows[:100]),
        gateway_pb2.SubmitJobRequest(input_chunk=rows[100:]),
    )
    assert job.counts.total == 50
    results = []
    async for response in stub.StreamResults(gateway_pb2.StreamResultsRequest(job_id=job.job_id)):
        results.extend(response.results)
    assert sorted(r.task_id for r in results) == sorted(f"r{i}" for i in range(50))
    assert results[0].result.text.text.startswith("ok:q")


async def test_stream_results_resumes_from_a_cursor(fleet, stub):
    job = await submit(stub, spec_request(job_yaml(30)))
    out = io.StringIO()
    await fleet.client.follow_results(job.job_id, out)
    first = []
    async for response in stub.StreamResults(
        gateway_pb2.StreamResultsRequest(job_id=job.job_id, no_follow=True)
    ):
        first.extend(response.results)
    assert len(first) == 30
    cursor = first[9].seq
    rest = []
    async for response in stub.StreamResults(
        gateway_pb2.StreamResultsRequest(job_id=job.job_id, after_seq=cursor)
    ):
        rest.extend(response.results)
    assert [r.task_id for r in rest] == [r.task_id for r in first[10:]]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.StreamResults(
            gateway_pb2.StreamResultsRequest(job_id=job.job_id, after_seq=-1)
        ):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pause_resume_cancel_and_priority(fleet):
    await fleet.start([Script(window=2, delay_s=0.05)])
    stub = fleet.client.stub
    job = await submit(stub, spec_request(job_yaml(200)))
    paused = (await stub.PauseJob(gateway_pb2.PauseJobRequest(job_id=job.job_id), timeout=10)).job
    assert paused.state == gateway_pb2.JOB_STATE_PAUSED
    await asyncio.sleep(0.3)
    done_while_paused = (
        await stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id), timeout=10)
    ).job
    await asyncio.sleep(0.3)
    later = (await stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id), timeout=10)).job
    assert later.counts.succeeded == done_while_paused.counts.succeeded  # nothing new was sent
    assert later.wait_reason == "paused"
    resumed = (
        await stub.ResumeJob(gateway_pb2.ResumeJobRequest(job_id=job.job_id), timeout=10)
    ).job
    assert resumed.state == gateway_pb2.JOB_STATE_RUNNING
    updated = await stub.UpdateJob(
        gateway_pb2.UpdateJobRequest(job_id=job.job_id, priority=1), timeout=10
    )
    assert updated.job.priority == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateJob(
            gateway_pb2.UpdateJobRequest(job_id=job.job_id, priority=12), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    cancelled = (
        await stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id), timeout=10)
    ).job
    assert cancelled.state == gateway_pb2.JOB_STATE_CANCELLED
    assert cancelled.counts.cancelled > 0
    assert cancelled.counts.succeeded + cancelled.counts.cancelled + cancelled.counts.failed == 200
    results = []
    async for response in stub.StreamResults(gateway_pb2.StreamResultsRequest(job_id=job.job_id)):
        results.extend(response.results)
    assert len({r.task_id for r in results}) == 200 == len(results)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PauseJob(gateway_pb2.PauseJobRequest(job_id=job.job_id), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_generate_and_execute(stub):
    task = task_pb2.Task(
        task_id="one", task_type=task_pb2.TASK_TYPE_GENERATE, model="m", prompt="hi"
    )
    result = (await stub.Generate(gateway_pb2.GenerateRequest(task=task), timeout=10)).result
    assert result.task_id == "one" and result.text.text == "ok:hi"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Generate(
            gateway_pb2.GenerateRequest(task=task_pb2.Task(task_id="x", model="m")), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def requests():
        for i in range(0, 300, 30):
            yield gateway_pb2.ExecuteRequest(
                tasks=[
                    task_pb2.Task(
                        task_id=f"e{j}",
                        task_type=task_pb2.TASK_TYPE_GENERATE,
                        model="m",
                        prompt=f"x{j}",
                    )
                    for j in range(i, i + 30)
                ]
            )

    seen = {}
    async for response in stub.Execute(requests()):
        for r in response.results:
            seen[r.task_id] = r.text.text
    assert seen == {f"e{j}": f"ok:x{j}" for j in range(300)}


async def test_templates_register_list_and_extend(stub):
    base = "model: m\ntask: generate\nparams: {max_new_tokens: 3}\n"
    registered = await stub.RegisterTemplate(
        gateway_pb2.RegisterTemplateRequest(name="base", version="1", body=base), timeout=10
    )
    assert registered.template.name == "base"
    listed = await stub.ListTemplates(gateway_pb2.ListTemplatesRequest(), timeout=10)
    assert [(t.name, t.version) for t in listed.templates] == [("base", "1")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterTemplate(
            gateway_pb2.RegisterTemplateRequest(name="base", version="1", body="model: other\n"),
            timeout=10,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    text = (
        "version: 1\nname: ext\nextends: base@1\ntemplate: 'z{{ n }}'\ninputs: {rows: [{n: 1}]}\n"
    )
    job = await submit(stub, spec_request(text))
    assert job.model == "m"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await submit(stub, spec_request(text.replace("base@1", "base@9")))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "base@9" in err.value.details()


async def test_health_and_reflection(fleet, stub):
    channel = fleet.client.current_channel
    health = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="batchinfer.v1.BatchGateway"), timeout=10
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in reflection.ServerReflectionInfo(ask()):
        names = {s.name for s in response.list_services_response.service}
        assert "batchinfer.v1.BatchGateway" in names
        break


async def test_cancel_while_expanding_counts_add_up(fleet):
    await fleet.start([Script(window=4, delay_s=0.05)])
    stub = fleet.client.stub
    rows = 30_000  # above prevalidate_rows: expanded while it runs
    text = (
        "version: 1\nname: big\nmodel: m\ntask: generate\ntemplate: 'p{{ a }}-{{ b }}'\n"
        f"inputs: {{matrix: {{a: {list(range(100))}, b: {list(range(rows // 100))}}}}}\n"
    )
    job = await submit(stub, spec_request(text))
    await asyncio.sleep(0.5)  # some rows stored, most not
    cancelled = (
        await stub.CancelJob(gateway_pb2.CancelJobRequest(job_id=job.job_id), timeout=30)
    ).job
    c = cancelled.counts
    assert cancelled.state == gateway_pb2.JOB_STATE_CANCELLED
    assert c.succeeded + c.failed + c.cancelled == c.total <= rows
    again = (await stub.GetJob(gateway_pb2.GetJobRequest(job_id=job.job_id), timeout=10)).job
    assert again.counts.total == c.total and again.expanded
