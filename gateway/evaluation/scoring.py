"""Scores for the outcomes of a job with an `evaluate:` section, computed when the
Settler records them: the references come from the store (never from the Task sent to
servers), and ROUGE/BLEU run in a worker thread so the event loop stays free."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from batchinfer.v1 import task_pb2

from gateway.evaluation.metrics import task_scores
from gateway.jobs import JobRun
from gateway.store import Evaluation, JobStore, Outcome, TaskState


class Scorer:
    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def scores(self, job: JobRun | None, outcomes: Sequence[Outcome]) -> dict[str, str]:
        """task id -> scores as JSON ({} for a failed task); empty without `evaluate:`."""
        evaluate = getattr(job.spec, "evaluate", None) if job is not None else None
        if job is None or evaluate is None or not outcomes:
            return {}
        found = await self.store.evaluations(job.job_id, [o.task_id for o in outcomes])
        if not found:
            return {}
        metrics, task_type = tuple(evaluate.metrics), job.record.task_type
        return await asyncio.to_thread(_score_all, task_type, metrics, outcomes, found)


def _score_all(
    task_type: str,
    metrics: tuple[str, ...],
    outcomes: Sequence[Outcome],
    found: dict[str, Evaluation],
) -> dict[str, str]:
    scored: dict[str, str] = {}
    for o in outcomes:
        evaluation = found.get(o.task_id)
        if evaluation is None:
            continue
        scores: dict[str, float] = {}
        if o.state == TaskState.SUCCEEDED:
            result = task_pb2.TaskResult.FromString(o.result)
            scores = task_scores(task_type, metrics, evaluation.reference, result)
        scored[o.task_id] = json.dumps(scores)
    return scored
