"""ValidateJob: the gateway's dry run of a job, on the path SubmitJob takes (size caps,
render workers, limits), storing nothing; its problems as BadRequest violations and
JobFileProblems with file, line, column and row."""

from __future__ import annotations

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2
from google.rpc import error_details_pb2

from gateway.server import serve
from gateway.settings import GatewayConfig
from tests.gateway.conftest import job_yaml
from tests.status_details import status_detail

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def gateway(tmp_path):
    running = await serve(
        GatewayConfig(data_dir=tmp_path / "gw", render_workers=1, prevalidate_rows=500)
    )
    yield running
    await running.stop(grace=0.1)


@pytest.fixture
async def stub(gateway):
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield gateway_pb2_grpc.BatchGatewayStub(channel)


async def validate(stub, text: str, show: int = 3, chunks: tuple[bytes, ...] = (), **spec):
    async def requests():
        job = gateway_pb2.JobSpec(job_yaml=text, **spec)
        yield gateway_pb2.ValidateJobRequest(spec=job, show_tasks=show)
        for chunk in chunks:
            yield gateway_pb2.ValidateJobRequest(input_chunk=chunk)

    return await stub.ValidateJob(requests(), timeout=60)


async def invalid(stub, text: str, **kwargs) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await validate(stub, text, **kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


async def test_a_valid_job_counts_renders_and_estimates_and_stores_nothing(stub):
    answer = await validate(stub, job_yaml(40, name="dry"), show=2)
    assert (answer.name, answer.model, answer.task_type) == (
        "dry",
        "m",
        task_pb2.TASK_TYPE_GENERATE,
    )
    assert answer.task_count == answer.checked_tasks == 40
    assert answer.tenant == "default"
    assert [t.task.task_id for t in answer.tasks] == ["t0", "t1"]
    assert answer.tasks[1].index == 1 and answer.tasks[1].task.prompt == "p1"
    assert answer.tasks[0].task.params.max_new_tokens == 4
    assert answer.max_new_tokens == 40 * 4
    assert answer.prompt_tokens == sum(t.est_tokens - 4 for t in answer.tasks) * 20
    listed = await stub.ListJobs(gateway_pb2.ListJobsRequest(), timeout=10)
    assert list(listed.jobs) == []


async def test_a_large_job_is_counted_whole_and_estimated_from_its_first_tasks(stub):
    text = (
        "version: 1\nname: big\nmodel: m\ntask: generate\ntemplate: 'word {{ a }} {{ b }}'\n"
        "params: {max_new_tokens: 8}\n"
        f"inputs: {{matrix: {{a: {list(range(50))}, b: {list(range(40))}}}}}\n"
    )
    answer = await validate(stub, text, show=0)
    assert answer.task_count == 2000
    assert answer.checked_tasks == 500  # prevalidate_rows
    assert answer.max_new_tokens == 2000 * 8
    assert answer.prompt_tokens > 0 and not answer.tasks


async def test_an_uploaded_input_file_is_validated_like_a_submission(stub):
    text = (
        "version: 1\nname: up\nmodel: m\ntask: generate\ntemplate: '{{ text }}'\n"
        "inputs: {file: in.jsonl, id: '{{ id }}'}\n"
    )
    rows = b"".join(b'{"id": "r%d", "text": "hello %d"}\n' % (i, i) for i in range(30))
    answer = await validate(stub, text, chunks=(rows[:100], rows[100:]))
    assert answer.task_count == 30 and answer.tasks[0].task.prompt == "hello 0"
    err = await invalid(stub, text)  # no upload: the gateway reads no path a job names
    assert "inputs.file" in err.details()


async def test_problems_come_as_bad_request_and_job_file_problems_with_line_and_column(stub):
    text = (
        "version: 1\n"
        "name: bad\n"
        "model: m\n"
        "task: generate\n"
        "template: 'p{{ n }}'\n"
        "params: {max_new_tokens: -3}\n"
        "inputs: {rows: [{n: 1}], id: 't{{ n }}'}\n"
    )
    err = await invalid(stub, text, filename="bad.yaml")
    violations = status_detail(err, error_details_pb2.BadRequest).field_violations
    problems = status_detail(err, gateway_pb2.JobFileProblems).problems
    assert len(violations) == len(problems) >= 1
    (problem,) = [p for p in problems if p.field == "params.max_new_tokens"]
    assert (problem.file, problem.line) == ("bad.yaml", 6)
    assert problem.column == text.splitlines()[5].index("max_new_tokens") + 1
    assert problem.message and problem.row == 0


async def test_a_yaml_syntax_error_has_its_column(stub):
    text = "version: 1\nname: x\nparams: {max_new_tokens: 4\nmodel: m\n"
    err = await invalid(stub, text, filename="broken.yaml")
    (problem,) = status_detail(err, gateway_pb2.JobFileProblems).problems
    assert problem.file == "broken.yaml" and problem.line >= 3 and problem.column >= 1
    assert "invalid YAML" in problem.message


async def test_bad_rows_are_each_named_with_their_row(stub):
    text = (
        "version: 1\nname: rows\nmodel: m\ntask: generate\ntemplate: '{{ text.upper() }}'\n"
        "inputs: {rows: [{text: a}, {other: 1}, {text: c}, {other: 2}], id: 'r{{ loop }}'}\n"
    )
    text = text.replace("id: 'r{{ loop }}'", "id: '{{ text | default(other) }}'")
    err = await invalid(stub, text)
    rows = [p.row for p in status_detail(err, gateway_pb2.JobFileProblems).problems]
    assert rows == [2, 4]
    fields = [v.field for v in status_detail(err, error_details_pb2.BadRequest).field_violations]
    assert all(f.startswith("inputs[row ") for f in fields), fields


async def test_the_gateways_limits_apply(tmp_path):
    running = await serve(
        GatewayConfig(data_dir=tmp_path / "small", render_workers=1, max_job_tasks=10)
    )
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = gateway_pb2_grpc.BatchGatewayStub(channel)
            err = await invalid(stub, job_yaml(11))
            assert "at most 10" in err.details()
            err = await invalid(stub, job_yaml(3), show=101)
            assert status_detail(err, error_details_pb2.BadRequest).field_violations[0].field == (
                "show_tasks"
            )
    finally:
        await running.stop(grace=0.1)
