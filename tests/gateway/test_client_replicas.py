"""The client given several gateway replicas (gateway/channels.py, gateway/client.py):
it talks to one, moves to the next when that one cannot be reached, and its streams go
on from their cursor there; a name that resolves to several addresses is spread over
them by round_robin. Real gRPC servers on 127.0.0.1:0 with scripted servicers; the real
replicas on PostgreSQL are in tests/faults/test_replica_clients.py."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc, task_pb2

from gateway.channels import gateway_targets
from gateway.client import GatewayClient, GatewayUnavailable
from tests.faults.harness import free_port
from tests.gateway.test_cli_faults import acli
from tests.gateway.test_service_config import _serve

SEQS = [3, 5, 6, 9, 12, 13, 20, 21]  # a job's seqs have gaps (docs/api.md, "Cursors")


def _result(seq: int) -> gateway_pb2.JobResult:
    return gateway_pb2.JobResult(
        seq=seq,
        task_id=f"t{seq}",
        state=gateway_pb2.TASK_STATE_SUCCEEDED,
        result=task_pb2.TaskResult(task_id=f"t{seq}", text=task_pb2.TextOutput(text="ok")),
        attempts=1,
    )


class Replica(gateway_pb2_grpc.BatchGatewayServicer):
    """One replica of a job's store: `dies_after` results into a stream, the stream breaks
    as a killed replica's would (UNAVAILABLE)."""

    def __init__(self, dies_after: int | None = None) -> None:
        self.dies_after = dies_after
        self.cursors: list[int] = []  # after_seq of every StreamResults opened here
        self.calls = 0

    async def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        return gateway_pb2.GetJobResponse(job=gateway_pb2.Job(job_id=request.job_id))

    async def WatchJob(self, request, context):  # type: ignore[no-untyped-def]
        yield gateway_pb2.WatchJobResponse(job=gateway_pb2.Job(job_id=request.job_id))
        if self.dies_after is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
        done = gateway_pb2.Job(job_id=request.job_id, state=gateway_pb2.JOB_STATE_COMPLETED)
        yield gateway_pb2.WatchJobResponse(job=done)

    async def StreamResults(self, request, context):  # type: ignore[no-untyped-def]
        self.cursors.append(request.after_seq)
        for sent, seq in enumerate(s for s in SEQS if s > request.after_seq):
            if sent == self.dies_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
            yield gateway_pb2.StreamResultsResponse(results=[_result(seq)])


def test_addresses_come_from_commas_and_repeats_each_once_in_order():
    assert gateway_targets(["a:1,b:2", " c:3 ", "a:1", "b:2,,d:4"]) == ("a:1", "b:2", "c:3", "d:4")
    # A resolver's target is one channel: its commas are its own.
    assert gateway_targets(["ipv4:10.0.0.1:5,10.0.0.2:5", "dns:///gw:50051"]) == (
        "ipv4:10.0.0.1:5,10.0.0.2:5",
        "dns:///gw:50051",
    )
    with pytest.raises(ValueError, match="no gateway address"):
        gateway_targets([" , "])


async def test_results_and_watch_go_on_at_the_next_replica_from_their_cursor():
    dying, live = Replica(dies_after=3), Replica()
    (server_a, a), (server_b, b) = await _serve(dying), await _serve(live)
    moves: list[tuple[str, str, str]] = []
    client = GatewayClient([a, b], reconnect_for_s=5, on_move=lambda *m: moves.append(m))
    out = io.StringIO()
    try:
        last = await client.follow_results("j1", out)
        snapshots = [job.state async for job in client.watch("j1")]
    finally:
        await client.close()
        await server_a.stop(None)
        await server_b.stop(None)
    ids = [json.loads(line)["id"] for line in out.getvalue().splitlines()]
    assert ids == [f"t{seq}" for seq in SEQS]  # no gap, no repeat
    assert last == SEQS[-1]
    assert dying.cursors == [0] and live.cursors == [SEQS[2]]  # from the last seq received
    assert snapshots[-1] == gateway_pb2.JOB_STATE_COMPLETED
    assert client.address == b
    assert moves == [(a, b, "connection lost")]


async def test_a_call_moves_past_dead_replicas_at_once_even_without_retries():
    live = Replica()
    server, address = await _serve(live)
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    client = GatewayClient([*dead, address], reconnect_for_s=0)
    try:
        assert (await client.get("j1")).job_id == "j1"
        assert client.address == address and live.calls == 1
        await server.stop(None)
        with pytest.raises(GatewayUnavailable) as gone:  # every address tried once
            await client.get("j1")
        assert gone.value.address == ", ".join([*dead, address])
    finally:
        await client.close()


async def test_a_name_of_several_addresses_is_spread_by_round_robin():
    first, second = Replica(), Replica()
    (server_1, one), (server_2, two) = await _serve(first), await _serve(second)
    target = f"ipv4:{one},{two}"  # what a DNS name with two A records resolves to
    client = GatewayClient(target, reconnect_for_s=5)
    try:
        for _ in range(200):  # pick_first would send every call to the first address
            await client.get("j1")
            if first.calls and second.calls:
                break
        assert first.calls and second.calls, (first.calls, second.calls)
        await server_1.stop(None)
        calls = second.calls
        for _ in range(5):
            assert (await client.get("j1")).job_id == "j1"
        assert second.calls == calls + 5
    finally:
        await client.close()
        await server_2.stop(None)


async def test_the_cli_status_answers_from_the_replica_that_is_up():
    server, address = await _serve(Replica())
    try:
        dead = f"127.0.0.1:{free_port()}"
        ran = await acli("status", "j1", "-g", dead, "--gateway", address)
        assert ran.code == 0, ran.stderr
        assert "j1" in ran.stdout
        ran = await acli("status", "j1", "-g", f"{dead},{dead}")
        assert ran.code == 1
        assert ran.errors() == [
            f"error: cannot reach the gateway at {dead} (connection refused); is it running? "
            "start it with `batchinfer gateway ...` or pass --gateway HOST:PORT"
        ]
    finally:
        await server.stop(None)
