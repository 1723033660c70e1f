"""Sync batch operations that add, lease and requeue tasks; each runs inside one transaction.

Every state change is a compare-and-set: an UPDATE whose WHERE clause names the
state (and attempt) it expects, with RETURNING telling which rows won.
Statements are built once at import: building and cache-keying a statement per
call cost more than SQLite's own work on a batch of 64.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from gateway.store import sqlite_fast
from gateway.store.records import DuplicateTaskId, NewTask, TaskRecord, TaskState
from gateway.store.schema import tasks

# Bound parameters per IN list stay well under SQLite's and asyncpg's limits (32766).
MAX_IN = 5000
_X = TypeVar("_X")

STATE_OF = {int(s): s for s in TaskState}  # a dict lookup is ~10x cheaper than TaskState(n)
_PENDING, _RUNNING, _RETRY = (
    int(s) for s in (TaskState.PENDING, TaskState.RUNNING, TaskState.RETRY_WAIT)
)
_b = sa.bindparam


def state_is(*states: int) -> sa.ColumnElement[bool]:
    """A state test that a partial index (WHERE state = 2) can match: states as SQL literals."""
    lits: list[sa.ColumnElement[Any]] = [sa.literal_column(str(int(s))) for s in states]
    return tasks.c.state == lits[0] if len(lits) == 1 else tasks.c.state.in_(lits)


def state_filter(*states: int) -> sa.ColumnElement[bool]:
    """A state test that is never an index key (``state + 0``): with a task_id IN list,
    SQLite without statistics otherwise picks (job_id, state) and scans the whole job."""
    lits: list[sa.ColumnElement[Any]] = [sa.literal_column(str(int(s))) for s in states]
    return (tasks.c.state + sa.literal_column("0")).in_(lits)


IDS: sa.BindParameter[Any] = _b("ids", expanding=True)
PAIRS: sa.BindParameter[Any] = _b("pairs", expanding=True)
_JOB = tasks.c.job_id == _b("jid")


def chunks(items: Sequence[_X], size: int = MAX_IN) -> Iterator[Sequence[_X]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _task_from_row(r: sa.Row) -> TaskRecord:
    # Positional: the select lists tasks' columns in TaskRecord's field order.
    return TaskRecord(r[0], r[1], r[2], STATE_OF[r[3]], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14])  # fmt: skip


# --- adding tasks ---------------------------------------------------------------------------

_FIND_IDS = sa.select(tasks.c.task_id, tasks.c.idx).where(_JOB, tasks.c.task_id.in_(IDS))


def _check_chunk_unique(job_id: str, new: Sequence[NewTask]) -> None:
    seen: dict[str, int] = {}
    for task in new:
        first = seen.setdefault(task.task_id, task.idx)
        if first != task.idx:
            raise DuplicateTaskId(job_id, task.task_id, first, task.idx)


def find_duplicate(conn: sa.Connection, job_id: str, new: Sequence[NewTask]) -> DuplicateTaskId:
    """After a unique-index failure: which new row clashes with which stored row."""
    by_id = {task.task_id: task.idx for task in new}
    for part in chunks(list(by_id)):
        row = conn.execute(_FIND_IDS, {"jid": job_id, "ids": list(part)}).first()
        if row is not None:
            return DuplicateTaskId(job_id, row.task_id, row.idx, by_id[row.task_id])
    raise LookupError(f"job {job_id}: no stored task clashes with the new chunk")


def add_tasks(conn: sa.Connection, job_id: str, new: Sequence[NewTask]) -> None:
    _check_chunk_unique(job_id, new)
    if sqlite_fast.usable(conn):
        return sqlite_fast.add_tasks(conn, job_id, new)
    rows = [
        {
            "job_id": job_id,
            "task_id": t.task_id,
            "idx": t.idx,
            "state": _PENDING,
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

_PENDING_BASE = (
    sa.select(*(c for c in tasks.c if c.name != "id"))
    .where(_JOB, tasks.c.idx > _b("after_idx"))
    .order_by(tasks.c.idx)
    .limit(_b("limit"))
)
# Two index range scans on (job_id, state, idx), merged here, instead of one OR query.
_FRESH = _PENDING_BASE.where(state_is(_PENDING))
_WAITING = _PENDING_BASE.where(state_is(_RETRY), tasks.c.not_before <= _b("now"))
_PENDING_BY_ID = (
    sa.select(*(c for c in tasks.c if c.name != "id"))
    .where(_JOB, tasks.c.task_id.in_(IDS), state_filter(_PENDING))
    .order_by(tasks.c.idx)
)


def pending_tasks(
    conn: sa.Connection, job_id: str, after_idx: int, limit: int, now: float
) -> list[TaskRecord]:
    params = {"jid": job_id, "after_idx": after_idx, "limit": limit, "now": now}
    rows = conn.execute(_FRESH, params).all()
    waiting = conn.execute(_WAITING, params).all()
    if waiting:
        rows = sorted([*rows, *waiting], key=lambda r: r.idx)[:limit]
    return [_task_from_row(row) for row in rows]


def pending_by_id(conn: sa.Connection, job_id: str, task_ids: Sequence[str]) -> list[TaskRecord]:
    records: list[TaskRecord] = []
    for part in chunks(list(task_ids)):
        rows = conn.execute(_PENDING_BY_ID, {"jid": job_id, "ids": list(part)})
        records += [_task_from_row(row) for row in rows]
    return records


_LEASE = (
    sa.update(tasks)
    .where(_JOB, tasks.c.task_id.in_(IDS), state_filter(_PENDING, _RETRY))
    .values(
        state=_RUNNING,
        attempts=tasks.c.attempts + 1,
        lease_owner=_b("owner"),
        lease_expires_at=_b("expires_at"),
        not_before=None,
    )
    .returning(tasks.c.task_id, tasks.c.attempts, tasks.c.requeues)
)


def lease(
    conn: sa.Connection, job_id: str, task_ids: Sequence[str], owner: str, expires_at: float
) -> list[tuple[str, int, int]]:
    if sqlite_fast.usable(conn):
        return sqlite_fast.lease(conn, job_id, task_ids, owner, expires_at)
    won: dict[str, tuple[int, int]] = {}
    for part in chunks(task_ids):
        params = {"jid": job_id, "ids": list(part), "owner": owner, "expires_at": expires_at}
        won.update((r[0], (r[1], r[2])) for r in conn.execute(_LEASE, params))
    return [(tid, *won[tid]) for tid in dict.fromkeys(task_ids) if tid in won]


_RENEW = (
    sa.update(tasks)
    .where(tasks.c.lease_owner == _b("owner"), state_is(_RUNNING))
    .values(lease_expires_at=_b("expires_at"))
)
_TO_PENDING = (
    sa.update(tasks)
    .where(state_is(_RUNNING))
    .values(state=_PENDING, lease_owner=None, lease_expires_at=None)
)
_TO_PENDING_FREE = _TO_PENDING.values(requeues=tasks.c.requeues + 1)
_BY_OWNER = tasks.c.lease_owner == _b("owner")
_EXPIRED = tasks.c.lease_expires_at < _b("now")


def renew_leases(conn: sa.Connection, owner: str, expires_at: float) -> int:
    return conn.execute(_RENEW, {"owner": owner, "expires_at": expires_at}).rowcount


def release_owner(conn: sa.Connection, owner: str, free: bool) -> int:
    """free: the lease costs the task nothing (requeues + 1), e.g. the gateway drained."""
    stmt = (_TO_PENDING_FREE if free else _TO_PENDING).where(_BY_OWNER)
    return conn.execute(stmt, {"owner": owner}).rowcount


def expire_leases(conn: sa.Connection, now: float, free: bool) -> int:
    stmt = (_TO_PENDING_FREE if free else _TO_PENDING).where(_EXPIRED)
    return conn.execute(stmt, {"now": now}).rowcount


# The task_id IN list is the index lookup; the (task_id, attempts) pairs filter what it finds.
RUNNING_AT_ATTEMPT = (
    _JOB,
    state_filter(_RUNNING),
    tasks.c.task_id.in_(IDS),
    sa.tuple_(tasks.c.task_id, tasks.c.attempts).in_(PAIRS),
)
_REQUEUE = (
    sa.update(tasks)
    .where(*RUNNING_AT_ATTEMPT)
    .values(
        state=_b("to_state"),
        not_before=_b("wait_until"),
        last_error=_b("error"),
        lease_owner=None,
        lease_expires_at=None,
    )
)
_REQUEUE_FREE = _REQUEUE.values(requeues=tasks.c.requeues + 1)


def requeue(
    conn: sa.Connection,
    job_id: str,
    attempts: Sequence[tuple[str, int]],
    not_before: float | None,
    error: str | None,
    free: bool = False,
) -> int:
    """free: the attempt is not spent (requeues + 1): the server never ran the task."""
    state = _PENDING if not_before is None else _RETRY
    stmt = _REQUEUE_FREE if free else _REQUEUE
    moved = 0
    for part in chunks(attempts):
        params = {
            "jid": job_id,
            "ids": [tid for tid, _ in part],
            "pairs": [tuple(p) for p in part],
            "to_state": state,
            "wait_until": not_before,
            "error": error,
        }
        moved += conn.execute(stmt, params).rowcount
    return moved
