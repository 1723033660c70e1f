"""`batchinfer report` over a large results file: the time to read it and draw the
report, and the peak memory, for a file of N lines (two models, two metrics, long
outputs), against the file's size. Memory should grow with the numbers kept (16 bytes
a line), not with the file.

    .venv/bin/python benchmarks/report_size.py [--lines 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from gateway.report import from_file, render
from gateway.report.summary import Summary


def write_results(path: Path, lines: int) -> None:
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(lines):
            model = ("smol", "tiny")[i % 2]
            exact = float(rng.random() < (0.7 if model == "smol" else 0.2))
            line = {
                "id": f"r{i // 2}@{model}", "row_id": f"r{i // 2}", "model": model,
                "status": "succeeded", "output": {"text": "word " * 200},
                "usage": {"prompt_tokens": 30, "completion_tokens": 200},
                "attempts": 1, "requeues": 0,
                "timings_ms": {"queue": rng.expovariate(1 / 50), "compute": rng.gauss(800, 100)},
                "finished_at": f"2026-12-01T12:{(i // 2000) % 60:02d}:{(i // 40) % 50:02d}.{i % 1000:03d}Z",
                "evaluation": {"reference": "answer " * 20, "input": "question " * 100,
                               "scores": {"exact_match": exact, "rouge_l": rng.random()}},
            }  # fmt: skip
            handle.write(json.dumps(line) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.jsonl"
        write_results(results, args.lines)
        size_mb = results.stat().st_size / 1e6
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        summary = Summary()
        job = from_file(results, summary)
        read_s = time.perf_counter() - started
        text, _ = render("html", job, summary, "report")
        total_s = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"lines={args.lines} file={size_mb:.0f} MB read={read_s:.1f} s "
        f"read+draw={total_s:.1f} s html={len(text) / 1e3:.0f} kB "
        f"peak_rss_before={before:.0f} MiB peak_rss_after={after:.0f} MiB"
    )


if __name__ == "__main__":
    main()
