"""A client in another language: tests/polyglot/client.js (Node.js, @grpc/grpc-js and
@grpc/proto-loader, from protos/ as they are) against a real gateway and echo server.
It validates and submits a job with an extended file and an uploaded input file, follows
StreamResults to the end, and decodes a BadRequest and JobFileProblems from
grpc-status-details-bin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.local import LocalFleet

HERE = Path(__file__).resolve().parent
HINT = "`make install` runs tests/setup_tools.sh (npm ci in tests/polyglot)"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def node() -> str:
    found = shutil.which("node")
    problem = None
    if found is None:
        problem = "Node.js (node) is not installed"
    elif not (HERE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        problem = f"the Node.js client's packages are not installed: {HINT}"
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    assert found is not None
    return found


def write_jobs(folder: Path, rows: int) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "common").mkdir()
    (folder / "common" / "base.yaml").write_text(
        "model: echo\ntask: generate\nparams: {max_new_tokens: 3}\n"
        "retry: {max_attempts: 3, initial_backoff: 50ms}\n"
    )
    inputs = folder / "inputs.jsonl"
    inputs.write_text(
        "".join(json.dumps({"id": f"n{i}", "text": f"row {i} text"}) + "\n" for i in range(rows))
    )
    job = folder / "job.yaml"
    job.write_text(
        "version: 1\nname: polyglot\nextends: common/base.yaml\n"
        "template: '{{ text }}'\ninputs: {file: inputs.jsonl, id: '{{ id }}'}\n"
    )
    bad = folder / "bad.yaml"
    bad.write_text(
        "version: 1\nname: bad\nextends: common/base.yaml\ntemplate: '{{ n }}'\n"
        "params: {max_new_tokens: -1}\ninputs: {rows: [{n: 1}], id: 'b{{ n }}'}\n"
    )
    return job, inputs, bad


def test_a_node_client_submits_follows_results_and_decodes_rich_errors(tmp_path):
    binary = node()
    rows = 300
    job, inputs, bad = write_jobs(tmp_path / "jobs", rows)
    fleet = LocalFleet(tmp_path / "fleet")
    (tmp_path / "fleet").mkdir()
    try:
        fleet.start_workers(1, "echo", "echo", extra=["--echo-delay-ms-per-token", "2"])
        gateway = fleet.start_gateway()
        argv = [binary, str(HERE / "client.js"), "--gateway", gateway.address]
        argv += ["--job", str(job), "--input", str(inputs), "--bad", str(bad)]
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=HERE)
    finally:
        fleet.stop()
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)

    assert report["validated"] == {"task_count": rows, "first": ["n0", "n1"]}
    assert report["same_job_again"]  # the same idempotency key: the same job
    results = report["results"]
    assert sorted(r["id"] for r in results) == sorted(f"n{i}" for i in range(rows))
    assert all(r["state"] == "TASK_STATE_SUCCEEDED" and r["text"] for r in results)
    seqs = [int(r["seq"]) for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == rows
    assert report["state"] == "JOB_STATE_COMPLETED"
    assert report["counts"] == {"total": rows, "succeeded": rows}
    assert report["not_found"]

    bad_error = report["bad"]
    assert bad_error["code"] == 3  # INVALID_ARGUMENT
    kinds = {d["type"]: d["value"] for d in bad_error["details"]}
    violations = kinds["google.rpc.BadRequest"]["field_violations"]
    assert [v["field"] for v in violations] == ["params.max_new_tokens"]
    (problem,) = kinds["batchinfer.v1.JobFileProblems"]["problems"]
    assert (problem["file"], problem["line"], problem["column"]) == ("bad.yaml", 5, 10)
    assert problem["field"] == "params.max_new_tokens"
