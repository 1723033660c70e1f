"""--max-connection-age-s on the inference server: each Process stream is told to drain
at that age (so it ends cleanly even through a proxy that keeps a GOAWAY to itself); a
task that arrives after the notice is refused unrun (UNAVAILABLE, retryable), what was
sent before is answered, and the server itself goes on serving new streams."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.inference.config import ConfigError, ServerConfig
from tests.inference.conftest import StreamClient, channel_to, gen_task, running_server

pytestmark = pytest.mark.timeout(60)


async def test_a_stream_is_told_to_drain_at_its_age_and_refuses_what_comes_after():
    async with (
        running_server(max_connection_age_s=0.5, echo_delay_ms_per_token=20) as server,
        channel_to(server) as channel,
    ):
        ignoring = await StreamClient(channel, half_close_on_drain=False).open()
        started = time.monotonic()
        ignoring.send([gen_task("before", max_new_tokens=20)])  # still running at the notice
        while not ignoring.draining_flags:
            await ignoring.read_one()
        assert 0.4 < time.monotonic() - started < 2.0
        ignoring.send([gen_task("after")])
        results = await ignoring.wait_for(2)
        assert results["before"].WhichOneof("output") == "text"
        assert results["after"].error.code == "UNAVAILABLE" and results["after"].error.retryable
        ignoring.close()
        assert await ignoring.read_to_end() == grpc.StatusCode.OK

        # The server is not draining: health stays SERVING and a new stream works.
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        fresh = await StreamClient(channel).open()
        assert not fresh.draining_flags
        fresh.send([gen_task("new")])
        assert (await fresh.wait_for(1))["new"].WhichOneof("output") == "text"
        fresh.close()
        await asyncio.wait_for(fresh.read_to_end(), 10)


def test_connection_age_settings_are_checked():
    with pytest.raises(ConfigError, match="max_connection_age_s"):
        ServerConfig(backend="echo", max_connection_age_s=0).validate()
    with pytest.raises(ConfigError, match="max_connection_age_grace_s"):
        ServerConfig(
            backend="echo", max_connection_age_s=1, max_connection_age_grace_s=-1
        ).validate()
