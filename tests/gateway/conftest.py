from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from gateway.client import GatewayClient
from gateway.server import serve
from gateway.settings import GatewayConfig
from tests.gateway.fake_server import Script, start_fake


def job_yaml(rows: int, name: str = "t", extra: str = "", model: str = "m") -> str:
    items = ", ".join(f"{{n: {i}}}" for i in range(rows))
    return (
        f"version: 1\nname: {name}\nmodel: {model}\ntask: generate\ntemplate: 'p{{{{ n }}}}'\n"
        f"params: {{max_new_tokens: 4}}\ninputs:\n  rows: [{items}]\n  id: 't{{{{ n }}}}'\n"
        f"retry: {{max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}}\n{extra}"
    )


class Fleet:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.fakes = []
        self.servers = []
        self.gateway = None
        self.client: GatewayClient | None = None

    async def start(self, scripts: list[Script], **config) -> Fleet:
        addresses = []
        for script in scripts:
            server, fake, address = await start_fake(script)
            self.servers.append(server)
            self.fakes.append(fake)
            addresses.append(address)
        config.setdefault("data_dir", self.tmp_path / "gw")
        self.gateway = await serve(GatewayConfig(workers=tuple(addresses), **config))
        self.client = GatewayClient(self.gateway.address)
        return self

    async def run_job(self, text: str, path: Path | None = None) -> tuple[object, list[dict]]:
        from gateway.client import read_local_job

        path = path or self.tmp_path / "job.yaml"
        path.write_text(text)
        local = read_local_job(path, {}, None)
        job = await self.client.submit(local)
        out = io.StringIO()
        await self.client.follow_results(job.job_id, out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        return await self.client.get(job.job_id), lines

    async def stop(self) -> None:
        if self.client:
            await self.client.close()
        if self.gateway:
            await self.gateway.stop(grace=0.1)
        for server in self.servers:
            await server.stop(None)


@pytest.fixture
async def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    await fleet.stop()
