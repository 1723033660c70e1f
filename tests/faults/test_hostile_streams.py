"""Hostile clients of the API layer against a real gateway subprocess and an echo server:
streams opened and never read, a huge upload, a trickled one, bytes that are no message,
oversized templates and huge idempotency keys. Each case gets its gRPC code and a
message naming the limit, the gateway's health check answers within 250 ms all along,
its peak RSS (VmHWM) stays bounded, and a normal 5-task job succeeds right after."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2

from gateway.client import GatewayClient, read_local_job
from gateway.store import JobState, JobStore
from tests.faults.harness import ROOT, FaultFleet, write_job
from tests.faults.test_hostile_inputs import LAUGHS, HealthProbe, rss_mb
from tests.store.conftest import make_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MB = 1 << 20
# The gateway alone, whatever these clients do (measured: about 700 MiB at the end when the
# 20 MB idempotency keys were still submitted through SubmitJob; 250 MiB before the first case).
RSS_BOUND_MB = 900
STREAMS = 16  # the default max_streams_per_peer
UPLOAD_CAP = 64 * MB  # --limit max_upload_bytes for this gateway
DEADLINE_S = 3  # --limit upload_deadline_s
KEY_CHARS = 25_000_000  # --limit max_idempotency_key_chars: keys stored before the cap
# 16 unread streams: a window (2 MiB), a message and HTTP/2 read-ahead (1 MiB) each;
# measured 15-45 MiB. Unbounded, StreamResults held 40 MB of rows and a 32 MB page per
# stream and Execute 256 tasks and their results (16 x 80 MB here).
UNREAD_GROWTH_MB = 150
MEASURED: dict[str, object] = {}
# No BDP probing and 64 KB windows: what a client does not read stays at the gateway.
UNREAD_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", -1)]
SEND_OPTIONS = [("grpc.max_send_message_length", 64 * MB)]
BIG_OPTIONS = [*SEND_OPTIONS, ("grpc.max_receive_message_length", 64 * MB)]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("hostile-streams") / "fleet"
    limits = {
        "max_upload_bytes": UPLOAD_CAP,
        "upload_deadline_s": DEADLINE_S,
        "max_idempotency_key_chars": KEY_CHARS,
    }
    extra = [arg for name, value in limits.items() for arg in ("--limit", f"{name}={value}")]
    fleet = FaultFleet(folder, delay_ms=0, gateway_extra=extra).start(1)
    yield fleet
    fleet.stop()
    print(f"\nhostile streams: {json.dumps(MEASURED, indent=1)}")  # for the report (pytest -s)


@pytest.fixture(scope="module")
def big_results_job(fleet: FaultFleet, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished job of 40 results of 1 MB each (echo answers with the prompt's words)."""
    folder = tmp_path_factory.mktemp("big")
    rows = "".join(json.dumps({"id": f"b{i}", "text": f"{i}" + "w" * MB}) + "\n" for i in range(40))
    (folder / "rows.jsonl").write_text(rows)
    (folder / "job.yaml").write_text(
        "version: 1\nname: big\nmodel: echo\ntask: generate\ntemplate: '{{ text }}'\n"
        "params: {max_new_tokens: 4}\ninputs: {file: rows.jsonl, id: '{{ id }}'}\n"
    )
    job = asyncio.run(_run_job(fleet, folder / "job.yaml", 40))
    return job.job_id


async def _run_job(fleet: FaultFleet, path: Path, tasks: int) -> gateway_pb2.Job:
    client = GatewayClient(fleet.gateway_address)
    try:
        submitted = await client.submit(read_local_job(path, {}, None))
        deadline = time.monotonic() + 60
        while (found := await client.get(submitted.job_id)).state < gateway_pb2.JOB_STATE_COMPLETED:
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.05)
    finally:
        await client.close()
    assert found.state == gateway_pb2.JOB_STATE_COMPLETED and found.counts.succeeded == tasks
    return found


def hostile(
    fleet: FaultFleet, name: str, tmp_path: Path, case: Callable[[], None], growth_mb: float
) -> None:
    """Runs a case with the health probe on, then checks the gateway's peak RSS (at most
    RSS_BOUND_MB, and at most `growth_mb` more than before the case) and runs a normal
    5-task job on it."""
    assert fleet.gateway is not None
    before, _ = rss_mb(fleet.gateway.popen.pid)
    started = time.monotonic()
    with HealthProbe(fleet.gateway_address) as probe:
        case()
    peak, now = rss_mb(fleet.gateway.popen.pid)
    MEASURED[name] = {
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb_before": round(before),
        "peak_rss_mb": round(peak),
        "rss_after_mb": round(now),
        "health_checks": len(probe.latencies) + len(probe.misses),
        "health_late": len(probe.misses),
        "health_max_ms": round(max(probe.latencies, default=0.0), 1),
    }
    assert not probe.failures, f"health went unanswered: {probe.failures[:5]}"
    assert peak < RSS_BOUND_MB, f"gateway peak RSS {peak:.0f} MiB after {name}"
    assert peak - before < growth_mb, f"gateway peak RSS {before:.0f} -> {peak:.0f} MiB: {name}"
    asyncio.run(_run_job(fleet, write_job(tmp_path / "normal", 5), 5))


def _uploads(fleet: FaultFleet) -> list[str]:
    folder = fleet.data_dir / "gateway" / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------- unread streams


def _unread_streams(
    fleet: FaultFleet, open_one: Callable[[gateway_pb2_grpc.BatchGatewayStub], object]
) -> None:
    """STREAMS + 4 streams from one connection, none read: the first STREAMS are held
    (bounded by their windows) and the rest get RESOURCE_EXHAUSTED naming the limit."""
    with grpc.insecure_channel(fleet.gateway_address, options=UNREAD_OPTIONS) as channel:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        held = [open_one(stub) for _ in range(STREAMS)]
        time.sleep(3)  # every one opened, its window filled
        for _ in range(4):
            with pytest.raises(grpc.RpcError) as err:
                next(open_one(stub))  # type: ignore[call-overload]
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "(limit max_streams_per_peer)" in (err.value.details() or "")
        time.sleep(2)  # held, unread, while RSS and health are watched
        for call in held:
            assert call.is_active()  # type: ignore[attr-defined]
            call.cancel()  # type: ignore[attr-defined]


def test_many_unread_stream_results_from_one_connection(
    fleet: FaultFleet, big_results_job: str, tmp_path: Path
) -> None:
    request = gateway_pb2.StreamResultsRequest(job_id=big_results_job)
    hostile(
        fleet,
        "unread StreamResults",
        tmp_path,
        lambda: _unread_streams(fleet, lambda stub: stub.StreamResults(request)),
        growth_mb=UNREAD_GROWTH_MB,
    )
    # The streams are freed: one connection reads the whole job, in pages within the window.
    with grpc.insecure_channel(fleet.gateway_address, options=UNREAD_OPTIONS) as channel:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        request.no_follow = True
        pages = list(stub.StreamResults(request, timeout=60))
    assert sum(len(p.results) for p in pages) == 40
    assert max(p.ByteSize() for p in pages) <= 3 * MB  # stream_window_bytes (2 MiB) + one


def _execute_requests(stream: int) -> Iterator[gateway_pb2.ExecuteRequest]:
    for i in range(40):  # 40 MB of prompts, and as much in results, if it were all taken
        task = task_pb2.Task(
            task_id=f"s{stream}-{i}",
            task_type=task_pb2.TASK_TYPE_GENERATE,
            model="echo",
            prompt=f"{i}" + "x" * MB,
            params=task_pb2.GenerationParams(max_new_tokens=4),
        )
        yield gateway_pb2.ExecuteRequest(tasks=[task])


def test_many_unread_execute_streams_from_one_connection(fleet: FaultFleet, tmp_path: Path) -> None:
    streams = iter(range(1000))
    hostile(
        fleet,
        "unread Execute",
        tmp_path,
        lambda: _unread_streams(fleet, lambda stub: stub.Execute(_execute_requests(next(streams)))),
        growth_mb=UNREAD_GROWTH_MB,
    )


# ------------------------------------------------------------------- uploads

UPLOAD_JOB = (
    "version: 1\nname: up\nmodel: echo\ntask: generate\ntemplate: '{{ text }}'\n"
    "params: {max_new_tokens: 4}\ninputs: {file: rows.jsonl}\n"
)


def test_a_huge_upload_is_cut_off_at_the_limit(fleet: FaultFleet, tmp_path: Path) -> None:
    sent = [0]

    def chunks() -> Iterator[gateway_pb2.SubmitJobRequest]:
        yield gateway_pb2.SubmitJobRequest(spec=gateway_pb2.JobSpec(job_yaml=UPLOAD_JOB))
        line = (json.dumps({"text": "y" * 1000}) + "\n").encode()
        chunk = line * 256  # 256 KB
        while sent[0] < 4 << 30:  # 4 GB, unless the gateway stops reading
            sent[0] += len(chunk)
            yield gateway_pb2.SubmitJobRequest(input_chunk=chunk)

    def case() -> None:
        kept = _uploads(fleet)  # the input files of jobs that were accepted
        with (
            grpc.insecure_channel(fleet.gateway_address) as channel,
            pytest.raises(grpc.RpcError) as err,
        ):
            gateway_pb2_grpc.BatchGatewayStub(channel).SubmitJob(chunks(), timeout=120)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        details = err.value.details() or ""
        assert "inputs.file" in details and "(limit max_upload_bytes)" in details, details
        assert f"{UPLOAD_CAP:,}" in details
        assert sent[0] < UPLOAD_CAP + 64 * MB, sent[0]  # it stopped reading
        assert _uploads(fleet) == kept  # the partial file is gone

    hostile(fleet, "huge upload", tmp_path, case, growth_mb=50)
    MEASURED["huge upload"]["sent_mb"] = sent[0] // MB  # type: ignore[index]


def test_a_trickled_upload_ends_at_the_deadline(fleet: FaultFleet, tmp_path: Path) -> None:
    def trickle() -> Iterator[gateway_pb2.SubmitJobRequest]:
        yield gateway_pb2.SubmitJobRequest(spec=gateway_pb2.JobSpec(job_yaml=UPLOAD_JOB))
        for i in range(120):
            yield gateway_pb2.SubmitJobRequest(input_chunk=b'{"text": "%d"}\n' % i)
            time.sleep(0.5)

    def case() -> None:
        kept = _uploads(fleet)
        started = time.monotonic()
        with (
            grpc.insecure_channel(fleet.gateway_address) as channel,
            pytest.raises(grpc.RpcError) as err,
        ):
            gateway_pb2_grpc.BatchGatewayStub(channel).SubmitJob(trickle(), timeout=60)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value
        assert "(limit upload_deadline_s)" in (err.value.details() or "")
        assert DEADLINE_S <= time.monotonic() - started < DEADLINE_S + 5
        assert _uploads(fleet) == kept

    hostile(fleet, "trickled upload", tmp_path, case, growth_mb=50)


# ------------------------------------------------------- messages and templates


def test_garbage_bytes_as_a_message(fleet: FaultFleet, tmp_path: Path) -> None:
    garbage = b"\xff\xff\xff\xff\x0f" + os.urandom(1 << 16)

    def case() -> None:
        with grpc.insecure_channel(fleet.gateway_address) as channel:
            same: dict[str, object] = {"request_serializer": None, "response_deserializer": None}
            base = "/batchinfer.v1.BatchGateway/"
            calls = {
                "GetJob": lambda: channel.unary_unary(base + "GetJob", **same)(garbage, timeout=10),
                "StreamResults": lambda: list(
                    channel.unary_stream(base + "StreamResults", **same)(garbage, timeout=10)
                ),
                "SubmitJob": lambda: channel.stream_unary(base + "SubmitJob", **same)(
                    iter([garbage]), timeout=10
                ),
                "Execute": lambda: list(
                    channel.stream_stream(base + "Execute", **same)(iter([garbage]), timeout=10)
                ),
            }
            for method, call in calls.items():
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value)
                assert "is not a valid batchinfer.v1." in (err.value.details() or ""), method

    hostile(fleet, "garbage bytes", tmp_path, case, growth_mb=50)


TEMPLATES = {
    "50 MB body": (dict(body="a: " + "b" * (50 * MB)), "(limit max_job_bytes)"),
    "billion laughs": (dict(body=LAUGHS), "(limit max_yaml_alias_nodes)"),
    "deep nesting": (dict(body="a: " + "[" * 100_000 + "]" * 100_000), "(limit max_yaml_depth)"),
    "1 MB name": (dict(name="n" * MB), "(limit max_id_chars)"),
}


def test_oversized_template_registration(fleet: FaultFleet, tmp_path: Path) -> None:
    def case() -> None:
        with grpc.insecure_channel(fleet.gateway_address, options=SEND_OPTIONS) as channel:
            stub = gateway_pb2_grpc.BatchGatewayStub(channel)
            for name, (fields, expected) in TEMPLATES.items():
                values = {"name": "hostile", "version": "1", "body": "model: echo\n", **fields}
                request = gateway_pb2.RegisterTemplateRequest(**values)
                with pytest.raises(grpc.RpcError) as err:
                    stub.RegisterTemplate(request, timeout=60)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value)
                assert expected in (err.value.details() or ""), (name, err.value.details())
            listed = stub.ListTemplates(gateway_pb2.ListTemplatesRequest(), timeout=10)
            assert [t.name for t in listed.templates] == []

    hostile(fleet, "oversized templates", tmp_path, case, growth_mb=250)  # a 50 MB message


# ------------------------------------------------------------------ ListJobs


KEYED_JOB = (
    "version: 1\nname: keyed\nmodel: echo\ntask: generate\ntemplate: '{{ text }}'\n"
    "params: {max_new_tokens: 4}\ninputs: {rows: [{text: t}]}\n"
)


async def _store_legacy_jobs(fleet: FaultFleet, keys: list[str]) -> None:
    """Finished jobs with these keys, written straight into the gateway's SQLite store (WAL:
    a second connection may write beside the gateway's), as rows stored before
    max_idempotency_key_chars existed would be. Submitting them through the gateway (with
    the cap raised) measured SubmitJob's copies of each 20 MB key, not the listing, and the
    gateway's peak RSS then depended on which tests of this module ran before."""
    store = await JobStore.open(str(fleet.data_dir / "gateway" / "batchinfer.db"))
    try:
        for i, key in enumerate(keys):
            record = make_job(
                f"legacy{i:010d}",
                name="keyed",
                tenant="default",
                model="echo",
                task_type="generate",
                state=JobState.COMPLETED,
                created_at=time.time(),
                finished_at=time.time(),
                spec={"yaml": KEYED_JOB, "variables": {}},
                idempotency_key=key,
                expanded=True,
            )
            await store.create_job(record)
    finally:
        await store.close()


def test_list_jobs_with_huge_idempotency_keys(fleet: FaultFleet, tmp_path: Path) -> None:
    keys = [str(i) * (20 * MB) for i in range(4)]  # 80 MB: more than one message
    asyncio.run(_store_legacy_jobs(fleet, keys))

    def case() -> None:
        # What failed for everyone: the CLI's listing of recent jobs.
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "-g", fleet.gateway_address],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count(" keyed ") == len(keys), done.stdout[-3000:]
        pages, listed, token = 0, [], ""
        with grpc.insecure_channel(fleet.gateway_address, options=BIG_OPTIONS) as channel:
            stub = gateway_pb2_grpc.BatchGatewayStub(channel)
            while True:
                page = stub.ListJobs(gateway_pb2.ListJobsRequest(page_token=token), timeout=60)
                assert page.ByteSize() <= 33 * MB, page.ByteSize()  # half the message limit
                pages += 1
                listed += [job.idempotency_key for job in page.jobs]
                if not (token := page.next_page_token):
                    break
        assert sorted(key for key in listed if len(key) > MB) == keys
        MEASURED["ListJobs pages"] = pages

    hostile(fleet, "ListJobs with 20 MB keys", tmp_path, case, growth_mb=250)  # measured 142


def test_nothing_is_left_open(fleet: FaultFleet) -> None:
    """After all that, no stream slot is held: a fresh connection opens its full share."""
    with grpc.insecure_channel(fleet.gateway_address) as channel:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        stop = threading.Event()

        def idle() -> Iterator[gateway_pb2.ExecuteRequest]:
            stop.wait(30)
            return
            yield

        calls = [stub.Execute(idle()) for _ in range(STREAMS)]
        time.sleep(1)
        assert all(call.is_active() for call in calls)
        stop.set()
        for call in calls:
            assert list(call) == []
