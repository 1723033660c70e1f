"""The published service config (gateway/service_config.json, docs/api.md): it names
real unary methods, and the CLI's channel uses it, so gRPC retries UNAVAILABLE there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.channels import SERVICE_CONFIG
from gateway.client import GatewayClient, GatewayUnavailable

ROOT = Path(__file__).resolve().parents[2]


class FlakyGateway(gateway_pb2_grpc.BatchGatewayServicer):
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def GetJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        return gateway_pb2.GetJobResponse(job=gateway_pb2.Job(job_id=request.job_id))

    async def CancelJob(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "not retried: not idempotent")


async def _serve(servicer):
    server = grpc.aio.server()
    gateway_pb2_grpc.add_BatchGatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_the_config_names_unary_methods_of_the_gateway():
    config = json.loads(SERVICE_CONFIG)
    service = gateway_pb2.DESCRIPTOR.services_by_name["BatchGateway"]
    for method_config in config["methodConfig"]:
        for name in method_config["name"]:
            assert name["service"] == service.full_name
            method = service.methods_by_name[name["method"]]
            assert not method.client_streaming and not method.server_streaming
        assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert "SubmitJob" not in SERVICE_CONFIG and "CancelJob" not in SERVICE_CONFIG


def test_docs_publish_the_same_config():
    text = (ROOT / "docs" / "api.md").read_text()
    block = re.search(r"<!-- service-config:start -->\n```json\n(.*?)```", text, re.S)
    assert block, "docs/api.md has no service config block"
    assert json.loads(block.group(1)) == json.loads(SERVICE_CONFIG)


async def test_the_clients_channel_retries_unavailable_by_the_config():
    flaky = FlakyGateway(failures=2)
    server, address = await _serve(flaky)
    client = GatewayClient(address, reconnect_for_s=0)  # no retry loop of the client's own
    try:
        job = await client.get("j1")
        assert job.job_id == "j1" and flaky.calls == 3
        flaky.calls = 0
        with pytest.raises(GatewayUnavailable):  # reconnect_for_s=0: given up at once
            await client.call("CancelJob", gateway_pb2.CancelJobRequest(job_id="j1"))
        assert flaky.calls == 1
    finally:
        await client.close()
        await server.stop(None)
