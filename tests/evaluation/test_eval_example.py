"""The evaluation example end to end through the CLI: a real gateway and one real
inference server per model (SmolLM2 and tiny-random, subprocesses), each task routed
to the server of its model, scores in the lines and the per-model table printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
MODELS = ("smollm2-135m-instruct", "tiny-random")


def test_eval_capitals_compares_two_real_models(tmp_path):
    output = tmp_path / "eval.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(ROOT / "examples/jobs/eval_capitals.yaml"),
         "-o", str(output)],
        cwd=tmp_path, env={**os.environ, "COLUMNS": "200", "TERM": "dumb"},
        capture_output=True, text=True, timeout=380,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    by_model = defaultdict(list)
    for line in lines:
        assert line["status"] == "succeeded"
        assert line["id"] == f"{line['row_id']}@{line['model']}"
        by_model[line["model"]].append(line)
    assert set(by_model) == set(MODELS)
    rows = {line["row_id"] for line in lines}
    assert len(rows) == 12
    for model in MODELS:
        assert sorted(x["row_id"] for x in by_model[model]) == sorted(rows)
    contains = {m: mean(x["evaluation"]["scores"]["contains"] for x in by_model[m]) for m in MODELS}
    assert contains["smollm2-135m-instruct"] > contains["tiny-random"]
    assert "latency p50 ms" in done.stderr and "tiny-random" in done.stderr  # the per-model table
