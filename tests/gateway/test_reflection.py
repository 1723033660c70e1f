"""Server reflection v1 and v1alpha on the gateway and on the inference server: each
lists the services and describes them, in both versions (grpcurl asks v1 first)."""

from __future__ import annotations

import grpc
import pytest
from batchinfer.reflection import V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2

from gateway.server import serve
from gateway.settings import GatewayConfig
from tests.inference.conftest import running_server


def _v1_types() -> tuple[type, type]:
    pool = descriptor_pool.Default()
    request = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    response = pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    return message_factory.GetMessageClass(request), message_factory.GetMessageClass(response)


async def _ask(channel: grpc.aio.Channel, service: str, requests: list[dict]) -> list:
    """Sends reflection requests (as keyword dicts) to `service`; the responses."""
    if service == V1_SERVICE_NAME:
        request_type, response_type = _v1_types()
    else:
        request_type = reflection_pb2.ServerReflectionRequest
        response_type = reflection_pb2.ServerReflectionResponse
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )

    async def messages():
        for fields in requests:
            yield request_type(**fields)

    return [response async for response in call(messages(), timeout=10)]


async def _check(target: str, service_name: str, symbol_file: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        for version in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME):
            listed, described, itself = await _ask(
                channel,
                version,
                [
                    {"list_services": ""},
                    {"file_containing_symbol": service_name},
                    {"file_containing_symbol": V1_SERVICE_NAME},
                ],
            )
            names = {s.name for s in listed.list_services_response.service}
            assert {service_name, "grpc.health.v1.Health", V1_SERVICE_NAME} <= names, version
            assert V1ALPHA_SERVICE_NAME in names
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in described.file_descriptor_response.file_descriptor_proto
            ]
            assert symbol_file in {f.name for f in files}, version
            short = service_name.rsplit(".", 1)[1]
            assert any(s.name == short for f in files for s in f.service)
            (reflection_file,) = [
                descriptor_pb2.FileDescriptorProto.FromString(raw)
                for raw in itself.file_descriptor_response.file_descriptor_proto
            ]
            assert reflection_file.package == "grpc.reflection.v1"
            method = reflection_file.service[0].method[0]
            assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_the_gateway_serves_reflection_v1_and_v1alpha(tmp_path):
    gateway = await serve(GatewayConfig(data_dir=tmp_path / "gw", render_workers=0))
    try:
        await _check(gateway.address, "batchinfer.v1.BatchGateway", "batchinfer/v1/gateway.proto")
    finally:
        await gateway.stop(grace=0.1)


@pytest.mark.timeout(60)
async def test_the_inference_server_serves_reflection_v1_and_v1alpha():
    async with running_server() as server:
        await _check(
            server.target, "batchinfer.v1.InferenceServer", "batchinfer/v1/inference.proto"
        )
