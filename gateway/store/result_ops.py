"""Sync batch operations that record, reuse and read results; each runs inside one transaction.

A result row is only inserted for a task that the same transaction moved to a
final state by compare-and-set, and (job_id, task_id) is unique in results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from gateway.store import job_ops, sqlite_fast
from gateway.store.records import OPEN_TASK_STATES, Outcome, ResultRecord, TaskState
from gateway.store.schema import jobs, results, tasks
from gateway.store.task_ops import (
    IDS,
    PAIRS,
    RUNNING_AT_ATTEMPT,
    STATE_OF,
    chunks,
    state_filter,
    state_is,
)

_b = sa.bindparam
_SUCCEEDED = int(TaskState.SUCCEEDED)
_RESULT_COLUMNS = [c for c in results.c if c.name not in ("job_name", "input_hash")]


def _result_from_row(r: sa.Row) -> ResultRecord:
    # Positional: _RESULT_COLUMNS are in ResultRecord's field order.
    return ResultRecord(
        r[0], r[1], r[2], STATE_OF[r[3]], r[4], r[5], r[6], r[7], r[8], bool(r[9]), r[10]
    )


# On PostgreSQL FOR UPDATE serialises result inserts per job, so seqs commit in order;
# SQLite has one writer anyway and SQLAlchemy leaves the clause out there.
_JOB_NAME_LOCKED = sa.select(jobs.c.name).where(jobs.c.job_id == _b("jid")).with_for_update()
# Without sort_by_parameter_order SQLAlchemy sends multi-row VALUES, not a row at a time.
_INSERT_RESULTS = results.insert().returning(*_RESULT_COLUMNS)


def job_name_locked(conn: sa.Connection, job_id: str) -> str | None:
    return conn.execute(_JOB_NAME_LOCKED, {"jid": job_id}).scalar_one_or_none()


def insert_results(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[ResultRecord]:
    if not rows:
        return []
    inserted = [_result_from_row(row) for row in conn.execute(_INSERT_RESULTS, rows)]
    inserted.sort(key=lambda r: r.seq)
    return inserted


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


# --- recording outcomes ---------------------------------------------------------------------

_FINISH = (
    sa.update(tasks)
    .where(*RUNNING_AT_ATTEMPT)
    .values(state=_b("to_state"), lease_owner=None, lease_expires_at=None)
    .returning(tasks.c.task_id, tasks.c.attempts, tasks.c.input_hash)
)
_SET_ERROR = (
    sa.update(tasks)
    .where(tasks.c.job_id == _b("jid"), tasks.c.task_id == _b("tid"))
    .values(last_error=_b("err"))
)


def _finish_group(
    conn: sa.Connection, job_id: str, state: TaskState, group: Sequence[Outcome]
) -> dict[tuple[str, int], str]:
    """CAS RUNNING at the outcome's attempt -> state; returns {(task_id, attempt): input_hash}."""
    won: dict[tuple[str, int], str] = {}
    for part in chunks(group):
        params = {
            "jid": job_id,
            "to_state": int(state),
            "ids": [o.task_id for o in part],
            "pairs": [(o.task_id, o.attempt) for o in part],
        }
        won.update(((r[0], r[1]), r[2]) for r in conn.execute(_FINISH, params))
    return won


def _first_per_attempt(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """A repeated (task_id, attempt) in one batch: the first one reported wins."""
    firsts: dict[tuple[str, int], Outcome] = {}
    for o in outcomes:
        firsts.setdefault((o.task_id, o.attempt), o)
    return list(firsts.values())


def record_outcomes(
    conn: sa.Connection, job_id: str, outcomes: Sequence[Outcome], now: float
) -> list[ResultRecord]:
    for o in outcomes:
        if not o.state.is_terminal:
            raise ValueError(f"outcome for task {o.task_id!r}: state {o.state.name} is not final")
    job_name = job_name_locked(conn, job_id)
    if job_name is None or not outcomes:
        return []
    unique = _first_per_attempt(outcomes)
    if sqlite_fast.usable(conn):
        return sqlite_fast.record_outcomes(conn, job_id, job_name, unique, now)
    won: dict[tuple[str, int], str] = {}
    for state in {o.state for o in unique}:
        won.update(_finish_group(conn, job_id, state, [o for o in unique if o.state == state]))
    rows, errors = [], []
    for o in unique:
        input_hash = won.get((o.task_id, o.attempt))
        if input_hash is None:
            continue  # lost the compare-and-set: a late or duplicate report
        rows.append(
            _result_row(
                job_id, job_name, input_hash, now, False,
                task_id=o.task_id, state=int(o.state), attempts=o.attempt - o.requeues,
                result=o.result, prompt_tokens=o.prompt_tokens,
                completion_tokens=o.completion_tokens, requeues=o.requeues,
            )
        )  # fmt: skip
        if o.error is not None:
            errors.append({"jid": job_id, "tid": o.task_id, "err": o.error})
    if errors:
        conn.execute(_SET_ERROR, errors)
    return insert_results(conn, rows)


_OPEN_IDS = (
    sa.select(tasks.c.id)
    .where(tasks.c.job_id == _b("jid"), state_is(*OPEN_TASK_STATES))
    .order_by(tasks.c.idx)
    .limit(_b("limit"))
    .scalar_subquery()
)
_FINISH_OPEN = (
    sa.update(tasks)
    .where(tasks.c.id.in_(_OPEN_IDS))
    .values(state=_b("to_state"), lease_owner=None, lease_expires_at=None, last_error=_b("error"))
    .returning(tasks.c.task_id, tasks.c.idx, tasks.c.attempts, tasks.c.input_hash, tasks.c.requeues)
)


def finish_unfinished(
    conn: sa.Connection,
    job_id: str,
    state: TaskState,
    result_for: Callable[[str, int], bytes],
    now: float,
    error: str | None,
    limit: int,
) -> list[ResultRecord]:
    if not state.is_terminal:
        raise ValueError(f"finish_unfinished: state {state.name} is not final")
    job_name = job_name_locked(conn, job_id)
    if job_name is None:
        return []
    params = {"jid": job_id, "to_state": int(state), "error": error, "limit": limit}
    ended = sorted(conn.execute(_FINISH_OPEN, params), key=lambda r: r.idx)
    rows = [
        _result_row(
            job_id, job_name, r.input_hash, now, False,
            task_id=r.task_id, state=int(state), attempts=r.attempts - r.requeues,
            result=result_for(r.task_id, r.attempts - r.requeues), prompt_tokens=0,
            completion_tokens=0, requeues=r.requeues,
        )
        for r in ended
    ]  # fmt: skip
    return insert_results(conn, rows)


# --- reuse ----------------------------------------------------------------------------------

_REUSABLE = (
    sa.select(
        results.c.task_id,
        results.c.input_hash,
        results.c.attempts,
        results.c.result,
        results.c.prompt_tokens,
        results.c.completion_tokens,
    )
    .where(
        results.c.job_name == _b("name"),
        results.c.task_id.in_(IDS),
        sa.tuple_(results.c.task_id, results.c.input_hash).in_(PAIRS),
        results.c.state == _SUCCEEDED,
        results.c.job_id != _b("jid"),
    )
    .order_by(results.c.seq)
)
# Only a task no server has touched yet, and only if its stored input hash matches.
_CLAIM_PENDING = (
    sa.update(tasks)
    .where(
        tasks.c.job_id == _b("jid"),
        tasks.c.task_id.in_(IDS),
        sa.tuple_(tasks.c.task_id, tasks.c.input_hash).in_(PAIRS),
        state_filter(TaskState.PENDING),
    )
    .values(state=_SUCCEEDED)
    .returning(tasks.c.task_id)
)


def _keyed(job_id: str, keys: Sequence[tuple[str, str]], **more: Any) -> dict[str, Any]:
    return {
        "jid": job_id,
        "ids": [k[0] for k in keys],
        "pairs": [tuple(k) for k in keys],
        **more,
    }


_ANY_EARLIER = (
    sa.select(results.c.seq)
    .where(results.c.job_name == _b("name"), results.c.job_id != _b("jid"))
    .limit(1)
)


def has_earlier_results(conn: sa.Connection, job_id: str, name: str) -> bool:
    """Whether any other job of this name has results (uses the reuse index)."""
    return conn.execute(_ANY_EARLIER, {"name": name, "jid": job_id}).first() is not None


def reuse_results(
    conn: sa.Connection, job_id: str, name: str, candidates: Sequence[tuple[str, str]], now: float
) -> set[str]:
    if not candidates or job_name_locked(conn, job_id) is None:
        return set()
    found: dict[tuple[str, str], sa.Row] = {}  # the latest success per key wins (ordered by seq)
    for part in chunks(candidates):
        found.update(
            {(r[0], r[1]): r for r in conn.execute(_REUSABLE, _keyed(job_id, part, name=name))}
        )
    keys = [key for key in dict.fromkeys(candidates) if key in found]
    won: set[str] = set()
    for part in chunks(keys):
        won.update(conn.execute(_CLAIM_PENDING, _keyed(job_id, part)).scalars())
    rows = [
        _result_row(
            job_id, name, key[1], now, True,
            task_id=key[0], state=_SUCCEEDED, attempts=found[key].attempts,
            result=found[key].result, prompt_tokens=found[key].prompt_tokens,
            completion_tokens=found[key].completion_tokens, requeues=0,
        )
        for key in keys
        if key[0] in won
    ]  # fmt: skip
    insert_results(conn, rows)
    return won


# --- reading --------------------------------------------------------------------------------

_COUNTS = (
    sa.select(tasks.c.state, sa.func.count())
    .where(tasks.c.job_id == _b("jid"))
    .group_by(tasks.c.state)
)
_USAGE = sa.select(
    sa.func.coalesce(sa.func.sum(results.c.prompt_tokens), 0),
    sa.func.coalesce(sa.func.sum(results.c.completion_tokens), 0),
).where(results.c.job_id == _b("jid"))
_AFTER = (
    sa.select(*_RESULT_COLUMNS)
    .where(results.c.job_id == _b("jid"), results.c.seq > _b("after_seq"))
    .order_by(results.c.seq)
    .limit(_b("limit"))
)


def counts(conn: sa.Connection, job_id: str) -> dict[TaskState, int]:
    found = {r[0]: r[1] for r in conn.execute(_COUNTS, {"jid": job_id})}
    return {state: found.get(int(state), 0) for state in TaskState}


_REUSED = sa.select(sa.func.count()).where(
    results.c.job_id == _b("jid"), results.c.reused == sa.true()
)


def reused_count(conn: sa.Connection, job_id: str) -> int:
    return int(conn.execute(_REUSED, {"jid": job_id}).scalar_one())


def usage(conn: sa.Connection, job_id: str) -> tuple[int, int]:
    prompt, completion = conn.execute(_USAGE, {"jid": job_id}).one()
    return int(prompt), int(completion)


_AFTER_SIZES = (
    sa.select(results.c.seq, sa.func.length(results.c.result))
    .where(results.c.job_id == _b("jid"), results.c.seq > _b("after_seq"))
    .order_by(results.c.seq)
    .limit(_b("limit"))
)
_UP_TO = (
    sa.select(*_RESULT_COLUMNS)
    .where(
        results.c.job_id == _b("jid"),
        results.c.seq > _b("after_seq"),
        results.c.seq <= _b("last_seq"),
    )
    .order_by(results.c.seq)
)


def results_after(
    conn: sa.Connection, job_id: str, after_seq: int, limit: int, max_bytes: int | None = None
) -> list[ResultRecord]:
    """Results after the cursor: at most `limit`, and with `max_bytes` at most that many
    bytes of results (one at any size), whose sizes are read first so that a result past
    the budget is never loaded."""
    params = {"jid": job_id, "after_seq": after_seq, "limit": limit}
    if max_bytes is None:
        return [_result_from_row(row) for row in conn.execute(_AFTER, params)]
    seqs, _ = job_ops.within(conn.execute(_AFTER_SIZES, params), limit, max_bytes)
    if not seqs:
        return []
    params["last_seq"] = seqs[-1]
    return [_result_from_row(row) for row in conn.execute(_UP_TO, params)]
