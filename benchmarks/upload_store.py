"""What storing an uploaded input file in the job store costs a submission: a job with an
uploaded file of --mb MB (rows of about 1 KB) submitted to one gateway (no inference
server: only the upload and the job's check are timed) on SQLite and on the machine's
PostgreSQL (a fresh database), --runs times each; the median time from the start of
SubmitJob to its reply, and the upload rate that makes. Each job is cancelled once
accepted, so its expansion does not run into the next submission.

    .venv/bin/python benchmarks/upload_store.py [--mb 64] [--runs 3]

The same script run from a checkout before uploads went to the store gives the figure
without them (the gateway then wrote the file to --data-dir only).

Last line: upload_mb=... sqlite_submit_s=... sqlite_mb_per_s=... postgres_submit_s=...
postgres_mb_per_s=...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batchinfer.v1 import gateway_pb2  # noqa: E402

from gateway.client import GatewayClient, read_local_job  # noqa: E402
from gateway.local import gateway_argv, start_process  # noqa: E402
from tests.faults.replicas import create_database, drop_database  # noqa: E402

MB = 1024 * 1024


def write_job(folder: Path, mb: int) -> Path:
    text = "x" * 1000
    with (folder / "rows.jsonl").open("w") as handle:
        for i in range(mb * MB // 1024):
            handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    job = folder / "job.yaml"
    job.write_text(
        "version: 1\nname: up\nmodel: echo\ntask: generate\ntemplate: '{{ text }}'\n"
        "params: {max_new_tokens: 1}\ninputs: {file: rows.jsonl, id: '{{ id }}'}\n"
    )
    return job


async def submit_once(address: str, job: Path) -> float:
    client = GatewayClient(address)
    try:
        local = read_local_job(job, {}, None)
        started = time.perf_counter()
        job = await client.submit(local)
        seconds = time.perf_counter() - started
        # Its expansion would run into the next submission: cancel it.
        await client.call("CancelJob", gateway_pb2.CancelJobRequest(job_id=job.job_id))
        return seconds
    finally:
        await client.close()


def median_submit(folder: Path, job: Path, store_url: str | None, runs: int) -> float:
    extra = ["--store-url", store_url] if store_url else []
    gateway = start_process(
        "gateway", gateway_argv([], folder / "data", extra=extra), folder / "gateway.log", 60
    )
    try:
        return statistics.median(
            asyncio.run(submit_once(gateway.address, job)) for _ in range(runs)
        )
    finally:
        gateway.stop(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, str] = {"upload_mb": str(args.mb)}
    with tempfile.TemporaryDirectory(prefix="upload-store-") as tmp:
        folder = Path(tmp)
        job = write_job(folder, args.mb)
        name, url = create_database("upload_store")
        try:
            for store, store_url in (("sqlite", None), ("postgres", url)):
                seconds = median_submit(folder / store, job, store_url, args.runs)
                print(f"{store}: {args.mb} MB submitted in {seconds:.2f} s", flush=True)
                figures[f"{store}_submit_s"] = f"{seconds:.2f}"
                figures[f"{store}_mb_per_s"] = f"{args.mb / seconds:.0f}"
        finally:
            drop_database(name)
    print(" ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
