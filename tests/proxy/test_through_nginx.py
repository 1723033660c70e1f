"""Everything a client does, through a real L7 proxy (nginx, gRPC over HTTP/2 on both
sides) in front of the gateway, with the gateway's Process streams to two echo servers
through a second nginx: submit, submit --watch, results from a cursor, Execute; then the
proxies are reloaded and restarted mid-job and every stream re-opens and goes on."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2

from gateway.client import GatewayClient
from tests.faults.harness import ROOT, Watcher, assert_each_task_once, write_job
from tests.proxy.conftest import own_errors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", "TERM": "dumb"}
    argv = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def lines_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def process_streams(access_log: list[str]) -> Counter[str]:
    """Process streams nginx passed on (logged when they end), by upstream address."""
    return Counter(
        line.split()[1] for line in access_log if "/batchinfer.v1.InferenceServer/Process" in line
    )


async def _results_after(address: str, job_id: str, after_seq: int) -> list[dict]:
    client = GatewayClient(address)
    try:
        out = io.StringIO()
        await client.follow_results(job_id, out, after_seq=after_seq)
        return lines_of(out.getvalue())
    finally:
        await client.close()


async def _execute(address: str, n: int) -> dict[str, str]:
    client = GatewayClient(address)
    stub = gateway_pb2_grpc.BatchGatewayStub(client.current_channel)

    async def requests():
        for start in range(0, n, 25):
            tasks = [
                task_pb2.Task(
                    task_id=f"e{i}",
                    task_type=task_pb2.TASK_TYPE_GENERATE,
                    model="echo",
                    prompt=f"x{i}",
                    params=task_pb2.GenerationParams(max_new_tokens=2),
                )
                for i in range(start, min(start + 25, n))
            ]
            yield gateway_pb2.ExecuteRequest(tasks=tasks)

    try:
        seen = {}
        async for response in stub.Execute(requests(), timeout=60):
            for result in response.results:
                assert result.WhichOneof("output") == "text", result
                seen[result.task_id] = result.server
        return seen
    finally:
        await client.close()


def test_submit_watch_results_and_execute_through_nginx(proxied, tmp_path):
    tasks = 400
    proxied.start(2)
    job = write_job(tmp_path / "job", tasks)
    address = proxied.address

    submitted = cli("submit", str(job), "--gateway", address)
    assert submitted.returncode == 0, submitted.stderr
    first_id = submitted.stdout.split()[0]

    out = tmp_path / "watched.jsonl"
    watched = cli("submit", str(job), "--gateway", address, "--watch", "-o", str(out))
    assert watched.returncode == 0, watched.stderr
    assert_each_task_once(lines_of(out.read_text()), tasks)
    fetched = cli("results", first_id, "--gateway", address, "-o", str(tmp_path / "r.jsonl"))
    assert fetched.returncode == 0, fetched.stderr
    every = lines_of((tmp_path / "r.jsonl").read_text())
    assert_each_task_once(every, tasks)

    # StreamResults from a cursor: exactly what comes after it, through the proxy.
    everything = asyncio.run(_results_after(address, first_id, 0))
    raw = asyncio.run(_raw_results(address, first_id))
    # Both servers ran tasks, each over its own Process stream through the proxy.
    assert {r.result.server for r in raw} == {w.address for w in proxied.workers}
    cursor = raw[99].seq
    rest = asyncio.run(_results_after(address, first_id, cursor))
    assert len(rest) == tasks - 100
    assert {r["id"] for r in rest} == {r["id"] for r in everything[100:]}

    online = asyncio.run(_execute(address, 200))
    assert set(online) == {f"e{i}" for i in range(200)}
    assert not any(w in proxied.front.error_log() for w in ("[error]", "[crit]"))


async def _raw_results(address: str, job_id: str) -> list[gateway_pb2.JobResult]:
    client = GatewayClient(address)
    try:
        request = gateway_pb2.StreamResultsRequest(job_id=job_id, no_follow=True)
        return [r async for page in client.stub.StreamResults(request) for r in page.results]
    finally:
        await client.close()


def test_proxies_reloaded_and_restarted_mid_job_lose_and_repeat_nothing(proxied, tmp_path):
    """nginx -s reload on both proxies, then a hard restart of each: the gateway's Process
    streams and the CLI's WatchJob/StreamResults re-open; every task exactly once."""
    tasks = 3000
    proxied.start(2)
    job = write_job(tmp_path / "job", tasks)
    watcher = Watcher.submit(job, proxied.address, tmp_path / "out.jsonl")
    watcher.wait_for_results(300)
    job_id = watcher.log().split()[0]
    # A second client: `batchinfer results` follows the same job through the same proxy.
    follower_log = (tmp_path / "results.log").open("wb")
    follower = subprocess.Popen(
        [sys.executable, "-m", "gateway", "results", job_id, "--gateway", proxied.address,
         "-o", str(tmp_path / "results.jsonl")],
        stdout=follower_log, stderr=follower_log, cwd=ROOT, env={**os.environ, "TERM": "dumb"},
    )  # fmt: skip
    proxied.back.reload()
    watcher.wait_for_results(700)
    proxied.front.reload()
    watcher.wait_for_results(1100)
    reloads_log = watcher.log()
    before_restarts = watcher.lines()
    proxied.back.restart()
    watcher.wait_for_results(1500)
    proxied.front.restart()
    assert watcher.wait(180) == 0, watcher.log()
    attempts = assert_each_task_once(watcher.lines(), tasks)
    assert follower.wait(60) == 0, (tmp_path / "results.log").read_text()
    assert_each_task_once(lines_of((tmp_path / "results.jsonl").read_text()), tasks)
    assert "error" not in (tmp_path / "results.log").read_text().lower()

    log = watcher.log()
    assert "error" not in log.lower(), log
    # A reload is invisible to the CLI: its streams re-open at once. Only the restart of
    # the front proxy (connection refused for a moment) is an outage worth a line.
    assert "waiting for the gateway" not in reloads_log, reloads_log
    assert log.count("waiting for the gateway") <= 1, log
    # A reload drains the streams (GOAWAY): no attempt spent. A hard restart cuts them:
    # the tasks on the wire run again (one attempt more), none is lost or doubled.
    assert {line["attempts"] for line in before_restarts} == {1}
    assert set(attempts) <= {"1", "2"}, attempts
    gateway_log = proxied.gateway_log()
    assert gateway_log.count("closes its connection (GOAWAY)") >= 2, gateway_log[-3000:]
    assert not own_errors(gateway_log), own_errors(gateway_log)[:3]
    streams = process_streams(proxied.back.access_log())
    assert set(streams) == {w.address for w in proxied.workers}, streams
