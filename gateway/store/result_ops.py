"""Sync batch operations that record, reuse and read results; each runs inside one transaction.

A result row is only inserted for a task that the same transaction moved to a
final state by compare-and-set, and (job_id, task_id) is unique in results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store.records import OPEN_TASK_STATES, Outcome, ResultRecord, TaskState
from gateway.store.schema import jobs, results, tasks
from gateway.store.task_ops import chunks, ids_param, pairs_param

_OPEN = [int(s) for s in OPEN_TASK_STATES]
_RESULT_COLUMNS = [c for c in results.c if c.name not in ("job_name", "input_hash")]


def _result_from_row(row: sa.Row) -> ResultRecord:
    return ResultRecord(
        seq=row.seq,
        job_id=row.job_id,
        task_id=row.task_id,
        state=TaskState(row.state),
        attempts=row.attempts,
        result=row.result,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        finished_at=row.finished_at,
        reused=bool(row.reused),
    )


def job_name_locked(conn: sa.Connection, job_id: str) -> str | None:
    """The job's name; on PostgreSQL also locks the job row, so result seqs commit in order."""
    query = sa.select(jobs.c.name).where(jobs.c.job_id == job_id).with_for_update()
    return conn.execute(query).scalar_one_or_none()


def insert_results(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[ResultRecord]:
    if not rows:
        return []
    query = results.insert().returning(*_RESULT_COLUMNS, sort_by_parameter_order=True)
    return [_result_from_row(row) for row in conn.execute(query, rows)]


def _result_row(
    job_id: str, job_name: str, input_hash: str, now: float, reused: bool, **fields: Any
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_name": job_name,
        "input_hash": input_hash,
        "finished_at": now,
        "reused": reused,
        **fields,
    }


def _finish_group(
    conn: sa.Connection, job_id: str, state: TaskState, group: Sequence[Outcome]
) -> dict[tuple[str, int], str]:
    """CAS RUNNING at the outcome's attempt -> state; returns {(task_id, attempt): input_hash}."""
    query = (
        sa.update(tasks)
        .where(
            tasks.c.job_id == job_id,
            tasks.c.state == int(TaskState.RUNNING),
            tasks.c.task_id.in_(ids_param()),
            sa.tuple_(tasks.c.task_id, tasks.c.attempts).in_(pairs_param()),
        )
        .values(state=int(state), lease_owner=None, lease_expires_at=None)
        .returning(tasks.c.task_id, tasks.c.attempts, tasks.c.input_hash)
    )
    won: dict[tuple[str, int], str] = {}
    for part in chunks(group):
        params = {"ids": [o.task_id for o in part], "pairs": [(o.task_id, o.attempt) for o in part]}
        won.update({(r.task_id, r.attempts): r.input_hash for r in conn.execute(query, params)})
    return won


def _set_errors(conn: sa.Connection, job_id: str, errors: list[dict[str, Any]]) -> None:
    if errors:
        query = (
            sa.update(tasks)
            .where(tasks.c.job_id == job_id, tasks.c.task_id == sa.bindparam("tid"))
            .values(last_error=sa.bindparam("err"))
        )
        conn.execute(query, errors)


def record_outcomes(
    conn: sa.Connection, job_id: str, outcomes: Sequence[Outcome], now: float
) -> list[ResultRecord]:
    for o in outcomes:
        if not o.state.is_terminal:
            raise ValueError(f"outcome for task {o.task_id!r}: state {o.state.name} is not final")
    job_name = job_name_locked(conn, job_id)
    if job_name is None or not outcomes:
        return []
    # A repeated (task_id, attempt) in one batch: the first one reported wins.
    outcomes = list({(o.task_id, o.attempt): o for o in reversed(outcomes)}.values())[::-1]
    won: dict[tuple[str, int], str] = {}
    for state in {o.state for o in outcomes}:
        won.update(_finish_group(conn, job_id, state, [o for o in outcomes if o.state == state]))
    rows, errors = [], []
    for o in outcomes:
        input_hash = won.pop((o.task_id, o.attempt), None)
        if input_hash is None:
            continue  # lost the compare-and-set, or a duplicate within this batch
        rows.append(
            _result_row(
                job_id, job_name, input_hash, now, False,
                task_id=o.task_id, state=int(o.state), attempts=o.attempt, result=o.result,
                prompt_tokens=o.prompt_tokens, completion_tokens=o.completion_tokens,
            )
        )  # fmt: skip
        if o.error is not None:
            errors.append({"tid": o.task_id, "err": o.error})
    _set_errors(conn, job_id, errors)
    return insert_results(conn, rows)


def finish_unfinished(
    conn: sa.Connection,
    job_id: str,
    state: TaskState,
    result_for: Callable[[str, int], bytes],
    now: float,
    error: str | None,
) -> list[ResultRecord]:
    if not state.is_terminal:
        raise ValueError(f"finish_unfinished: state {state.name} is not final")
    job_name = job_name_locked(conn, job_id)
    if job_name is None:
        return []
    query = (
        sa.update(tasks)
        .where(tasks.c.job_id == job_id, tasks.c.state.in_(_OPEN))
        .values(state=int(state), lease_owner=None, lease_expires_at=None, last_error=error)
        .returning(tasks.c.task_id, tasks.c.idx, tasks.c.attempts, tasks.c.input_hash)
    )
    ended = sorted(conn.execute(query), key=lambda r: r.idx)
    rows = [
        _result_row(
            job_id, job_name, r.input_hash, now, False,
            task_id=r.task_id, state=int(state), attempts=r.attempts,
            result=result_for(r.task_id, r.attempts), prompt_tokens=0, completion_tokens=0,
        )
        for r in ended
    ]  # fmt: skip
    return insert_results(conn, rows)


def _reusable(
    conn: sa.Connection, job_id: str, name: str, candidates: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], sa.Row]:
    """Latest SUCCEEDED result per (task_id, input_hash) in other jobs with this name."""
    query = (
        sa.select(
            results.c.task_id,
            results.c.input_hash,
            results.c.attempts,
            results.c.result,
            results.c.prompt_tokens,
            results.c.completion_tokens,
        )
        .where(
            results.c.job_name == name,
            results.c.task_id.in_(ids_param()),
            sa.tuple_(results.c.task_id, results.c.input_hash).in_(pairs_param()),
            results.c.state == int(TaskState.SUCCEEDED),
            results.c.job_id != job_id,
        )
        .order_by(results.c.seq)
    )
    found: dict[tuple[str, str], sa.Row] = {}
    for part in chunks(candidates):
        params = {"ids": [tid for tid, _ in part], "pairs": [tuple(p) for p in part]}
        found.update({(r.task_id, r.input_hash): r for r in conn.execute(query, params)})
    return found


def _claim_pending(conn: sa.Connection, job_id: str, keys: Sequence[tuple[str, str]]) -> set[str]:
    """CAS PENDING -> SUCCEEDED for tasks whose stored input hash matches; returns the winners."""
    query = (
        sa.update(tasks)
        .where(
            tasks.c.job_id == job_id,
            tasks.c.task_id.in_(ids_param()),
            sa.tuple_(tasks.c.task_id, tasks.c.input_hash).in_(pairs_param()),
            tasks.c.state == int(TaskState.PENDING),
        )
        .values(state=int(TaskState.SUCCEEDED))
        .returning(tasks.c.task_id)
    )
    won: set[str] = set()
    for part in chunks(keys):
        params = {"ids": [tid for tid, _ in part], "pairs": [tuple(k) for k in part]}
        won.update(conn.execute(query, params).scalars())
    return won


def reuse_results(
    conn: sa.Connection, job_id: str, name: str, candidates: Sequence[tuple[str, str]], now: float
) -> set[str]:
    if not candidates or job_name_locked(conn, job_id) is None:
        return set()
    found = _reusable(conn, job_id, name, candidates)
    keys = [key for key in dict.fromkeys(candidates) if key in found]
    won = _claim_pending(conn, job_id, keys) if keys else set()
    rows = [
        _result_row(
            job_id, name, input_hash, now, True,
            task_id=task_id, state=int(TaskState.SUCCEEDED), attempts=found[key].attempts,
            result=found[key].result, prompt_tokens=found[key].prompt_tokens,
            completion_tokens=found[key].completion_tokens,
        )
        for key in keys
        if (task_id := key[0]) in won and (input_hash := key[1])
    ]  # fmt: skip
    insert_results(conn, rows)
    return won


def counts(conn: sa.Connection, job_id: str) -> dict[TaskState, int]:
    query = (
        sa.select(tasks.c.state, sa.func.count())
        .where(tasks.c.job_id == job_id)
        .group_by(tasks.c.state)
    )
    found = dict(conn.execute(query).tuples().all())
    return {state: found.get(int(state), 0) for state in TaskState}


def usage(conn: sa.Connection, job_id: str) -> tuple[int, int]:
    query = sa.select(
        sa.func.coalesce(sa.func.sum(results.c.prompt_tokens), 0),
        sa.func.coalesce(sa.func.sum(results.c.completion_tokens), 0),
    ).where(results.c.job_id == job_id)
    prompt, completion = conn.execute(query).one()
    return int(prompt), int(completion)


def results_after(
    conn: sa.Connection, job_id: str, after_seq: int, limit: int
) -> list[ResultRecord]:
    query = (
        sa.select(*_RESULT_COLUMNS)
        .where(results.c.job_id == job_id, results.c.seq > after_seq)
        .order_by(results.c.seq)
        .limit(limit)
    )
    return [_result_from_row(row) for row in conn.execute(query)]
