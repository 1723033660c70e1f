"""A local fleet for `batchinfer run`, tests and benchmarks: inference servers
and a gateway as real subprocesses on 127.0.0.1, started with port 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class StartError(RuntimeError):
    """A process of the fleet did not come up; the message carries its last output."""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[str]
    address: str
    log_path: Path | None = None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


def start_process(
    name: str,
    argv: list[str],
    log_path: Path | None,
    timeout: float = 180.0,
    env: dict[str, str] | None = None,
) -> Process:
    """Starts `argv` and waits for its `LISTENING host:port` line on stdout."""
    log_file: IO[str] | None = log_path.open("a") if log_path else None
    popen = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=log_file if log_file is not None else subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    assert popen.stdout is not None
    found: list[str] = []
    ready = threading.Event()

    def read_stdout() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            if not found and line.startswith("LISTENING "):
                found.append(line.split()[1])
                ready.set()
        ready.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            popen.kill()
            raise StartError(f"{name} did not start within {timeout:.0f} s{_tail(log_path)}")
    if not found:
        popen.wait(5)
        raise StartError(
            f"{name} exited with code {popen.returncode} before listening{_tail(log_path)}"
        )
    return Process(name=name, popen=popen, address=found[0], log_path=log_path)


def _tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None or not log_path.exists():
        return ""
    text = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n" + "\n".join(text)


def worker_argv(
    backend: str, model: str, port: int = 0, extra: list[str] | None = None
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "services.inference",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend",
        backend,
        "--model",
        model,
        *(extra or []),
    ]


def gateway_argv(
    workers: list[str], data_dir: Path, port: int = 0, extra: list[str] | None = None
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    for address in workers:
        argv += ["--worker", address]
    return argv + (extra or [])


@dataclass
class LocalFleet:
    """N inference servers and one gateway, stopped together."""

    data_dir: Path
    workers: list[Process] = field(default_factory=list)
    gateway: Process | None = None

    def start_workers(
        self, n: int, backend: str, model: str, extra: list[str] | None = None
    ) -> None:
        for i in range(n):
            log = self.data_dir / f"worker-{len(self.workers)}.log"
            self.workers.append(
                start_process(
                    f"inference server {i}", worker_argv(backend, model, extra=extra), log
                )
            )

    def start_gateway(self, port: int = 0, extra: list[str] | None = None) -> Process:
        log = self.data_dir / "gateway.log"
        argv = gateway_argv(
            [w.address for w in self.workers], self.data_dir, port=port, extra=extra
        )
        self.gateway = start_process("gateway", argv, log, timeout=60)
        return self.gateway

    def stop(self) -> None:
        for process in [self.gateway, *self.workers]:
            if process is not None:
                process.stop()
