"""Expanding a job into tasks in the store, chunk by chunk, under a lease on expansion.

The job row names its expander (the accepting replica at first). Each chunk is stored
only while the row still names this replica (JobStore.add_tasks with `expander`), and
another replica takes the expansion over only once this one's row is gone from the
replicas table (JobStore.claim_expansion), resuming after the tasks stored so far.
Chunks are single transactions and task ids are rendered from the rows, so the tasks
stored are always a prefix of the job's tasks: skipping that many renders exactly the
rest, with nothing stored twice. The uploaded input file comes from the store
(stored_inputs.InputFiles), so any replica can be the one that expands.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

from gateway.dispatch import JobEngine
from gateway.jobfile import JobFileError
from gateway.jobs import JobRun
from gateway.render_pool import Renderer, TaskRow, WorkerCrashed
from gateway.store import DuplicateTaskId, Evaluation, ExpansionLost, JobRecord, NewTask, TaskState
from gateway.stored_inputs import InputFiles, InputMissing

log = logging.getLogger("gateway.submission")

Templates = dict[tuple[str, str], str]


class Expansion:
    """Expands the jobs this replica holds the expansion lease of."""

    def __init__(
        self,
        engine: JobEngine,
        renderer: Renderer,
        inputs: InputFiles,
        templates: Callable[[str], Awaitable[Templates]],
        loggable: Callable[[Exception], str],
    ) -> None:
        self.engine = engine
        self.store = engine.store
        self.renderer = renderer
        self.inputs = inputs
        self.templates = templates
        self.loggable = loggable

    async def claim(self, record: JobRecord) -> bool:
        """Takes the expansion of an unexpanded job whose expander is gone; True if won
        (exactly one replica wins: a compare-and-set on the job row)."""
        stored = await self.store.claim_expansion(record.job_id, self.engine.replica_id)
        if stored is None:
            return False
        if record.expander != self.engine.replica_id:
            log.warning(
                "taking over the expansion of job %s after %d stored tasks (its expander %s"
                " is gone)",
                record.job_id,
                stored,
                record.expander or "of an earlier gateway process",
            )
        record.expander = self.engine.replica_id
        return True

    async def run(self, run: JobRun, skip: int) -> None:
        """Stores the job's tasks from task `skip` on, then marks the job expanded. A bad
        row fails the job; a lost lease (another replica took over) ends this quietly."""
        stored = skip
        has_history = await self.store.has_earlier_results(run.job_id, run.record.name)
        templates = await self.templates(run.record.tenant)
        try:
            async with self.inputs.materialised(run.record.spec) as spec:
                chunks = self.renderer.expand(spec, templates, job_id=run.job_id, skip=skip)
                async with contextlib.aclosing(chunks):
                    async for rows in chunks:
                        stored += await self._store(run, rows, has_history)
                        run.counters.total = max(run.counters.total, stored)
        except ExpansionLost:
            log.warning("job %s: another replica took over its expansion", run.job_id)
            return
        except (JobFileError, DuplicateTaskId, WorkerCrashed, InputMissing) as exc:
            log.warning("job %s failed while expanding: %s", run.job_id, self.loggable(exc))
            await self.engine.fail_job(run, str(exc))
            return
        await self.store.mark_expanded(run.job_id, stored)
        run.counters.total = stored
        run.record.total = stored
        run.expanded = run.record.expanded = True
        run.notify()
        await self.engine.maybe_complete(run)

    async def _store(self, run: JobRun, rows: list[TaskRow], has_history: bool) -> int:
        chunk = _new_tasks(rows, run.deadline_at)
        reused = await self.store.add_tasks(
            run.job_id,
            chunk,
            reuse_from=run.record.name if has_history else None,
            now=self.engine.clock(),
            evaluations=_evaluations(rows),
            expander=self.engine.replica_id,
        )
        run.counters.reused += len(reused)
        for _ in reused:
            run.counters.add_terminal(TaskState.SUCCEEDED)
        run.exhausted = False
        self.engine._wake_up()
        return len(chunk)


def _new_tasks(rows: list[TaskRow], deadline: float | None) -> list[NewTask]:
    return [
        NewTask(task_id, idx, input_hash, payload, est_tokens, shard_key, deadline)
        for task_id, idx, input_hash, payload, est_tokens, shard_key, _ in rows
    ]


def _evaluations(rows: list[TaskRow]) -> list[Evaluation]:
    return [Evaluation(row[0], *row[6]) for row in rows if row[6] is not None]
