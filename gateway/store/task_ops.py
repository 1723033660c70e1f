"""Sync batch operations that add, lease and requeue tasks; each runs inside one transaction.

Every state change is a compare-and-set: an UPDATE whose WHERE clause names the
state (and attempt) it expects, with RETURNING telling which rows won.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from gateway.store.records import (
    DuplicateTaskId,
    NewTask,
    TaskRecord,
    TaskState,
)
from gateway.store.schema import tasks

# Bound parameters per IN list stay well under SQLite's and asyncpg's limits (32766).
MAX_IN = 5000
_X = TypeVar("_X")

_LEASABLE = [int(TaskState.PENDING), int(TaskState.RETRY_WAIT)]
_TASK_COLUMNS = [c for c in tasks.c if c.name != "id"]


def chunks(items: Sequence[_X], size: int = MAX_IN) -> Iterator[Sequence[_X]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ids_param() -> Any:
    return sa.bindparam("ids", expanding=True)


def pairs_param() -> Any:
    return sa.bindparam("pairs", expanding=True)


def _task_from_row(row: sa.Row) -> TaskRecord:
    return TaskRecord(
        job_id=row.job_id,
        task_id=row.task_id,
        idx=row.idx,
        state=TaskState(row.state),
        attempts=row.attempts,
        input_hash=row.input_hash,
        payload=row.payload,
        est_tokens=row.est_tokens,
        shard_key=row.shard_key,
        deadline=row.deadline,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        not_before=row.not_before,
        last_error=row.last_error,
    )


# --- adding tasks ---------------------------------------------------------------------------


def _check_chunk_unique(job_id: str, new: Sequence[NewTask]) -> None:
    seen: dict[str, int] = {}
    for task in new:
        first = seen.setdefault(task.task_id, task.idx)
        if first != task.idx:
            raise DuplicateTaskId(job_id, task.task_id, first, task.idx)


def find_duplicate(conn: sa.Connection, job_id: str, new: Sequence[NewTask]) -> DuplicateTaskId:
    """After a unique-index failure: which new row clashes with which stored row."""
    by_id = {task.task_id: task.idx for task in new}
    query = sa.select(tasks.c.task_id, tasks.c.idx).where(
        tasks.c.job_id == job_id, tasks.c.task_id.in_(ids_param())
    )
    for part in chunks(list(by_id)):
        row = conn.execute(query, {"ids": list(part)}).first()
        if row is not None:
            return DuplicateTaskId(job_id, row.task_id, row.idx, by_id[row.task_id])
    raise LookupError(f"job {job_id}: no stored task clashes with the new chunk")


def add_tasks(conn: sa.Connection, job_id: str, new: Sequence[NewTask]) -> None:
    _check_chunk_unique(job_id, new)
    rows = [
        {
            "job_id": job_id,
            "task_id": t.task_id,
            "idx": t.idx,
            "state": int(TaskState.PENDING),
            "attempts": 0,
            "input_hash": t.input_hash,
            "payload": t.payload,
            "est_tokens": t.est_tokens,
            "shard_key": t.shard_key,
            "deadline": t.deadline,
        }
        for t in new
    ]
    if rows:
        conn.execute(tasks.insert(), rows)


# --- leasing --------------------------------------------------------------------------------


def pending_tasks(
    conn: sa.Connection, job_id: str, after_idx: int, limit: int, now: float
) -> list[TaskRecord]:
    base = sa.select(*_TASK_COLUMNS).where(tasks.c.job_id == job_id, tasks.c.idx > after_idx)
    base = base.order_by(tasks.c.idx).limit(limit)
    # Two index range scans on (job_id, state, idx), merged here, instead of one OR query.
    fresh = conn.execute(base.where(tasks.c.state == int(TaskState.PENDING))).all()
    waiting = conn.execute(
        base.where(tasks.c.state == int(TaskState.RETRY_WAIT), tasks.c.not_before <= now)
    ).all()
    rows = sorted([*fresh, *waiting], key=lambda r: r.idx)[:limit] if waiting else fresh
    return [_task_from_row(row) for row in rows]


def lease(
    conn: sa.Connection, job_id: str, task_ids: Sequence[str], owner: str, expires_at: float
) -> list[tuple[str, int]]:
    query = (
        sa.update(tasks)
        .where(
            tasks.c.job_id == job_id,
            tasks.c.task_id.in_(ids_param()),
            tasks.c.state.in_(_LEASABLE),
        )
        .values(
            state=int(TaskState.RUNNING),
            attempts=tasks.c.attempts + 1,
            lease_owner=owner,
            lease_expires_at=expires_at,
            not_before=None,
        )
        .returning(tasks.c.task_id, tasks.c.attempts)
    )
    won: dict[str, int] = {}
    for part in chunks(task_ids):
        won.update(conn.execute(query, {"ids": list(part)}).tuples().all())
    return [(tid, won[tid]) for tid in dict.fromkeys(task_ids) if tid in won]


def renew_leases(conn: sa.Connection, owner: str, expires_at: float) -> int:
    query = (
        sa.update(tasks)
        .where(tasks.c.lease_owner == owner, tasks.c.state == int(TaskState.RUNNING))
        .values(lease_expires_at=expires_at)
    )
    return conn.execute(query).rowcount


def _back_to_pending(conn: sa.Connection, *where: Any) -> int:
    query = (
        sa.update(tasks)
        .where(tasks.c.state == int(TaskState.RUNNING), *where)
        .values(state=int(TaskState.PENDING), lease_owner=None, lease_expires_at=None)
    )
    return conn.execute(query).rowcount


def release_owner(conn: sa.Connection, owner: str) -> int:
    return _back_to_pending(conn, tasks.c.lease_owner == owner)


def expire_leases(conn: sa.Connection, now: float) -> int:
    return _back_to_pending(conn, tasks.c.lease_expires_at < now)


def requeue(
    conn: sa.Connection,
    job_id: str,
    attempts: Sequence[tuple[str, int]],
    not_before: float | None,
    error: str | None,
) -> int:
    state = TaskState.PENDING if not_before is None else TaskState.RETRY_WAIT
    query = (
        sa.update(tasks)
        .where(
            tasks.c.job_id == job_id,
            tasks.c.state == int(TaskState.RUNNING),
            tasks.c.task_id.in_(ids_param()),  # the index lookup; the pair check below filters
            sa.tuple_(tasks.c.task_id, tasks.c.attempts).in_(pairs_param()),
        )
        .values(
            state=int(state),
            not_before=not_before,
            last_error=error,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    moved = 0
    for part in chunks(attempts):
        params = {"ids": [tid for tid, _ in part], "pairs": [tuple(p) for p in part]}
        moved += conn.execute(query, params).rowcount
    return moved
