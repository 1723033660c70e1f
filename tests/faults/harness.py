"""Real processes to break: echo inference servers and a gateway on fixed ports
(so a restarted one comes back at the same address), and the real CLI
(`batchinfer submit --watch`) as the client that must survive it all."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gateway.local import Process, gateway_argv, start_process, worker_argv

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on now; the caller binds it explicitly so a restart reuses it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_job(
    folder: Path, tasks: int, max_new_tokens: int = 4, name: str = "faults", schedule: str = ""
) -> Path:
    """An echo job of `tasks` tasks (ids t0..tN-1) whose inputs travel as an uploaded file;
    `schedule` is the job's schedule mapping, e.g. "{rate_limit: {requests_per_s: 60}}"."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "inputs.jsonl").open("w") as handle:
        for i in range(tasks):
            handle.write(json.dumps({"id": f"t{i}", "text": f"w{i} x y z"}) + "\n")
    job = folder / "job.yaml"
    job.write_text(
        f"version: 1\nname: {name}\nmodel: echo\ntask: generate\n"
        "template: '{{ text }}'\n"
        f"params: {{max_new_tokens: {max_new_tokens}}}\n"
        "inputs: {file: inputs.jsonl, id: '{{ id }}'}\n"
        "retry: {max_attempts: 3, initial_backoff: 50ms, max_backoff: 500ms}\n"
        + (f"schedule: {schedule}\n" if schedule else "")
    )
    return job


@dataclass
class Worker:
    """One echo inference server pinned to a port."""

    port: int
    log_path: Path
    delay_ms: float
    extra: list[str] = field(default_factory=list)
    launcher: list[str] = field(default_factory=lambda: ["-m", "services.inference"])
    process: Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = worker_argv(
            "echo",
            "echo",
            port=self.port,
            extra=["--echo-delay-ms-per-token", str(self.delay_ms), *self.extra],
        )
        argv[1:3] = self.launcher  # e.g. a wrapper module that misbehaves on purpose
        self.process = start_process(f"worker :{self.port}", argv, self.log_path, timeout=60)

    def alive(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.signal(signum)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


@dataclass
class FaultFleet:
    """Echo servers and a gateway as real subprocesses, each restartable at its own port."""

    data_dir: Path
    delay_ms: float = 5.0
    gateway_extra: list[str] = field(default_factory=list)
    worker_extra: list[str] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    gateway: Process | None = None
    gateway_port: int = 0

    def start(self, n_workers: int, launchers: dict[int, list[str]] | None = None) -> FaultFleet:
        """Starts the servers (`launchers[i]` replaces `-m services.inference` of server i)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n_workers):
            log = self.data_dir / f"worker-{i}.log"
            worker = Worker(free_port(), log, self.delay_ms, list(self.worker_extra))
            if launchers and i in launchers:
                worker.launcher = launchers[i]
            worker.start()
            self.workers.append(worker)
        self.gateway_port = free_port()
        self.start_gateway()
        return self

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def start_gateway(self) -> None:
        argv = gateway_argv(
            [w.address for w in self.workers],
            self.data_dir / "gateway",
            port=self.gateway_port,
            extra=["--log-level", "INFO", *self.gateway_extra],
        )
        self.gateway = start_process("gateway", argv, self.data_dir / "gateway.log", timeout=60)

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()

    def stop(self) -> None:
        for worker in self.workers:
            if worker.alive():
                worker.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                assert worker.process is not None
                worker.process.stop(timeout=15)
        if self.gateway is not None:
            self.gateway.stop(timeout=15)


@dataclass
class Watcher:
    """`batchinfer submit JOB --watch -o OUT` as a subprocess: the client that must reconnect."""

    popen: subprocess.Popen[bytes]
    output: Path
    log_path: Path

    @classmethod
    def submit(cls, job: Path, gateway: str, output: Path) -> Watcher:
        log_path = output.with_suffix(".client.log")
        argv = [sys.executable, "-m", "gateway", "submit", str(job)]
        argv += ["--gateway", gateway, "--watch", "-o", str(output)]
        log = log_path.open("wb")
        env = {**os.environ, "COLUMNS": "120", "TERM": "dumb"}
        popen = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT, env=env)
        return cls(popen, output, log_path)

    def job_id(self, timeout: float = 60.0) -> str:
        """The id the client printed first (`submit` prints it before it follows the job)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self.log_path.read_text(errors="replace").split("\n", 1)[0].strip()
            if re.fullmatch(r"[0-9a-f]{16}", first):
                return first
            time.sleep(0.2)
        raise AssertionError(f"the client printed no job id\n{self.log()}")

    def lines(self) -> list[dict]:
        if not self.output.exists():
            return []
        text = self.output.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def wait_for_results(self, count: int, timeout: float = 60.0) -> None:
        """Blocks until the results file holds `count` lines (progress, not timing)."""
        deadline = time.monotonic() + timeout
        while len(self.lines()) < count:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.lines())} results yet\n{self.log()}")
            time.sleep(0.1)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"the client did not finish\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def assert_each_task_once(lines: list[dict], tasks: int) -> Counter[str]:
    """Every task id t0..tN-1 exactly once, all succeeded; returns the attempts histogram."""
    ids = Counter(line["id"] for line in lines)
    missing = {f"t{i}" for i in range(tasks)} - set(ids)
    duplicated = {task_id: n for task_id, n in ids.items() if n > 1}
    assert not missing, f"{len(missing)} tasks missing, e.g. {sorted(missing)[:5]}"
    assert not duplicated, f"{len(duplicated)} tasks duplicated, e.g. {list(duplicated)[:5]}"
    assert len(ids) == tasks
    failed = [line for line in lines if line["status"] != "succeeded"]
    assert not failed, f"{len(failed)} tasks not succeeded, e.g. {failed[:3]}"
    return Counter(str(line["attempts"]) for line in lines)
