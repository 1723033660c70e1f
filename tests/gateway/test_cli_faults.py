"""The CLI during faults, run as a real subprocess: a gateway that is down, comes up
late or goes away mid-job, an unknown job, a job with failed tasks, a refused job.
Each ends in one line on stderr and the exit code of the rule in `batchinfer --help`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.client import read_local_job
from gateway.server import serve
from tests.faults.harness import ROOT, free_port
from tests.gateway.conftest import job_yaml
from tests.gateway.fake_server import Script

pytestmark = pytest.mark.timeout(120)

ENV = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}  # a narrow terminal must not wrap errors
GRPC_DUMP = ("Traceback", "failed to connect to all addresses", "UNAVAILABLE", "ipv4:")


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def cli(*args: str, timeout: float = 60) -> Ran:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
        timeout=timeout,
    )
    return Ran(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


async def acli(*args: str, timeout: float = 60) -> Ran:
    """The CLI as a subprocess while this test's event loop serves an in-process gateway."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=ENV,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode(), time.monotonic() - started)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_clear_line(ran: Ran, *words: str) -> str:
    assert len(ran.errors()) == 1, ran.stderr
    for bad in GRPC_DUMP:
        assert bad not in ran.stderr, ran.stderr
    line = ran.errors()[0]
    for word in words:
        assert word in line, line
    return line


@pytest.fixture
def down() -> str:
    """A gateway address that nothing listens on."""
    return f"127.0.0.1:{free_port()}"


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ gateway down

COMMANDS = [
    ["status"],
    ["status", "j1"],
    ["results", "j1", "--timeout", "0.5"],
    ["submit", "JOB", "--timeout", "0.5"],
    ["submit", "JOB", "--watch", "--timeout", "0"],
    ["cancel", "j1"],
    ["pause", "j1"],
    ["resume", "j1"],
    ["priority", "j1", "2"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_against_a_down_gateway_says_so_in_one_line(command, down, tmp_path):
    job = write(tmp_path / "job.yaml", job_yaml(2))
    ran = cli(*[str(job) if arg == "JOB" else arg for arg in command], "-g", down)
    assert ran.code == 1, ran.stderr
    line = assert_one_clear_line(ran, down, "connection refused", "is it running?", "--gateway")
    assert "batchinfer gateway" in line
    assert ran.stdout == ""


def test_a_command_that_retries_says_so_once_and_gives_up_at_its_timeout(down, tmp_path):
    job = write(tmp_path / "job.yaml", job_yaml(2))
    ran = cli("submit", str(job), "-g", down, "--timeout", "2")
    assert ran.code == 1
    assert_one_clear_line(ran, down, "after trying for 2 s")
    waiting = [line for line in ran.stderr.splitlines() if line.startswith("waiting for")]
    assert waiting == [
        f"waiting for the gateway at {down} (connection refused); giving up after 2 s"
    ]
    assert 2 <= ran.seconds < 15


def test_results_to_a_file_against_a_down_gateway_leave_the_file_as_it_was(down, tmp_path):
    output = tmp_path / "out.jsonl"
    before = b'{"id": "t0", "status": "succeeded"}\n' * 3
    output.write_bytes(before)
    ran = cli("results", "j1", "-g", down, "-o", str(output), "--timeout", "1")
    assert ran.code == 1
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary left


# ------------------------------------------------------------- a live gateway


async def test_results_of_an_unknown_job_exit_1_at_once(fleet, tmp_path):
    await fleet.start([Script()])
    output = write(tmp_path / "out.jsonl", "kept\n")
    ran = await acli("results", "nojob", "-g", fleet.gateway.address, "-o", str(output))
    assert ran.code == 1
    assert_one_clear_line(ran, "job nojob not found", fleet.gateway.address)
    assert ran.seconds < 10  # not the 30 s spent waiting for an unreachable gateway
    assert output.read_text() == "kept\n"
    ran = await acli("status", "nojob", "-g", fleet.gateway.address)
    assert ran.code == 1
    assert_one_clear_line(ran, "job nojob not found")


async def test_results_exit_3_when_tasks_failed_and_0_when_none_did(fleet, tmp_path):
    await fleet.start([Script(failures={"p1": ("INVALID_ARGUMENT", 99)})])
    failed, _ = await fleet.run_job(job_yaml(3, name="some-fail"))
    output = write(tmp_path / "out.jsonl", "old\n")
    ran = await acli("results", failed.job_id, "-g", fleet.gateway.address, "-o", str(output))
    assert ran.code == 3, ran.stderr
    statuses = {line["id"]: line["status"] for line in lines_of(output)}
    assert statuses == {"t0": "succeeded", "t1": "failed", "t2": "succeeded"}
    assert "1 failed" in ran.stderr

    succeeded, _ = await fleet.run_job(job_yaml(1, name="all-ok"))  # p0 only
    ran = await acli("results", succeeded.job_id, "-g", fleet.gateway.address)
    assert ran.code == 0, ran.stderr
    assert [json.loads(line)["status"] for line in ran.stdout.splitlines()] == ["succeeded"]


async def test_a_job_the_gateway_refuses_exits_2_with_one_line(fleet, tmp_path):
    await fleet.start([Script()], max_job_tasks=2)
    job = write(tmp_path / "job.yaml", job_yaml(3))
    ran = await acli("submit", str(job), "-g", fleet.gateway.address)
    assert ran.code == 2
    assert_one_clear_line(ran, "3 tasks", "INVALID_ARGUMENT")


async def test_submit_waits_for_a_gateway_that_comes_up_late(fleet, tmp_path):
    port = free_port()
    job = write(tmp_path / "job.yaml", job_yaml(2))
    address = f"127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "gateway", "submit", str(job), "-g", address, "--timeout", "30"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=ENV,
    )
    assert process.stderr is not None
    # The gateway comes up once the CLI says it waits (on a loaded machine the CLI's own
    # start can take longer than any fixed sleep).
    first = await asyncio.wait_for(process.stderr.readline(), 60)
    assert f"waiting for the gateway at {address} (connection refused)" in first.decode()
    assert process.returncode is None
    await fleet.start([Script()], port=port)
    stdout, rest = await asyncio.wait_for(process.communicate(), 60)
    ran = Ran(process.returncode or 0, stdout.decode(), first.decode() + rest.decode(), 0.0)
    assert process.returncode == 0, ran.stderr
    assert f"reached the gateway at {address}" in ran.stderr
    assert fleet.client is not None
    job_id = ran.stdout.strip()
    assert (await fleet.client.get(job_id)).counts.total == 2


async def test_results_follow_a_job_across_a_gateway_restart(fleet, tmp_path):
    tasks = 60
    await fleet.start([Script(window=1, delay_s=0.1)])
    assert fleet.gateway is not None and fleet.client is not None
    address = fleet.gateway.address
    path = write(tmp_path / "job.yaml", job_yaml(tasks, name="restart"))
    job = await fleet.client.submit(read_local_job(path, {}, None))
    output = tmp_path / "out.jsonl"
    following = asyncio.ensure_future(acli("results", job.job_id, "-g", address, "-o", str(output)))
    # The CLI is running once its temporary output file exists (it is opened before the
    # first call): stopping the gateway before that could let the CLI miss the restart.
    while not list(tmp_path.glob(".out.jsonl.*.part")):
        assert not following.done(), following.result().stderr
        await asyncio.sleep(0.05)
    while (await fleet.client.get(job.job_id)).counts.succeeded < 3:
        await asyncio.sleep(0.05)
    assert not following.done()
    await fleet.gateway.stop(grace=0.1)
    await asyncio.sleep(1.0)
    config = dataclasses.replace(fleet.gateway.engine.config, port=fleet.gateway.port)
    fleet.gateway = await serve(config)  # same port, same store
    ran = await following
    assert ran.code == 0, ran.stderr
    assert sorted(line["id"] for line in lines_of(output)) == sorted(f"t{i}" for i in range(tasks))
    assert ran.stderr.count(f"waiting for the gateway at {address}") == 1, ran.stderr
    assert f"reached the gateway at {address}" in ran.stderr


# ----------------------------------------------------------------------- help


def test_worker_help_lists_the_servers_flags():
    ran = cli("worker", "--help")
    assert ran.code == 0, ran.stderr
    for flag in ("--max-batch-size", "--grace-s", "--backend", "--echo-delay-ms-per-token"):
        assert flag in ran.stdout
    assert "batchinfer worker" in ran.stdout


def test_a_bad_worker_flag_exits_2_before_a_server_starts():
    ran = cli("worker", "--no-such-flag")
    assert ran.code == 2
    assert "--no-such-flag" in ran.stderr


def test_the_exit_codes_are_in_the_help():
    text = " ".join(cli("--help").stdout.split())
    assert "Exit codes: 0" in text and "3 the job ended with failed" in text
    for command in ("run", "submit", "results"):
        assert "Exit codes: 0" in " ".join(cli(command, "--help").stdout.split()), command
