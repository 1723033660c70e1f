"""One queue fed by every stream, and one worker that runs model batches off it.

Streams submit tasks; the backend validates each one at once (a bad task gets its
error right away and never reaches a batch). The worker asks batching.next_batch
what to run, runs it through the backend (a real model runs on its own thread) and
hands each outcome to the stream that owns its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Protocol

from services.inference.backends.base import Backend
from services.inference.batching import BatchLimits, next_batch
from services.inference.telemetry import ServerTelemetry, server_telemetry
from services.inference.types import Code, InferTask, Outcome

log = logging.getLogger(__name__)


class ResultSink(Protocol):
    """Whoever gets the outcomes of the tasks it submitted (a Process stream)."""

    def deliver(self, outcomes: list[Outcome]) -> None: ...


class Batcher:
    def __init__(
        self,
        backend: Backend,
        limits: BatchLimits,
        telemetry: ServerTelemetry | None = None,
        server_address: str = "",
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.telemetry = telemetry or server_telemetry()
        self.server_address = server_address
        self.draining = False
        self._groups: dict[Hashable, list[InferTask]] = {}
        self._queued = 0
        self._running: list[InferTask] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._worker is not None

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        """Start the worker once the model is loaded; tasks submitted before are refused."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="batcher")

    # ---- the streams' side ----

    def submit(self, tasks: Iterable[InferTask], sink: ResultSink, first: bool = False) -> None:
        """Queue tasks behind those queued, or with `first` ahead of them (in their order,
        as old as the group's oldest, so the group's turn among the others is unchanged)."""
        now = time.perf_counter()
        rejected: list[Outcome] = []
        added = 0
        ahead: dict[Hashable, int] = {}  # with `first`: where the next one goes in its group
        for task in tasks:
            task.owner = sink
            refusal = self._refusal(task)
            if refusal is not None:
                rejected.append(refusal)
                continue
            task.enqueued_at = now
            group = self._groups.get(task.key)
            if group is None:
                self._groups[task.key] = [task]
                ahead[task.key] = 1
            elif first:
                at = ahead.setdefault(task.key, 0)
                task.enqueued_at = min(now, group[at].enqueued_at if at < len(group) else now)
                group.insert(at, task)
                ahead[task.key] = at + 1
            else:
                group.append(task)
            added += 1
        if added:
            self._queued += added
            self.telemetry.tasks_queued(added)
            self._idle.clear()
            self._arrived.set()
        if rejected:
            self.telemetry.tasks_finished(rejected, queued=False)
            sink.deliver(rejected)

    def _refusal(self, task: InferTask) -> Outcome | None:
        if self.draining:
            message = "the server is draining; send the task to another server"
            return Outcome.failed(task, Code.UNAVAILABLE, message, retryable=True)
        if self._worker is None:
            message = "the model is still loading; retry shortly"
            return Outcome.failed(task, Code.UNAVAILABLE, message, retryable=True)
        try:
            error = self.backend.prepare(task)
        except Exception as exc:
            log.exception("preparing task %s failed", task.task_id)
            message = f"preparing the task failed: {type(exc).__name__}: {exc}"
            return Outcome.failed(task, Code.INTERNAL, message, retryable=True)
        if error is not None:
            return Outcome.failed(task, error.code, error.message, error.retryable)
        return None

    def cancel(self, sink: ResultSink, task_ids: set[str]) -> int:
        """Drop the sink's queued tasks with these ids; each gets a CANCELLED result."""
        dropped = self._remove(lambda t: t.owner is sink and t.task_id in task_ids)
        if dropped:
            outcomes = [
                Outcome.failed(t, Code.CANCELLED, "cancelled before it ran") for t in dropped
            ]
            self.telemetry.tasks_finished(outcomes, queued=True)
            sink.deliver(outcomes)
        return len(dropped)

    def forget(self, sink: ResultSink) -> None:
        """The sink went away: drop its queued tasks without results."""
        dropped = self._remove(lambda t: t.owner is sink)
        if dropped:
            self.telemetry.inflight.add(-len(dropped), {"batchinfer.component": "server"})

    def _remove(self, doomed: Callable[[InferTask], bool]) -> list[InferTask]:
        removed: list[InferTask] = []
        for key in list(self._groups):
            group = self._groups[key]
            keep: list[InferTask] = []
            for task in group:
                (removed if doomed(task) else keep).append(task)
            if len(keep) != len(group):
                if keep:
                    self._groups[key] = keep
                else:
                    del self._groups[key]
        self._queued -= len(removed)
        if not self._queued and not self._running:
            self._idle.set()
        return removed

    # ---- draining ----

    async def drain(self, grace_s: float) -> bool:
        """Refuse new tasks, run the queued ones; True if all finished within grace_s.

        Tasks still queued after grace_s fail with UNAVAILABLE (retryable)."""
        self.draining = True
        self._arrived.set()
        if self._worker is None:
            self._fail_queued("the server stopped before the model was loaded")
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
            return True
        except TimeoutError:
            self._fail_queued(f"the server is shutting down: not started within {grace_s:g} s")
            return False

    def _fail_queued(self, message: str) -> None:
        by_owner: dict[int, tuple[ResultSink, list[Outcome]]] = {}
        for task in self._remove(lambda t: True):
            entry = by_owner.setdefault(id(task.owner), (task.owner, []))
            entry[1].append(Outcome.failed(task, Code.UNAVAILABLE, message, retryable=True))
        for sink, outcomes in by_owner.values():
            self.telemetry.tasks_finished(outcomes, queued=True)
            sink.deliver(outcomes)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    # ---- the worker ----

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queued:
                self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
                continue
            now = time.perf_counter()
            decision = next_batch(self._groups, self.limits, now, flush=self.draining)
            if decision.batch is None:
                self._arrived.clear()
                assert decision.wake_at is not None
                timer = loop.call_later(max(decision.wake_at - now, 0.0), self._arrived.set)
                await self._arrived.wait()
                timer.cancel()
                continue
            batch = decision.batch
            self._take(batch)
            await self._run(batch)
            # Let streams send what just finished before the next batch starts.
            await asyncio.sleep(0)

    def _take(self, batch: list[InferTask]) -> None:
        key = batch[0].key
        group = self._groups[key]
        n = len(batch)
        if all(a is b for a, b in zip(batch, group[:n], strict=True)):
            rest = group[n:]  # the usual case: the batch is the oldest tasks, in order
        else:
            chosen = {id(t) for t in batch}
            rest = [t for t in group if id(t) not in chosen]
        if rest:
            self._groups[key] = rest
        else:
            del self._groups[key]
        self._queued -= len(batch)
        self._running = batch

    async def _run(self, batch: list[InferTask]) -> None:
        telemetry = self.telemetry
        start = time.perf_counter()
        model = batch[0].model
        with (
            telemetry.batch_span(batch, model, self.server_address),
            telemetry.forward_span() as span,
        ):
            try:
                outcomes = await self.backend.execute(batch)
            except Exception as exc:
                log.exception("a batch of %d failed", len(batch))
                message = f"the model failed: {type(exc).__name__}: {exc}"
                outcomes = [
                    Outcome.failed(t, Code.INTERNAL, message, retryable=True) for t in batch
                ]
            compute_s = time.perf_counter() - start
            telemetry.batch_done(batch, outcomes, span, model, compute_s)
        self._running = []
        compute_ms = compute_s * 1000.0
        by_owner: dict[int, tuple[ResultSink, list[Outcome]]] = {}
        for outcome in outcomes:
            task = outcome.task
            outcome.queue_ms = (start - task.enqueued_at) * 1000.0
            outcome.compute_ms = compute_ms
            entry = by_owner.get(id(task.owner))
            if entry is None:
                by_owner[id(task.owner)] = (task.owner, [outcome])
            else:
                entry[1].append(outcome)
        telemetry.tasks_finished(outcomes, queued=True)
        for sink, results in by_owner.values():
            sink.deliver(results)
