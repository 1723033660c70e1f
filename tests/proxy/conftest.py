"""A fleet behind nginx: echo servers, nginx between the gateway and them (one listener
per server, so each Process stream runs through the proxy), the gateway, and a second
nginx in front of the gateway that every client call goes through."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.local import Process, gateway_argv, start_process
from tests.faults.harness import Worker, free_port
from tests.proxy.nginx import Nginx, Route, nginx_binary


def own_errors(log: str) -> list[str]:
    """ERROR lines of a process's JSON log, but for OpenTelemetry's gRPC instrumentation
    failing to detach its context when a server stream is cut under it (its bug, harmless)."""
    return [
        line
        for line in log.splitlines()
        if '"level": "ERROR"' in line and '"logger": "opentelemetry.context"' not in line
    ]


@dataclass
class ProxiedFleet:
    folder: Path
    delay_ms: float = 20.0
    worker_extra: list[str] = field(default_factory=lambda: ["--max-batch-size", "8"])
    gateway_extra: list[str] = field(default_factory=list)
    shutdown_timeout_s: float = 10.0
    workers: list[Worker] = field(default_factory=list)
    back: Nginx | None = None  # gateway -> inference servers
    front: Nginx | None = None  # clients -> gateway
    gateway: Process | None = None

    def start(self, n_workers: int = 2) -> ProxiedFleet:
        self.folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_workers):
            worker = Worker(free_port(), self.folder / f"worker-{i}.log", self.delay_ms)
            worker.extra = list(self.worker_extra)
            worker.start()
            self.workers.append(worker)
        routes = [Route(free_port(), w.address) for w in self.workers]
        self.back = Nginx(self.folder / "nginx-back", routes, self.shutdown_timeout_s).start()
        port = free_port()
        argv = gateway_argv(
            [f"127.0.0.1:{r.listen}" for r in routes],
            self.folder / "gateway",
            port=port,
            extra=["--log-level", "INFO", *self.gateway_extra],
        )
        self.gateway = start_process("gateway", argv, self.folder / "gateway.log", timeout=60)
        front = [Route(free_port(), f"127.0.0.1:{port}")]
        self.front = Nginx(self.folder / "nginx-front", front, self.shutdown_timeout_s).start()
        return self

    @property
    def address(self) -> str:
        """The gateway as clients see it: through the front proxy."""
        assert self.front is not None
        return f"127.0.0.1:{self.front.routes[0].listen}"

    def gateway_log(self) -> str:
        return (self.folder / "gateway.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop(timeout=15)
        for worker in self.workers:
            if worker.alive():
                assert worker.process is not None
                worker.process.stop(timeout=15)
        for proxy in (self.front, self.back):
            if proxy is not None:
                proxy.stop()


@pytest.fixture
def proxied(tmp_path) -> Iterator[ProxiedFleet]:
    nginx_binary()  # fails in CI, skips elsewhere, when nginx is missing
    fleet = ProxiedFleet(tmp_path / "fleet")
    yield fleet
    fleet.stop()
