"""`batchinfer run --openai-batch` end to end: a real gateway and echo servers as
subprocesses; the output and error files, and the resume of an interrupted batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "run", "--backend", "echo", *args]


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "TERM": "dumb"}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_endpoint_and_a_refused_line_through_the_cli(tmp_path):
    requests = tmp_path / "requests.jsonl"
    good = (ROOT / "examples" / "openai" / "requests.jsonl").read_text().splitlines()
    bad = [
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/audio/speech", "body": {}},
        {"custom_id": "two", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "x"}], "n": 2, "logprobs": True}},
    ]  # fmt: skip
    requests.write_text("\n".join(good + [json.dumps(b) for b in bad]) + "\n")
    output = tmp_path / "output.jsonl"
    done = subprocess.run(
        argv("--openai-batch", str(requests), "--model", "m", "-o", str(output),
             "--errors", str(tmp_path / "errors.jsonl"), "--data-dir", str(tmp_path / "d")),
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr  # two lines failed: a partial success
    assert "body field 'logprobs' is not supported and is ignored (1 line(s): 7)" in done.stderr
    out = {line["custom_id"]: line for line in lines(output)}
    assert set(out) == {"chat-1", "chat-2", "completion-1", "embedding-1", "embedding-2"}
    objects = {k: v["response"]["body"]["object"] for k, v in out.items()}
    assert objects == {
        "chat-1": "chat.completion",
        "chat-2": "chat.completion",
        "completion-1": "text_completion",
        "embedding-1": "list",
        "embedding-2": "list",
    }
    message = out["chat-1"]["response"]["body"]["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"].startswith("echo:")
    assert len(out["embedding-1"]["response"]["body"]["data"][0]["embedding"]) > 0
    assert all(v["error"] is None and v["response"]["status_code"] == 200 for v in out.values())
    errors = {line["custom_id"]: line for line in lines(tmp_path / "errors.jsonl")}
    assert set(errors) == {"bad-url", "two"}
    assert errors["bad-url"]["response"] is None
    assert errors["bad-url"]["error"]["code"] == "invalid_request"
    assert "requests.jsonl line 6 (custom_id 'bad-url')" in errors["bad-url"]["error"]["message"]
    assert "line 7 (custom_id 'two'): n=2" in errors["two"]["error"]["message"]


def test_a_bad_file_is_refused_naming_the_line(tmp_path):
    requests = tmp_path / "requests.jsonl"
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
    requests.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    done = subprocess.run(
        argv("--openai-batch", str(requests), "--model", "m", "-o", str(tmp_path / "o.jsonl")),
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    flat = " ".join(done.stderr.split())
    assert "line 2: duplicate custom_id 'a', also on line 1" in flat


def test_an_interrupted_batch_resumes_without_rerunning_finished_lines(tmp_path):
    total = 16
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        "".join(
            json.dumps(
                {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                 "body": {"prompt": f"line {i} " + "w " * 5, "max_tokens": 8}}
            ) + "\n"
            for i in range(total)
        )
    )  # fmt: skip
    output = tmp_path / "output.jsonl"
    slow = ["--worker-arg=--echo-delay-ms-per-token=60", "--worker-arg=--max-batch-size=1"]
    args = argv("--openai-batch", str(requests), "--model", "m", "-o", str(output), *slow)
    first = subprocess.Popen(
        args, cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while len(lines(output)) < 3 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)  # as Ctrl-C: the fleet stops, the store stays
    first.communicate(timeout=60)
    finished = {line["custom_id"] for line in lines(output)}
    assert 3 <= len(finished) < total, "the first run was not interrupted half-way"

    second = subprocess.run(
        args, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=200
    )
    assert second.returncode == 0, second.stderr
    summary = " ".join(second.stderr.split())
    reused = int(re.search(r"\((\d+) reused from an earlier run\)", summary).group(1))
    assert reused >= len(finished)  # every line the first run finished, none run again
    out = lines(output)
    assert sorted(line["custom_id"] for line in out) == sorted(f"r{i}" for i in range(total))
    assert (tmp_path / ".batchinfer" / "runs" / "openai-batch-requests").is_dir()
