"""Job store throughput: expansion, the lease+record cycle, and result streaming.

Prints, for one backend:
  add_tasks      rows/s   (N rows in chunks of 1,000, one transaction each)
  lease+record   tasks/s  (pending_tasks -> lease -> record_outcomes, batches of 64)
  results_after  rows/s   (the whole job read back in pages of 1,000)

Usage:
  .venv/bin/python benchmarks/store_throughput.py                       # SQLite, own thread
  .venv/bin/python benchmarks/store_throughput.py --driver aiosqlite    # SQLite via aiosqlite
  .venv/bin/python benchmarks/store_throughput.py --driver postgres     # 127.0.0.1:5432/test

Figures on the shared 2-core development machine (load average 3-4.5 from other
work, so they swing by 2x between runs), 100,000 tasks, 200-byte payloads:
  driver     add_tasks rows/s   lease+record tasks/s (64)   results_after rows/s
  thread       38k - 85k          7.9k - 15.9k (256: 19.5k)    134k - 237k
  aiosqlite    38k - 41k          2.4k - 5.4k                  184k - 320k
  postgres     20k                3.6k                         154k
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid

from gateway.store import JobRecord, JobState, JobStore, NewTask, Outcome, TaskState

PG_URL = os.environ.get(
    "BATCHINFER_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
PAYLOAD = b"x" * 200  # about the size of a serialized short chat task
RESULT = b"y" * 200


async def open_store(driver: str, folder: str) -> tuple[JobStore, str | None]:
    if driver == "postgres":
        schema = f"store_bench_{uuid.uuid4().hex[:8]}"
        return await JobStore.open(PG_URL, schema=schema), schema
    path = os.path.join(folder, "bench.db")
    store = await JobStore.open(f"sqlite+aiosqlite:///{path}", sqlite_driver=driver)
    return store, None


def new_tasks(start: int, n: int) -> list[NewTask]:
    return [
        NewTask(f"t{i}", i, f"h{i}", PAYLOAD, 100, shard_key=None) for i in range(start, start + n)
    ]


async def bench_add(store: JobStore, job_id: str, total: int) -> float:
    began = time.perf_counter()
    for start in range(0, total, 1000):
        await store.add_tasks(job_id, new_tasks(start, min(1000, total - start)))
    await store.mark_expanded(job_id, total)
    return total / (time.perf_counter() - began)


async def bench_cycle(store: JobStore, job_id: str, total: int, batch: int) -> float:
    began, done, after = time.perf_counter(), 0, -1
    while done < total:
        pending = await store.pending_tasks(job_id, after_idx=after, limit=batch, now=0.0)
        if not pending:
            break
        after = pending[-1].idx
        leased = await store.lease(job_id, [t.task_id for t in pending], "bench", 1e12)
        outcomes = [
            Outcome(tid, att, TaskState.SUCCEEDED, RESULT, 100, 20) for tid, att, _ in leased
        ]
        done += len(await store.record_outcomes(job_id, outcomes, now=1.0))
    return done / (time.perf_counter() - began)


async def bench_read(store: JobStore, job_id: str) -> tuple[float, int]:
    began, seq, read = time.perf_counter(), 0, 0
    while page := await store.results_after(job_id, seq, 1000):
        seq, read = page[-1].seq, read + len(page)
    return read / (time.perf_counter() - began), read


async def main(driver: str, total: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store, schema = await open_store(driver, folder)
        try:
            job = JobRecord("bench", "bench", "t", 0, "m", "chat", JobState.RUNNING, 0.0, None, {})
            await store.create_job(job)
            add = await bench_add(store, job.job_id, total)
            cycle = await bench_cycle(store, job.job_id, total, batch)
            read, n = await bench_read(store, job.job_id)
            assert n == total, f"read back {n} results of {total}"
            print(f"driver={driver} tasks={total}")
            print(f"add_tasks      {add:>10,.0f} rows/s   (chunks of 1,000)")
            print(f"lease+record   {cycle:>10,.0f} tasks/s  (batches of {batch})")
            print(f"results_after  {read:>10,.0f} rows/s   (pages of 1,000)")
        finally:
            await store.close()
            if schema is not None:
                await drop_schema(schema)


async def drop_schema(schema: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(PG_URL)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--driver", choices=["thread", "aiosqlite", "postgres"], default="thread")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.driver, args.tasks, args.batch))
