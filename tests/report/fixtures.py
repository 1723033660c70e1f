"""Result lines of small two-model evaluations, in the shape of gateway/convert.py's
result_line with the evaluation fields (model, finished_at, row_id, evaluation), and the
figures a person computes from them by hand (in the comments and in EXPECTED)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def at(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def line(
    row: str,
    model: str,
    *,
    output: str = "",
    reference: str = "",
    scores: dict[str, float] | None = None,
    queue: float = 0.0,
    compute: float = 0.0,
    finished: float = 0.0,
    status: str = "succeeded",
    label: str | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"id": f"{row}@{model}", "row_id": row, "model": model}
    result["status"] = status
    if status == "succeeded":
        out = {"label": label, "probabilities": {}} if label is not None else {"text": output}
        result["output"] = out
        result["usage"] = {"prompt_tokens": 10, "completion_tokens": 5}
    else:
        result["error"] = {"code": "INVALID_ARGUMENT", "message": "bad"}
        result["usage"] = {"prompt_tokens": 0, "completion_tokens": 0}
    result |= {"attempts": 1, "requeues": 0}
    result["timings_ms"] = {"queue": queue, "compute": compute}
    result["finished_at"] = at(finished)
    if scores is not None:
        result["evaluation"] = {"reference": reference, "input": f"Q {row}?", "scores": scores}
    return result


def text_eval() -> list[dict[str, Any]]:
    """smol: 3 succeeded (latency 100, 200, 300 ms) and a failure, over 4 s; tiny: 4
    succeeded (50, 150, 250, 1050 ms) over 8 s. Every line generates 5 tokens (of 15), a failed 0."""
    return [
        line("r1", "smol", output="Paris", reference="Paris", scores={"exact_match": 1.0, "rouge_l": 1.0}, queue=10, compute=90, finished=0),
        line("r1", "tiny", output="zzz", reference="Paris", scores={"exact_match": 0.0, "rouge_l": 0.2}, queue=5, compute=45, finished=0.5),
        line("r2", "smol", output="Rome", reference="Rome", scores={"exact_match": 1.0, "rouge_l": 1.0}, queue=20, compute=180, finished=1),
        line("r2", "tiny", output="qq", reference="Rome", scores={"exact_match": 0.0, "rouge_l": 0.0}, queue=15, compute=135, finished=1.5),
        line("r3", "smol", output="Madrid or so", reference="Lisbon", scores={"exact_match": 0.0, "rouge_l": 0.5}, queue=30, compute=270, finished=2),
        line("r3", "tiny", output="Lisbon", reference="Lisbon", scores={"exact_match": 1.0, "rouge_l": 1.0}, queue=25, compute=225, finished=2.5),
        line("r4", "smol", status="failed", finished=4),
        line("r4", "tiny", output=HOSTILE, reference="Berlin | [x](javascript:1)", scores={"exact_match": 0.0, "rouge_l": 0.1}, queue=50, compute=1000, finished=8.5),
    ]  # fmt: skip


# Per model: tasks, succeeded, failed, cancelled, exact_match, rouge_l, p50, p95, tokens/s, tasks/s.
# p95 of smol: rank 0.95 * 2 = 1.9 -> 200 + 0.9 * 100; of tiny: 2.85 -> 250 + 0.85 * 800.
EXPECTED = {
    "smol": ["smol", "4", "3", "1", "0", "0.6667", "0.8333", "200.0", "290.0", "3.75", "1"],
    "tiny": ["tiny", "4", "4", "0", "0", "0.25", "0.325", "200.0", "930.0", "2.5", "0.5"],
}


def classify_eval() -> list[dict[str, Any]]:
    """Model a: (reference, predicted) cat/cat, cat/dog, dog/dog, bird/dog: F1 of cat 2/3,
    of dog 2/4, of bird 0, macro-F1 7/18; model b: every one right, macro-F1 1."""
    pairs = {
        "a": [("cat", "cat"), ("cat", "dog"), ("dog", "dog"), ("bird", "dog")],
        "b": [("cat", "cat"), ("cat", "cat"), ("dog", "dog"), ("bird", "bird")],
    }
    return [
        line(f"r{i}", model, label=predicted, reference=reference,
             scores={"accuracy": float(reference == predicted)}, queue=1, compute=9, finished=i)
        for model, rows in pairs.items()
        for i, (reference, predicted) in enumerate(rows)
    ]  # fmt: skip


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in lines), encoding="utf-8")
    return path
