"""Sync operations on the evaluations table: a task's reference and input, written with
the task, and its scores, written in the transaction that records its result."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from gateway.store.records import Evaluation
from gateway.store.schema import evaluations
from gateway.store.task_ops import IDS, chunks

_b = sa.bindparam
_OF_TASKS = sa.select(
    evaluations.c.task_id, evaluations.c.reference, evaluations.c.input, evaluations.c.scores
).where(evaluations.c.job_id == _b("jid"), evaluations.c.task_id.in_(IDS))
_SET_SCORES = (
    sa.update(evaluations)
    .where(evaluations.c.job_id == _b("jid"), evaluations.c.task_id == _b("tid"))
    .values(scores=_b("sc"))
)


def add_evaluations(conn: sa.Connection, job_id: str, rows: Sequence[Evaluation]) -> None:
    if rows:
        values = [
            {"job_id": job_id, "task_id": e.task_id, "reference": e.reference, "input": e.input}
            for e in rows
        ]
        conn.execute(evaluations.insert(), values)


def of_tasks(conn: sa.Connection, job_id: str, task_ids: Sequence[str]) -> dict[str, Evaluation]:
    found: dict[str, Evaluation] = {}
    for part in chunks(list(dict.fromkeys(task_ids))):
        for r in conn.execute(_OF_TASKS, {"jid": job_id, "ids": part}):
            found[r[0]] = Evaluation(r[0], r[1], r[2], r[3])
    return found


def set_scores(conn: sa.Connection, job_id: str, scores: dict[str, str]) -> None:
    if scores:
        rows = [{"jid": job_id, "tid": tid, "sc": text} for tid, text in scores.items()]
        conn.execute(_SET_SCORES, rows)
