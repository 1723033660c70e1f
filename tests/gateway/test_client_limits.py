"""What one client may hold or send through the API layer, over real gRPC: uploads
bounded in bytes and time, streams per connection, windows in bytes, online tasks with
the job caps, templates checked before they are stored, pages bounded in bytes, and
INVALID_ARGUMENT (never UNKNOWN) for a request that does not parse."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2
from google.rpc import error_details_pb2

from gateway.limits import Limits
from tests.gateway.conftest import job_yaml
from tests.gateway.fake_server import Script
from tests.status_details import status_detail

INVALID = grpc.StatusCode.INVALID_ARGUMENT
KB = 1024
UPLOAD_JOB = (
    "version: 1\nname: up\nmodel: m\ntask: generate\ntemplate: 'q{{ x }}'\n"
    "inputs: {file: rows.jsonl, id: 'r{{ x }}'}\n"
)


async def refused(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


def stub_of(fleet) -> gateway_pb2_grpc.BatchGatewayStub:  # type: ignore[no-untyped-def]
    return fleet.client.stub


def generate_task(**fields) -> task_pb2.Task:  # type: ignore[no-untyped-def]
    values = {"task_id": "t", "task_type": task_pb2.TASK_TYPE_GENERATE, "model": "m"}
    return task_pb2.Task(**{**values, **fields})


def uploads_left(fleet) -> list[str]:  # type: ignore[no-untyped-def]
    folder = fleet.gateway.engine.config.data_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def pieces_left(fleet) -> int:  # type: ignore[no-untyped-def]
    """Stored pieces of uploads that no job names (and drops them: a test's last look)."""
    return await fleet.gateway.engine.store.drop_stale_inputs(before=float("inf"))


# ------------------------------------------------------------------- uploads


async def test_an_upload_past_max_upload_bytes_is_cut_off_and_deleted(fleet):
    # Past a piece (1 MiB), so some of the upload was stored before it was cut off.
    await fleet.start([Script()], limits=Limits(max_upload_bytes=1536 * KB))
    sent = 0

    def requests(kind):  # type: ignore[no-untyped-def]
        nonlocal sent
        yield kind(spec=gateway_pb2.JobSpec(job_yaml=UPLOAD_JOB, filename="up.yaml"))
        for _ in range(1000):  # 64 MB, unless the gateway stops reading
            sent += 1
            yield kind(input_chunk=b'{"x": 1}\n' * 7000)

    def upload(method: str, kind) -> grpc.RpcError:  # type: ignore[no-untyped-def]
        # The sync client: grpc's asyncio client may report a write that failed as the call
        # ended as INTERNAL "Internal error from Core" instead of the status (grpc#36066).
        with grpc.insecure_channel(fleet.gateway.address) as channel:
            call = getattr(gateway_pb2_grpc.BatchGatewayStub(channel), method)
            with pytest.raises(grpc.RpcError) as err:
                call(requests(kind), timeout=30)
            return err.value

    for method, kind in (
        ("SubmitJob", gateway_pb2.SubmitJobRequest),
        ("ValidateJob", gateway_pb2.ValidateJobRequest),
    ):
        sent = 0
        err = await asyncio.to_thread(upload, method, kind)
        assert err.code() == INVALID, err
        assert "inputs.file" in err.details() and "(limit max_upload_bytes)" in err.details()
        violations = status_detail(err, error_details_pb2.BadRequest).field_violations
        assert [v.field for v in violations] == ["inputs.file"]
        assert sent < 100, sent  # it stopped receiving
        assert uploads_left(fleet) == []
        assert await pieces_left(fleet) == 0  # the pieces stored before the cut-off went too


async def test_a_trickled_upload_ends_at_the_deadline_and_is_deleted(fleet):
    await fleet.start([Script()], limits=Limits(upload_deadline_s=1.0))

    async def trickle():  # type: ignore[no-untyped-def]
        yield gateway_pb2.SubmitJobRequest(spec=gateway_pb2.JobSpec(job_yaml=UPLOAD_JOB))
        for i in range(100):
            yield gateway_pb2.SubmitJobRequest(input_chunk=b'{"x": %d}\n' % i)
            await asyncio.sleep(0.1)

    started = time.monotonic()
    err = await refused(stub_of(fleet).SubmitJob(trickle(), timeout=30))
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    assert "(limit upload_deadline_s)" in err.details()
    assert time.monotonic() - started < 5
    assert uploads_left(fleet) == []
    assert fleet.gateway.engine.jobs == {}


# ------------------------------------------------------------------- streams


async def test_streams_per_connection_are_capped_and_freed(fleet):
    await fleet.start([Script()], limits=Limits(max_streams_per_peer=3))
    idle = asyncio.Event()

    async def nothing():  # type: ignore[no-untyped-def]
        await idle.wait()
        return
        yield

    channel = grpc.aio.insecure_channel(fleet.gateway.address)
    stub = gateway_pb2_grpc.BatchGatewayStub(channel)
    calls = [stub.Execute(nothing()) for _ in range(3)]
    try:
        for call in calls:
            await call.wait_for_connection()
        while sum(fleet.gateway.api.streams.open.values()) < 3:
            await asyncio.sleep(0.01)
        err = await refused(stub.Execute(nothing()).read())
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "(limit max_streams_per_peer)" in err.details()
        # Unary calls are not streams, and another connection is another client.
        other = stub_of(fleet).GetJob(gateway_pb2.GetJobRequest(job_id="x"), timeout=5)
        assert (await refused(other)).code() == grpc.StatusCode.NOT_FOUND
        watch = stub_of(fleet).WatchJob(gateway_pb2.WatchJobRequest(job_id="x"), timeout=5)
        assert (await refused(_drain(watch))).code() == grpc.StatusCode.NOT_FOUND
    finally:
        calls[0].cancel()
    while sum(fleet.gateway.api.streams.open.values()) > 2:
        await asyncio.sleep(0.01)
    again = stub.Execute(nothing())
    await again.wait_for_connection()
    idle.set()
    assert [r async for r in again] == []
    await channel.close()
    assert fleet.gateway.api.streams.open == {}


async def test_an_unread_execute_stream_holds_a_window_of_bytes(fleet):
    await fleet.start([Script(window=512)], limits=Limits(stream_window_bytes=512 * KB))
    fake = fleet.fakes[0]
    prompt = "y" * (100 * KB)  # results as large: ok:<prompt>

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(200):
            yield gateway_pb2.ExecuteRequest(tasks=[generate_task(task_id=str(i), prompt=prompt)])

    channel = grpc.aio.insecure_channel(
        fleet.gateway.address,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)],
    )
    try:
        call = gateway_pb2_grpc.BatchGatewayStub(channel).Execute(requests())
        await asyncio.sleep(1.5)  # not read: what the gateway let through stays bounded
        unread = sum(fake.received.values())
        # 5 tasks of 100 KB fill the window; a few more sit in HTTP/2 buffers (64 KB
        # windows). Without a byte window all 200 (20 MB of results) would be held.
        assert unread <= 15, unread
        seen = {r.task_id async for response in call for r in response.results}
        assert seen == {str(i) for i in range(200)}
    finally:
        await channel.close()


async def test_a_bad_execute_task_ends_the_stream_at_once(fleet):
    await fleet.start([Script()])
    more = asyncio.Event()

    async def requests():  # type: ignore[no-untyped-def]
        yield gateway_pb2.ExecuteRequest(tasks=[generate_task(task_id="ok", prompt="p")])
        yield gateway_pb2.ExecuteRequest(tasks=[task_pb2.Task(task_id="bad")])
        await more.wait()  # the stream stays open: the error must not wait for its end

    started = time.monotonic()
    err = await refused(_drain(stub_of(fleet).Execute(requests(), timeout=20)))
    more.set()
    assert err.code() == INVALID and "tasks[0].model" in err.details(), err
    assert time.monotonic() - started < 5


async def _drain(call) -> None:  # type: ignore[no-untyped-def]
    async for _ in call:
        pass


# ---------------------------------------------------------------- online tasks

ONLINE_CASES = {
    "labels": (
        dict(task_type=task_pb2.TASK_TYPE_CLASSIFY, labels=["l"] * 257),
        "task.labels",
        "(limit max_labels)",
    ),
    "label chars": (
        dict(task_type=task_pb2.TASK_TYPE_CLASSIFY, labels=["a", "l" * 1025]),
        "task.labels[1]",
        "(limit max_label_chars)",
    ),
    "stop strings": (
        dict(params=task_pb2.GenerationParams(stop=["s"] * 17)),
        "task.params.stop",
        "(limit max_stop_strings)",
    ),
    "stop chars": (
        dict(params=task_pb2.GenerationParams(stop=["s" * 257])),
        "task.params.stop[0]",
        "(limit max_stop_chars)",
    ),
    "prompt bytes": (dict(prompt="é" * 600), "task.prompt", "(limit max_prompt_bytes)"),
    "message bytes": (
        dict(
            task_type=task_pb2.TASK_TYPE_CHAT,
            messages=[task_pb2.ChatMessage(role="user", content="x" * 1001)],
        ),
        "task.messages",
        "(limit max_prompt_bytes)",
    ),
    "task id": (dict(task_id="i" * 257), "task.task_id", "(limit max_id_chars)"),
    "unknown task type": (dict(task_type=99), "task.task_type", "must be set"),
}


@pytest.mark.parametrize("case", list(ONLINE_CASES))
async def test_online_tasks_get_the_caps_of_job_tasks(fleet, case):
    await fleet.start([Script()], limits=Limits(max_prompt_bytes=1000))
    fields, field, limit = ONLINE_CASES[case]
    task = generate_task(**fields)
    err = await refused(stub_of(fleet).Generate(gateway_pb2.GenerateRequest(task=task), timeout=10))
    assert err.code() == INVALID and limit in err.details(), err
    violations = status_detail(err, error_details_pb2.BadRequest).field_violations
    assert [v.field for v in violations] == [field]

    async def one():  # type: ignore[no-untyped-def]
        yield gateway_pb2.ExecuteRequest(tasks=[generate_task(prompt="fine"), task])

    err = await refused(_drain(stub_of(fleet).Execute(one(), timeout=10)))
    assert err.code() == INVALID and field.replace("task.", "tasks[1].") in err.details(), err


# ------------------------------------------------------------------- templates

LAUGHS = "\n".join(
    ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
)
TEMPLATE_CASES = {
    "long name": (dict(name="n" * 257), "name", "(limit max_id_chars)"),
    "long version": (dict(version="v" * 257), "version", "(limit max_id_chars)"),
    "NUL in the name": (dict(name="a\x00b"), "name", "must not contain NUL"),
    "huge body": (dict(body="a: " + "b" * (2 << 20)), "body", "(limit max_job_bytes)"),
    "not YAML": (dict(body="a: [1, 2"), "body", "invalid YAML"),
    "not a mapping": (dict(body="- a\n- b\n"), "body", "must be a mapping"),
    "billion laughs": (dict(body=LAUGHS), "body", "(limit max_yaml_alias_nodes)"),
    "deep": (dict(body="a: " + "[" * 10_000 + "]" * 10_000), "body", "(limit max_yaml_depth)"),
}


@pytest.mark.parametrize("case", list(TEMPLATE_CASES))
async def test_a_template_is_checked_before_it_is_stored(fleet, case):
    await fleet.start([Script()])
    fields, field, expected = TEMPLATE_CASES[case]
    request = gateway_pb2.RegisterTemplateRequest(
        **{"name": "base", "version": "1", "body": "model: m\n", **fields}
    )
    err = await refused(stub_of(fleet).RegisterTemplate(request, timeout=30))
    assert err.code() == INVALID and expected in err.details(), err
    violations = status_detail(err, error_details_pb2.BadRequest).field_violations
    assert violations[0].field == field
    listed = await stub_of(fleet).ListTemplates(gateway_pb2.ListTemplatesRequest(), timeout=10)
    assert list(listed.templates) == []


async def test_list_templates_pages_within_the_message_limit(fleet):
    await fleet.start([Script()], max_message_bytes=4 << 20)  # pages of at most 2 MiB
    for i in range(5):
        body = "model: m\n# " + "c" * 900_000 + "\n"
        request = gateway_pb2.RegisterTemplateRequest(name=f"t{i}", version="1", body=body)
        await stub_of(fleet).RegisterTemplate(request, timeout=30)
    names, token, pages = [], "", 0
    while True:
        request = gateway_pb2.ListTemplatesRequest(page_token=token)
        page = await stub_of(fleet).ListTemplates(request, timeout=10)
        assert page.ByteSize() <= 2 << 20
        names += [t.name for t in page.templates]
        pages += 1
        if not (token := page.next_page_token):
            break
    assert names == [f"t{i}" for i in range(5)] and pages == 3
    bad = gateway_pb2.ListTemplatesRequest(page_token="not a token")
    err = await refused(stub_of(fleet).ListTemplates(bad, timeout=10))
    assert err.code() == INVALID and "page_token" in err.details()


# ----------------------------------------------------------------- job pages


async def test_list_jobs_follows_pages_and_refuses_a_forged_token(fleet):
    await fleet.start([Script()])
    stub = stub_of(fleet)
    ids = []
    for _ in range(5):
        request = gateway_pb2.SubmitJobRequest(spec=gateway_pb2.JobSpec(job_yaml=job_yaml(1)))
        ids.append((await stub.SubmitJob(iter([request]), timeout=30)).job.job_id)
        await asyncio.sleep(0.002)  # distinct creation times: newest first is well defined
    listed, token = [], ""
    while True:
        page = await stub.ListJobs(gateway_pb2.ListJobsRequest(limit=2, page_token=token))
        assert len(page.jobs) <= 2
        listed += [j.job_id for j in page.jobs]
        if not (token := page.next_page_token):
            break
    assert listed == ids[::-1]
    assert [j.job_id for j in await fleet.client.list_jobs(3)] == ids[:1:-1]
    for forged in ("x", "W10=", "WzEuMCwgMV0="):  # not base64 JSON; []; [1.0, 1]
        request = gateway_pb2.ListJobsRequest(page_token=forged)
        err = await refused(stub.ListJobs(request, timeout=10))
        assert err.code() == INVALID and "page_token" in err.details(), forged


# ------------------------------------------------------- what a client sent


async def test_bytes_that_do_not_parse_are_invalid_argument_on_every_kind_of_call(fleet):
    await fleet.start([Script()])
    channel = fleet.client.current_channel
    garbage = b"\xff\xff\xff\xff\x0f not a message"

    def raw(kind: str, method: str):  # type: ignore[no-untyped-def]
        factory = getattr(channel, kind)
        return factory(
            f"/batchinfer.v1.BatchGateway/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

    calls = [
        raw("unary_unary", "GetJob")(garbage, timeout=10),
        _drain(raw("unary_stream", "StreamResults")(garbage, timeout=10)),
        raw("stream_unary", "SubmitJob")(iter([garbage]), timeout=10),
        _drain(raw("stream_stream", "Execute")(iter([garbage]), timeout=10)),
        # A string field that is not UTF-8 (field 1, job_id: 0x0a, length 2, bytes ff fe).
        raw("unary_unary", "GetJob")(b"\x0a\x02\xff\xfe", timeout=10),
    ]
    for call in calls:
        err = await refused(call)
        assert err.code() == INVALID, err
        assert "is not a valid batchinfer.v1." in err.details(), err.details()
    health = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    err = await refused(health(garbage, timeout=10))
    assert err.code() == INVALID and "grpc.health.v1.HealthCheckRequest" in err.details()
    assert fleet.gateway.api.streams.open == {}


async def test_an_error_that_quotes_a_huge_request_still_reaches_the_client(fleet):
    await fleet.start([Script()])
    stub = stub_of(fleet)
    err = await refused(stub.GetJob(gateway_pb2.GetJobRequest(job_id="j" * (1 << 20)), timeout=10))
    assert err.code() == INVALID and "(limit max_id_chars)" in err.details()
    # A row's value quoted by a template's error, 100 KB of it, in each of 15 problems.
    template = "\"{{ text if n else ('{' ~ text ~ '}').format() }}\""
    rows = ", ".join("{text: " + "s" * 100_000 + ", n: 0}" for _ in range(15))
    text = (
        f"version: 1\nname: q\nmodel: m\ntask: generate\ntemplate: {template}\n"
        f"inputs: {{rows: [{rows}]}}\n"
    )
    request = gateway_pb2.SubmitJobRequest(spec=gateway_pb2.JobSpec(job_yaml=text))
    err = await refused(stub.SubmitJob(iter([request]), timeout=30))
    assert err.code() == INVALID, err  # not "received metadata size exceeds hard limit"
    assert err.details().startswith("invalid job file") and err.details().endswith("...")
    assert status_detail(err, error_details_pb2.BadRequest).field_violations


async def test_a_nul_in_what_the_store_keeps_is_refused(fleet):
    """PostgreSQL text cannot hold NUL: refused up front instead of failing in the store."""
    await fleet.start([Script()])
    spec = gateway_pb2.JobSpec(job_yaml=job_yaml(1), idempotency_key="a\x00b")
    err = await refused(stub_of(fleet).SubmitJob(iter([gateway_pb2.SubmitJobRequest(spec=spec)])))
    assert err.code() == INVALID and "idempotency_key: must not contain NUL" in err.details()
    err = await refused(stub_of(fleet).GetJob(gateway_pb2.GetJobRequest(job_id="\x00")))
    assert err.code() == INVALID and "job_id" in err.details()
