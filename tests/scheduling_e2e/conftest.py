"""An echo fleet for scheduling tests: real echo inference servers (services.inference,
backend echo) and a real gateway, each a grpc.aio server on 127.0.0.1:0 in this process,
driven through the public API. A credit window of a few tasks and a per-token delay make
the servers the bottleneck, so the scheduler's choices decide the order of results."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from batchinfer.v1 import gateway_pb2

from gateway.client import GatewayClient, read_local_job
from gateway.server import RunningGateway, serve
from gateway.settings import GatewayConfig
from services.inference.config import ServerConfig
from services.inference.server import RunningServer
from services.inference.server import serve as serve_inference
from tests.gateway.fake_server import Script, start_fake

POLL_S = 0.05
WAIT_S = 60.0  # bound of every wait loop: a hang fails the test instead of blocking it


def job_text(
    name: str,
    rows: int,
    *,
    tenant: str = "default",
    priority: int = 5,
    max_new_tokens: int = 2,
    model: str = "echo-model",
    schedule: str = "",
    extra: str = "",
) -> str:
    """A generate job of `rows` one-word prompts (`w<n>`), ids `<name>-<n>`; `schedule`
    adds keys to the schedule mapping (", deadline: 1s"), `extra` adds top-level lines."""
    return (
        f"version: 1\nname: {name}\nmodel: {model}\ntask: generate\n"
        f"template: 'w{{{{ n }}}}'\nparams: {{max_new_tokens: {max_new_tokens}}}\n"
        f"inputs:\n  matrix: {{n: {list(range(rows))}}}\n  id: '{name}-{{{{ n }}}}'\n"
        f"schedule: {{tenant: {tenant}, priority: {priority}{schedule}}}\n"
        f"retry: {{max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}}\n{extra}"
    )


class EchoFleet:
    """Echo servers (and optionally scripted fakes) behind one in-process gateway."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.echo: list[RunningServer] = []
        self.fakes: list[Any] = []
        self.gateway: RunningGateway | None = None
        self.client: GatewayClient | None = None
        self._jobs = 0

    async def start(
        self,
        servers: int = 1,
        *,
        delay_ms: float = 10.0,
        window: int = 4,
        batch: int = 4,
        fakes: tuple[Script, ...] = (),
        **gateway: Any,
    ) -> EchoFleet:
        addresses = []
        for _ in range(servers):
            config = ServerConfig(
                backend="echo",
                port=0,
                echo_delay_ms_per_token=delay_ms,
                max_queued_tasks=window,
                max_batch_size=batch,
                max_wait_ms=1.0,
                grace_s=0.0,
            )
            server = await serve_inference(config)
            await server.wait_ready(30)
            self.echo.append(server)
            addresses.append(server.target)
        for script in fakes:
            server, _, address = await start_fake(script)
            self.fakes.append(server)
            addresses.append(address)
        gateway.setdefault("data_dir", self.tmp_path / "gw")
        self.gateway = await serve(GatewayConfig(workers=tuple(addresses), **gateway))
        self.client = GatewayClient(self.gateway.address)
        return self

    @property
    def stub(self) -> Any:
        assert self.client is not None
        return self.client.stub

    async def submit(self, text: str) -> gateway_pb2.Job:
        assert self.client is not None
        self._jobs += 1
        path = self.tmp_path / f"job{self._jobs}.yaml"
        path.write_text(text)
        return await self.client.submit(read_local_job(path, {}, None))

    async def get(self, job_id: str) -> gateway_pb2.Job:
        assert self.client is not None
        return await self.client.get(job_id)

    async def wait_for(
        self, job_id: str, check: Callable[[gateway_pb2.Job], bool], what: str
    ) -> gateway_pb2.Job:
        """Polls GetJob until `check` holds; fails naming `what` after WAIT_S."""
        job = await self.get(job_id)
        for _ in range(int(WAIT_S / POLL_S)):
            if check(job):
                return job
            await asyncio.sleep(POLL_S)
            job = await self.get(job_id)
        raise AssertionError(f"job {job_id} never got {what}; last seen: {job}")

    async def wait_done(self, job_id: str) -> gateway_pb2.Job:
        return await self.wait_for(
            job_id, lambda j: j.state >= gateway_pb2.JOB_STATE_COMPLETED, "to a terminal state"
        )

    async def results(self, job_id: str) -> list[dict[str, Any]]:
        """Every result line of the job, in completion order, following it to its end."""
        assert self.client is not None
        out = io.StringIO()
        await asyncio.wait_for(self.client.follow_results(job_id, out), WAIT_S)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.gateway is not None:
            await self.gateway.stop(grace=0.1)
        for server in self.echo:
            await server.stop(0)
        for server in self.fakes:
            await server.stop(None)


@pytest.fixture
async def echo_fleet(tmp_path):
    fleet = EchoFleet(tmp_path)
    yield fleet
    await fleet.stop()
