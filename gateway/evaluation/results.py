"""Stored results as JobResult messages, with what each line of the results file says
beyond the server's answer: the model that ran it, when it was recorded, the row id of a
job of several models, and the task's evaluation (reference, input, scores)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from batchinfer.v1 import gateway_pb2
from google.protobuf import timestamp_pb2

from gateway.store import Evaluation, JobRecord, JobStore, ResultRecord


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def model_and_row(job_model: str, task_id: str) -> tuple[str, str]:
    """(model, row id) of a task: a job of several models stores `model` as the names
    joined by commas and its task ids as "<row id>@<model>"."""
    if "," in job_model:
        row_id, _, model = task_id.rpartition("@")
        if row_id and model in job_model.split(","):
            return model, row_id
    return job_model, ""


def extra_pb(
    record: ResultRecord, job_model: str, evaluation: Evaluation | None = None
) -> gateway_pb2.JobResult:
    """Only the fields the gateway adds to a stored result (result_wire sends the rest)."""
    model, row_id = model_and_row(job_model, record.task_id)
    item = gateway_pb2.JobResult(
        model=model,
        finished_at=timestamp(record.finished_at),
        row_id=row_id,
    )
    if evaluation is not None:
        item.evaluation.reference, item.evaluation.input = evaluation.reference, evaluation.input
        item.evaluation.scores.update(json.loads(evaluation.scores or "{}"))
    return item


class ResultPages:
    """JobResults of one StreamResults call; asks for evaluations only while the job has
    them (every task of an evaluating job has a row from the start)."""

    def __init__(self, store: JobStore, job: JobRecord) -> None:
        self.store, self.job = store, job
        self.evaluates: bool | None = None  # unknown until the first page

    async def extras(self, page: Sequence[ResultRecord]) -> list[bytes]:
        """Per result, the serialised JobResult fields beyond the stored bytes."""
        found: dict[str, Evaluation] = {}
        if self.evaluates is not False and page:
            found = await self.store.evaluations(self.job.job_id, [r.task_id for r in page])
            self.evaluates = bool(found)
        return [extra_pb(r, self.job.model, found.get(r.task_id)).SerializeToString() for r in page]
