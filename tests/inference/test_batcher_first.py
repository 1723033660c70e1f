"""Tasks submitted `first` (TaskBatch.first: a dead gateway replica's work, taken over)
run ahead of what the server already holds; the others keep their order."""

from __future__ import annotations

import asyncio

from services.inference.backends.echo import EchoBackend
from services.inference.batcher import Batcher
from services.inference.batching import BatchLimits
from services.inference.types import InferTask, Outcome
from tests.inference.conftest import gen_task


class Collect:
    def __init__(self, expected: int) -> None:
        self.order: list[str] = []
        self.expected = expected
        self.done = asyncio.Event()

    def deliver(self, outcomes: list[Outcome]) -> None:
        self.order += [o.task.task_id for o in outcomes]
        if len(self.order) >= self.expected:
            self.done.set()


def tasks(*ids: str) -> list[InferTask]:
    return [InferTask.from_pb(gen_task(i, "same length", max_new_tokens=2)) for i in ids]


async def test_a_first_batch_runs_ahead_of_the_queued_tasks_in_its_own_order() -> None:
    backend = EchoBackend()
    backend.load()
    batcher = Batcher(backend, BatchLimits(max_batch_size=2, max_wait_s=0.0))
    sink = Collect(8)
    batcher.start()  # the worker runs at the first await: everything below is queued first
    batcher.submit(tasks("a0", "a1", "a2", "a3"), sink)
    batcher.submit(tasks("f0", "f1", "f2"), sink, first=True)
    batcher.submit(tasks("a4"), sink)
    try:
        await asyncio.wait_for(sink.done.wait(), 30)
    finally:
        await batcher.close()
    assert sink.order == ["f0", "f1", "f2", "a0", "a1", "a2", "a3", "a4"]
