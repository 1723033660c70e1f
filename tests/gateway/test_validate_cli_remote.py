"""`batchinfer validate JOB --gateway ADDR`: the gateway's dry run from the CLI, with
what only the gateway knows (registered templates, its limits)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import grpc
import pytest
from batchinfer.v1 import gateway_pb2, gateway_pb2_grpc

from gateway.local import gateway_argv, start_process
from tests.faults.harness import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", "validate", *args]
    env = {**os.environ, "COLUMNS": "150", "TERM": "dumb"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


async def register(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.BatchGatewayStub(channel)
        body = "model: m\ntask: generate\nparams: {max_new_tokens: 5}\n"
        request = gateway_pb2.RegisterTemplateRequest(name="base", version="1", body=body)
        await stub.RegisterTemplate(request, timeout=10)


def test_validate_against_a_gateway(tmp_path):
    argv = gateway_argv([], tmp_path / "gw", extra=["--max-job-tasks", "50"])
    gateway = start_process("gateway", argv, tmp_path / "gateway.log", timeout=60)
    try:
        address = gateway.address
        asyncio.run(register(address))
        (tmp_path / "rows.jsonl").write_text(
            "".join(json.dumps({"id": f"r{i}", "q": f"question {i}"}) + "\n" for i in range(12))
        )
        good = tmp_path / "good.yaml"
        good.write_text(
            "version: 1\nname: remote\nextends: base@1\ntemplate: 'Q: {{ q }}'\n"
            "inputs: {file: rows.jsonl, id: '{{ id }}'}\n"
        )
        ran = validate(str(good), "--gateway", address, "--json", "--show", "2")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        report = json.loads(ran.stdout)
        assert report["ok"] and report["tasks"] == 12 and report["model"] == "m"
        assert [t["id"] for t in report["shown"]] == ["r0", "r1"]
        assert report["shown"][0]["prompt"] == "Q: question 0"
        assert report["max_new_tokens"] == 12 * 5

        local = validate(str(good), "--json")  # the registered template is the gateway's
        assert local.returncode == 2 and "need a gateway" in local.stdout

        bad = tmp_path / "bad.yaml"
        bad.write_text(good.read_text() + "params: {temperature: hot}\n")
        ran = validate(str(bad), "--gateway", address, "--json")
        assert ran.returncode == 2, ran.stdout + ran.stderr
        (problem,) = json.loads(ran.stdout)["problems"]
        assert (problem["file"], problem["line"], problem["column"]) == ("bad.yaml", 6, 10)
        assert problem["field"] == "params.temperature"

        many = tmp_path / "many.yaml"
        many.write_text(
            "version: 1\nname: many\nextends: base@1\ntemplate: '{{ n }}'\n"
            f"inputs: {{rows: [{', '.join(f'{{n: {i}}}' for i in range(60))}], id: 'n{{{{ n }}}}'}}\n"
        )
        ran = validate(str(many), "--gateway", address)
        assert ran.returncode == 2 and "at most 50" in ran.stdout, ran.stdout

        text = validate(str(good), "--gateway", address)
        assert text.returncode == 0 and "12 generate tasks on m" in text.stdout, text.stdout
    finally:
        gateway.stop(15)
    down = validate(str(good), "--gateway", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the gateway"), down.stderr
    assert "Traceback" not in down.stderr
