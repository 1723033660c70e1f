"""The engine driven by hand, as vLLM's scheduler tests do: fake links (no gRPC), a
fixed clock, a real store. A dispatch round is called, the fake server's answers are
handed in, and settle() is awaited; nothing waits on wall-clock margins."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from batchinfer.v1 import task_pb2

from gateway.dispatch import JobEngine
from gateway.jobs import JobRun
from gateway.links import InFlight
from gateway.settings import GatewayConfig
from gateway.store import JobRecord, JobState, JobStore, NewTask, TaskState


class FakeLink:
    """What the engine uses of a ServerLink: credits, in-flight keys, send and cancel."""

    def __init__(self, address: str, credits: int = 100) -> None:
        self.address, self.generation = address, 1
        self.credits = credits
        self.ready, self.draining, self.lost_is_free = True, False, False
        self.models = frozenset({"*"})
        self.task_types = frozenset({"generate", "chat", "classify", "score", "embed"})
        self.inflight = InFlight()
        self.sent: list[task_pb2.Task] = []
        self.cancelled: list[str] = []

    @property
    def owner(self) -> str:
        return f"{self.address}#{self.generation}"

    def send(self, tasks: list[bytes], tokens, first=False) -> None:  # type: ignore[no-untyped-def]
        for key, est in tokens:
            self.inflight.add(key, est)
        self.credits -= len(tasks)
        self.sent.extend(task_pb2.Task.FromString(t) for t in tasks)  # as a server reads them

    def cancel(self, wire_ids: list[str]) -> None:
        self.cancelled.extend(wire_ids)

    def serves(self, model: str, task_type: str) -> bool:
        return True


class FakePool:
    def __init__(self, *links: FakeLink) -> None:
        self.links = {link.address: link for link in links}

    def ready_links(self) -> list[FakeLink]:
        return [link for link in self.links.values() if link.ready and not link.draining]


def retry_settings(max_attempts: int = 3) -> SimpleNamespace:
    return SimpleNamespace(
        max_attempts=max_attempts, initial_backoff=1.0, max_backoff=10.0, multiplier=2.0, jitter=0.0
    )


class Bench:
    """An engine on a real SQLite store whose pool is fake links, at a clock set by hand."""

    def __init__(self, store: JobStore, config: GatewayConfig) -> None:
        self.now = 1000.0
        self.store = store
        self.engine = JobEngine(config, store, clock=lambda: self.now)
        self.link = FakeLink("server-a:1")
        pool = FakePool(self.link)
        for part in (self.engine, self.engine.dispatcher, self.engine.online):
            part.pool = pool  # type: ignore[assignment]

    async def job(
        self,
        n: int,
        deadline: float | None = None,
        max_attempts: int = 3,
        payloads: list[bytes] | None = None,
        inputs_format: str = "jsonl",
    ) -> JobRun:
        record = JobRecord(
            job_id="job-1",
            name="bench",
            tenant="team-a",
            priority=5,
            model="m",
            task_type="generate",
            state=JobState.QUEUED,
            created_at=self.now,
            finished_at=None,
            spec={},
            total=n,
        )
        await self.store.create_job(record)
        tasks = [
            NewTask(
                f"t{i}",
                i,
                f"h{i}",
                payloads[i]
                if payloads
                else task_pb2.Task(prompt=f"p{i}", model="m").SerializeToString(),
                10,
                None,
                deadline,
            )
            for i in range(n)
        ]
        await self.store.add_tasks("job-1", tasks)
        await self.store.mark_expanded("job-1", n)
        spec = SimpleNamespace(
            retry=retry_settings(max_attempts),
            schedule=SimpleNamespace(rate_limit=None, max_inflight=None),
            shard=SimpleNamespace(strategy="least_loaded"),
            inputs=SimpleNamespace(format=inputs_format),
        )
        run = JobRun(record=record, spec=spec, expanded=True)
        run.counters.total = n
        self.engine.adopt(run)
        await self.engine.window.refill(run)
        return run

    async def answer(self, make) -> None:  # type: ignore[no-untyped-def]
        """The fake server answers everything it was sent with make(task)."""
        sent, self.link.sent = self.link.sent, []
        self.engine._on_results(self.link, [make(t) for t in sent])  # type: ignore[arg-type]
        await self.engine.settle_results()

    async def task(self, task_id: str):  # type: ignore[no-untyped-def]
        rows = await self.store.pending_tasks("job-1", after_idx=-1, limit=10**6, now=10**12)
        return {r.task_id: r for r in rows}.get(task_id)


def ok(task: task_pb2.Task) -> task_pb2.TaskResult:
    return task_pb2.TaskResult(task_id=task.task_id, text=task_pb2.TextOutput(text="hi"))


def failing(code: str, retryable: bool):  # type: ignore[no-untyped-def]
    def make(task: task_pb2.Task) -> task_pb2.TaskResult:
        error = task_pb2.TaskError(code=code, message="scripted", retryable=retryable)
        return task_pb2.TaskResult(task_id=task.task_id, error=error)

    return make


@pytest.fixture
async def bench(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = await JobStore.open(str(tmp_path / "jobs.db"))
    yield Bench(store, GatewayConfig(data_dir=tmp_path))
    await store.close()


async def test_a_round_leases_and_sends_and_settling_completes_the_job(bench: Bench) -> None:
    job = await bench.job(5)
    await bench.engine.dispatcher.round()
    assert sorted(t.prompt for t in bench.link.sent) == [f"p{i}" for i in range(5)]
    assert all(t.attempt == 1 for t in bench.link.sent)
    assert job.counters.running == 5 and job.record.state == JobState.RUNNING
    await bench.answer(ok)
    counts = await bench.store.counts("job-1")
    assert counts[TaskState.SUCCEEDED] == 5
    assert job.record.state == JobState.COMPLETED and "job-1" not in bench.engine.jobs
    results = await bench.store.results_after("job-1", 0, 10)
    assert [(r.attempts, r.requeues) for r in results] == [(1, 0)] * 5


async def test_results_carry_the_jobs_task_type_and_an_openai_lines_own(bench: Bench) -> None:
    # A job's tasks all have its type: results are stamped with it (the payloads here say
    # none, and the server neither); an OpenAI batch line has its own, read from its payload.
    await bench.job(2)
    await bench.engine.dispatcher.round()
    await bench.answer(ok)
    results = await bench.store.results_after("job-1", 0, 10)
    types = {task_pb2.TaskResult.FromString(r.result).task_type for r in results}
    assert types == {task_pb2.TASK_TYPE_GENERATE}


async def test_an_openai_line_refused_at_expansion_fails_unsent(bench: Bench) -> None:
    refused = task_pb2.Task(task_id="t0", task_type=task_pb2.TASK_TYPE_CHAT)
    refused.rejected.code, refused.rejected.message = "INVALID_ARGUMENT", "url not supported"
    embed = task_pb2.Task(task_id="t1", task_type=task_pb2.TASK_TYPE_EMBED, prompt="p1")
    payloads = [refused.SerializeToString(), embed.SerializeToString()]
    await bench.job(2, payloads=payloads, inputs_format="openai-batch")
    await bench.engine.dispatcher.round()
    assert [t.prompt for t in bench.link.sent] == ["p1"]
    await bench.answer(ok)
    records = {r.task_id: r for r in await bench.store.results_after("job-1", 0, 10)}
    assert records["t0"].state == TaskState.FAILED and records["t1"].state == TaskState.SUCCEEDED
    results = {k: task_pb2.TaskResult.FromString(r.result) for k, r in records.items()}
    assert results["t0"].error.code == "INVALID_ARGUMENT"
    assert results["t1"].task_type == task_pb2.TASK_TYPE_EMBED


async def test_the_servers_retryable_flag_decides_not_the_error_code(bench: Bench) -> None:
    job = await bench.job(2)
    await bench.engine.dispatcher.round()
    first, second = bench.link.sent
    bench.link.sent = [first]
    await bench.answer(failing("INTERNAL", retryable=False))  # a bug, not a retry
    bench.link.sent = [second]
    await bench.answer(failing("RESOURCE_EXHAUSTED", retryable=True))
    counts = await bench.store.counts("job-1")
    assert counts[TaskState.FAILED] == 1 and counts[TaskState.RETRY_WAIT] == 1
    waiting = await bench.task("t1" if first.prompt == "p0" else "t0")
    assert waiting is not None and waiting.not_before == pytest.approx(bench.now + 1.0)
    assert job.record.state == JobState.RUNNING


async def test_a_draining_servers_refusal_costs_no_attempt(bench: Bench) -> None:
    await bench.job(3)
    await bench.engine.dispatcher.round()
    bench.link.draining = True  # the notice came; what it answers now it did not run
    await bench.answer(failing("UNAVAILABLE", retryable=True))
    for task_id in ("t0", "t1", "t2"):
        row = await bench.task(task_id)
        assert row is not None and row.state == TaskState.PENDING
        assert (row.attempts, row.requeues, row.spent) == (1, 1, 0)


@pytest.mark.parametrize("draining", [False, True])
async def test_a_lost_stream_spends_an_attempt_unless_the_server_drained(
    bench: Bench, draining: bool
) -> None:
    job = await bench.job(2)
    await bench.engine.dispatcher.round()
    bench.link.draining = bench.link.lost_is_free = draining
    lost = bench.link.inflight.clear()
    bench.engine._on_down(bench.link, lost)  # type: ignore[arg-type]
    for task in list(bench.engine._background):
        await task
    row = await bench.task("t0")
    assert row is not None and row.state == TaskState.PENDING
    assert row.spent == (0 if draining else 1)
    assert job.counters.running == 0


async def test_tasks_past_their_deadline_fail_unsent_and_the_job_completes(bench: Bench) -> None:
    job = await bench.job(3, deadline=bench.now + 5)
    bench.now += 10
    await bench.engine.dispatcher.round()
    assert bench.link.sent == []
    counts = await bench.store.counts("job-1")
    assert counts[TaskState.FAILED] == 3
    assert job.record.state == JobState.COMPLETED
    results = await bench.store.results_after("job-1", 0, 10)
    assert {r.attempts for r in results} == {0}  # never sent: no attempt spent


async def test_counters_that_disagree_with_the_store_do_not_complete_a_job(bench: Bench) -> None:
    job = await bench.job(2)
    job.counters.succeeded = 2  # a stale cache says done; the store says otherwise
    await bench.engine.maybe_complete(job)
    assert job.record.state == JobState.QUEUED
    assert job.counters.succeeded == 0  # refreshed from the store


async def test_results_the_store_refused_are_recorded_later_not_dropped(
    bench: Bench, monkeypatch
) -> None:
    """A transaction that failed (a PostgreSQL deadlock between replicas, the store down)
    once dropped its results: their tasks stayed RUNNING and the job never completed."""
    from gateway.dispatch import engine as engine_module

    monkeypatch.setattr(engine_module, "RECORD_RETRY_S", 0.0)
    job = await bench.job(3)
    real = bench.store.record_outcomes
    refusals = 0

    async def refuse_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal refusals
        if refusals == 0:
            refusals += 1
            raise OSError("the store is unreachable")
        return await real(*args, **kwargs)

    monkeypatch.setattr(bench.store, "record_outcomes", refuse_once)
    await bench.engine.dispatcher.round()
    await bench.answer(ok)
    assert refusals == 1 and job.record.state == JobState.RUNNING
    for _ in range(100):  # the retry is scheduled on the loop, not awaited
        if bench.engine._results:
            break
        await asyncio.sleep(0)
    await bench.engine.settle_results()
    assert (await bench.store.counts("job-1"))[TaskState.SUCCEEDED] == 3
    assert job.record.state == JobState.COMPLETED
