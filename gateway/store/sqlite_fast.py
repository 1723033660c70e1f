"""The three hottest store operations written straight against sqlite3.

Same statements and the same compare-and-set as task_ops/result_ops, without
SQLAlchemy's per-row parameter processing, which cost more than SQLite's own
work on the gateway's hot path (about half of the store thread's time at
thousands of tasks per second). PostgreSQL keeps the SQLAlchemy versions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store.records import NewTask, Outcome, ResultRecord, TaskState

MAX_VARS = 30_000  # SQLite's default limit is 32,766 bound parameters per statement
_STATE_OF = {int(s): s for s in TaskState}
_PENDING, _RUNNING, _RETRY = (
    int(TaskState.PENDING),
    int(TaskState.RUNNING),
    int(TaskState.RETRY_WAIT),
)


def usable(conn: sa.Connection) -> bool:
    """True on the sync sqlite3 driver (not through aiosqlite's adapter)."""
    return conn.dialect.name == "sqlite" and isinstance(
        conn.connection.driver_connection, sqlite3.Connection
    )


def raw(conn: sa.Connection) -> sqlite3.Connection:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver


def _marks(n: int, per_row: int = 1) -> str:
    row = "?" if per_row == 1 else "(" + ",".join("?" * per_row) + ")"
    return ",".join([row] * n)


def _parts(items: Sequence[Any], per_item: int) -> list[Sequence[Any]]:
    size = max(MAX_VARS // per_item - 8, 1)
    return [items[i : i + size] for i in range(0, len(items), size)]


_INSERT_TASK = (
    "INSERT INTO tasks (job_id, task_id, idx, state, attempts, input_hash, payload, est_tokens,"
    " shard_key, deadline) VALUES (?,?,?,?,0,?,?,?,?,?)"
)


def add_tasks(conn: sa.Connection, job_id: str, new: Sequence[NewTask]) -> None:
    rows = [
        (
            job_id,
            t.task_id,
            t.idx,
            _PENDING,
            t.input_hash,
            t.payload,
            t.est_tokens,
            t.shard_key,
            t.deadline,
        )
        for t in new
    ]
    try:
        raw(conn).executemany(_INSERT_TASK, rows)
    except sqlite3.IntegrityError as exc:
        raise sa.exc.IntegrityError(_INSERT_TASK, None, exc) from exc


def lease(
    conn: sa.Connection, job_id: str, task_ids: Sequence[str], owner: str, expires_at: float
) -> list[tuple[str, int, int]]:
    cursor = raw(conn).cursor()
    won: dict[str, tuple[int, int]] = {}
    for part in _parts(task_ids, 1):
        sql = (
            f"UPDATE tasks SET state={_RUNNING}, attempts=attempts+1, lease_owner=?, lease_expires_at=?,"
            f" not_before=NULL WHERE job_id=? AND task_id IN ({_marks(len(part))})"
            f" AND state+0 IN ({_PENDING},{_RETRY}) RETURNING task_id, attempts, requeues"
        )
        rows = cursor.execute(sql, (owner, expires_at, job_id, *part)).fetchall()
        won.update((r[0], (r[1], r[2])) for r in rows)
    return [(tid, *won[tid]) for tid in dict.fromkeys(task_ids) if tid in won]


_RESULT_COLUMNS = (
    "job_id, task_id, job_name, input_hash, state, attempts, result, prompt_tokens,"
    " completion_tokens, finished_at, reused, requeues"
)
_RETURNING = "seq, job_id, task_id, state, attempts, result, prompt_tokens, completion_tokens, finished_at, reused, requeues"


def _finish(
    cursor: sqlite3.Cursor, job_id: str, state: int, group: Sequence[Outcome]
) -> dict[tuple[str, int], str]:
    won: dict[tuple[str, int], str] = {}
    for part in _parts(group, 3):
        pairs = [v for o in part for v in (o.task_id, o.attempt)]
        sql = (
            f"UPDATE tasks SET state=?, lease_owner=NULL, lease_expires_at=NULL"
            f" WHERE job_id=? AND state+0 IN ({_RUNNING}) AND task_id IN ({_marks(len(part))})"
            f" AND (task_id, attempts) IN (VALUES {_marks(len(part), 2)})"
            f" RETURNING task_id, attempts, input_hash"
        )
        params = (state, job_id, *(o.task_id for o in part), *pairs)
        won.update(((r[0], r[1]), r[2]) for r in cursor.execute(sql, params))
    return won


def insert_results(cursor: sqlite3.Cursor, rows: Sequence[tuple[Any, ...]]) -> list[ResultRecord]:
    inserted: list[ResultRecord] = []
    for part in _parts(rows, 12):
        sql = f"INSERT INTO results ({_RESULT_COLUMNS}) VALUES {_marks(len(part), 12)} RETURNING {_RETURNING}"
        for r in cursor.execute(sql, [v for row in part for v in row]):
            inserted.append(
                ResultRecord(
                    r[0],
                    r[1],
                    r[2],
                    _STATE_OF[r[3]],
                    r[4],
                    r[5],
                    r[6],
                    r[7],
                    r[8],
                    bool(r[9]),
                    r[10],
                )
            )
    inserted.sort(key=lambda r: r.seq)
    return inserted


def record_outcomes(
    conn: sa.Connection, job_id: str, job_name: str, unique: Sequence[Outcome], now: float
) -> list[ResultRecord]:
    cursor = raw(conn).cursor()
    won: dict[tuple[str, int], str] = {}
    for state in {o.state for o in unique}:
        won.update(_finish(cursor, job_id, int(state), [o for o in unique if o.state == state]))
    rows, errors = [], []
    for o in unique:
        input_hash = won.get((o.task_id, o.attempt))
        if input_hash is None:
            continue  # lost the compare-and-set: a late or duplicate report
        rows.append((job_id, o.task_id, job_name, input_hash, int(o.state), o.attempt - o.requeues,
                     o.result, o.prompt_tokens, o.completion_tokens, now, False, o.requeues))  # fmt: skip
        if o.error is not None:
            errors.append((o.error, job_id, o.task_id))
    if errors:
        cursor.executemany("UPDATE tasks SET last_error=? WHERE job_id=? AND task_id=?", errors)
    return insert_results(cursor, rows)
