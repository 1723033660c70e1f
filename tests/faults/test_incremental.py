"""Idempotent and incremental submission (issue 7, item 7).

A job file submitted again under the same name runs only the tasks whose
(id, hash of the rendered input) is new, and reuses the results of the others;
the new job's results file still holds every task exactly once. The same
idempotency key returns the same job."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from batchinfer.v1 import gateway_pb2

from gateway.client import read_local_job
from tests.faults.harness import ROOT, FaultFleet, Watcher, write_job
from tests.gateway.conftest import Fleet
from tests.gateway.fake_server import Script

pytestmark = pytest.mark.timeout(120)

TASKS = 20
CHANGED = ("t3", "t11")
ADDED = ("t20", "t21", "t22")


def edit_inputs(job: Path) -> dict[str, str]:
    """Changes the text of CHANGED rows and appends ADDED rows; returns id -> text."""
    inputs = job.parent / "inputs.jsonl"
    rows = [json.loads(line) for line in inputs.read_text().splitlines()]
    for row in rows:
        if row["id"] in CHANGED:
            row["text"] = f"changed {row['id']} a b"
    rows += [{"id": task_id, "text": f"new {task_id} c d"} for task_id in ADDED]
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {row["id"]: row["text"] for row in rows}


def by_id(lines: list[dict]) -> dict[str, dict]:
    counts = Counter(line["id"] for line in lines)
    duplicated = [task_id for task_id, n in counts.items() if n > 1]
    assert not duplicated, f"tasks reported more than once: {duplicated}"
    return {line["id"]: line for line in lines}


@pytest.fixture
async def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    yield fleet
    await fleet.stop()


async def run(fleet: Fleet, job: Path, key: str = "") -> tuple[gateway_pb2.Job, list[dict]]:
    assert fleet.client is not None
    submitted = await fleet.client.submit(read_local_job(job, {}, None), idempotency_key=key)
    out = io.StringIO()
    await fleet.client.follow_results(submitted.job_id, out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return await fleet.client.get(submitted.job_id), lines


async def test_a_resubmitted_job_runs_only_new_and_changed_tasks(fleet, tmp_path):
    await fleet.start([Script(window=8)])
    fake = fleet.fakes[0]
    job = write_job(tmp_path / "job", TASKS, name="incremental")
    first, first_lines = await run(fleet, job)
    assert first.counts.succeeded == TASKS and first.counts.reused == 0
    assert sum(fake.received.values()) == TASKS
    before = Counter(fake.received)

    texts = edit_inputs(job)
    second, second_lines = await run(fleet, job)

    assert second.job_id != first.job_id
    lines = by_id(second_lines)
    assert set(lines) == set(texts)  # every task of the new file, once
    assert all(line["status"] == "succeeded" for line in lines.values())
    assert second.counts.total == len(texts)
    assert second.counts.reused == TASKS - len(CHANGED)
    # The servers saw only the changed and the new prompts, each once.
    ran = fake.received - before
    assert ran == Counter({texts[task_id]: 1 for task_id in (*CHANGED, *ADDED)})
    old = by_id(first_lines)
    for task_id, line in lines.items():
        assert line["output"]["text"] == f"ok:{texts[task_id]}"
        if task_id not in CHANGED and task_id not in ADDED:
            # the earlier result, as it was (finished_at: when this job recorded it)
            assert {**line, "finished_at": ""} == {**old[task_id], "finished_at": ""}


async def test_an_unchanged_resubmission_runs_nothing(fleet, tmp_path):
    await fleet.start([Script(window=8)])
    job = write_job(tmp_path / "job", TASKS, name="unchanged")
    await run(fleet, job)
    received = sum(fleet.fakes[0].received.values())
    again, lines = await run(fleet, job)
    assert again.state == gateway_pb2.JOB_STATE_COMPLETED
    assert again.counts.reused == TASKS and len(by_id(lines)) == TASKS
    assert sum(fleet.fakes[0].received.values()) == received


async def test_another_job_name_reuses_nothing(fleet, tmp_path):
    await fleet.start([Script(window=8)])
    await run(fleet, write_job(tmp_path / "a", TASKS, name="first-name"))
    other, lines = await run(fleet, write_job(tmp_path / "b", TASKS, name="second-name"))
    assert other.counts.reused == 0 and len(by_id(lines)) == TASKS
    assert sum(fleet.fakes[0].received.values()) == 2 * TASKS


async def test_the_same_idempotency_key_returns_the_same_job(fleet, tmp_path):
    await fleet.start([Script(window=8)])
    job = write_job(tmp_path / "job", TASKS, name="keyed")
    first, _ = await run(fleet, job, key="key-1")
    edit_inputs(job)  # even a changed file: the key names the job already made
    again, lines = await run(fleet, job, key="key-1")
    assert again.job_id == first.job_id
    assert len(by_id(lines)) == TASKS
    assert sum(fleet.fakes[0].received.values()) == TASKS


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    argv = [sys.executable, "-m", "gateway", *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)


@pytest.mark.slow
def test_submit_watch_twice_through_the_cli(tmp_path):
    fleet = FaultFleet(tmp_path / "fleet", delay_ms=0).start(1)
    try:
        job = write_job(tmp_path / "job", TASKS, name="cli-incremental")
        first = Watcher.submit(job, fleet.gateway_address, tmp_path / "first.jsonl")
        assert first.wait() == 0, first.log()
        texts = edit_inputs(job)
        second = Watcher.submit(job, fleet.gateway_address, tmp_path / "second.jsonl")
        assert second.wait() == 0, second.log()
        summary = " ".join(second.log().split())  # rich wraps the summary line
        assert f"({TASKS - len(CHANGED)} reused from an earlier run)" in summary
        lines = by_id(second.lines())
        assert set(lines) == set(texts)
        for task_id, line in lines.items():
            # The echo model answers the first words of the prompt it was given.
            assert line["output"]["text"].split()[1] == texts[task_id].split()[0]

        keyed = [cli("submit", str(job), "-g", fleet.gateway_address, "--idempotency-key", "k")]
        keyed.append(cli("submit", str(job), "-g", fleet.gateway_address, "--idempotency-key", "k"))
        assert all(p.returncode == 0 for p in keyed), [p.stderr for p in keyed]
        assert keyed[0].stdout.strip() == keyed[1].stdout.strip() != ""
    finally:
        fleet.stop()
