"""Sync operations on jobs and templates; each runs inside one transaction given by a backend."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.input_ops import delete_job_input
from gateway.store.records import (
    TERMINAL_JOB_STATES,
    JobRecord,
    JobState,
    OverCap,
    TemplateConflict,
    TemplateRecord,
)
from gateway.store.schema import jobs, results, templates


def insert_ignoring_conflicts(conn: sa.Connection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING, so a lost race leaves the transaction usable."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _job_values(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "name": job.name,
        "tenant": job.tenant,
        "priority": job.priority,
        "model": job.model,
        "task_type": job.task_type,
        "state": int(job.state),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "spec": json.dumps(job.spec, sort_keys=True),
        "idempotency_key": job.idempotency_key,
        "expanded": job.expanded,
        "total": job.total,
        "error": job.error,
        "principal": job.principal,
        "spec_sha256": job.spec_sha256,
        "expander": job.expander,
        "input_id": job.input_id,
    }


def _job_from_row(row: sa.Row, spec: dict[str, Any] | None = None) -> JobRecord:
    return JobRecord(
        job_id=row.job_id,
        name=row.name,
        tenant=row.tenant,
        priority=row.priority,
        model=row.model,
        task_type=row.task_type,
        state=JobState(row.state),
        created_at=row.created_at,
        finished_at=row.finished_at,
        spec=json.loads(row.spec) if spec is None else spec,
        idempotency_key=row.idempotency_key,
        expanded=bool(row.expanded),
        total=row.total,
        error=row.error,
        principal=row.principal,
        spec_sha256=row.spec_sha256,
        expander=row.expander,
        input_id=row.input_id,
    )


def _select_jobs() -> sa.Select:
    return sa.select(*jobs.c)


def create_job(
    conn: sa.Connection, job: JobRecord, cap: int | None = None
) -> tuple[JobRecord, bool]:
    """Inserts the job; with `cap`, only if its tenant's unfinished tasks (of every
    replica) plus the job's stay within it, else raises OverCap. The check and the insert
    are one transaction, and on PostgreSQL submissions of one tenant take turns on an
    advisory lock, so two replicas cannot both admit the last room."""
    if cap is not None:
        if conn.dialect.name == "postgresql":
            lock = sa.text("SELECT pg_advisory_xact_lock(7215, hashtext(:tenant))")
            conn.execute(lock, {"tenant": job.tenant})
        unfinished = unfinished_tasks(conn, job.tenant)
        if unfinished + job.total > cap:
            raise OverCap(job.tenant, unfinished)
    inserted = conn.execute(insert_ignoring_conflicts(conn, jobs), _job_values(job)).rowcount
    if inserted == 1:
        return job, True
    if job.idempotency_key is not None:
        found = job_by_idempotency_key(conn, job.idempotency_key, tenant=job.tenant)
        if found is not None:
            return found, False
    raise ValueError(f"job id {job.job_id!r} already exists")


def job_by_idempotency_key(
    conn: sa.Connection,
    key: str,
    *,
    tenant: str | None = None,
    principal: str | None = None,
    spec_sha256: str | None = None,
) -> JobRecord | None:
    """The oldest job with this key, of `tenant` / submitted by `principal` / of this spec
    (or of a store that kept no spec hash yet) when they are given."""
    query = _select_jobs().where(jobs.c.idempotency_key == key)
    if tenant is not None:
        query = query.where(jobs.c.tenant == tenant)
    if principal is not None:
        query = query.where(jobs.c.principal == principal)
    if spec_sha256 is not None:
        query = query.where(jobs.c.spec_sha256.in_([spec_sha256, ""]))
    row = conn.execute(query.order_by(jobs.c.created_at, jobs.c.job_id)).first()
    return None if row is None else _job_from_row(row)


def get_job(conn: sa.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(_select_jobs().where(jobs.c.job_id == job_id)).first()
    return None if row is None else _job_from_row(row)


def list_jobs(conn: sa.Connection, tenants: Collection[str] | None, limit: int) -> list[JobRecord]:
    query = _select_jobs().order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc()).limit(limit)
    if tenants is not None:
        query = query.where(jobs.c.tenant.in_(list(tenants)))
    return [_job_from_row(row) for row in conn.execute(query)]


def octets(conn: sa.Connection, column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """The size of a text column in UTF-8 bytes (0 for NULL), in SQL."""
    if conn.dialect.name == "postgresql":
        size = sa.func.octet_length(column)
    else:  # SQLite's length() counts characters; a blob's length is its bytes
        size = sa.func.length(sa.cast(column, sa.LargeBinary))
    return sa.func.coalesce(size, 0)


_LISTED_COLUMNS = [c for c in jobs.c if c.name != "spec"]  # a spec can hold megabytes


def job_page(
    conn: sa.Connection,
    tenant: str | None,
    tenants: Collection[str] | None,
    limit: int,
    before: tuple[float, str] | None,
    max_bytes: int,
) -> tuple[list[JobRecord], bool]:
    """Jobs newest first, after the position `before` (created_at, job_id) of the last
    page, without their specs, of `tenant` / of `tenants` when given: at most `limit` of
    them, and at most `max_bytes` of names,
    idempotency keys and errors (one job at any size). Returns (jobs, more may follow).
    Sizes are read first, so a job past the budget is never loaded."""
    size = octets(conn, jobs.c.name) + octets(conn, jobs.c.idempotency_key)
    size = size + octets(conn, jobs.c.error)
    query = sa.select(jobs.c.job_id, size).order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
    if tenant is not None:
        query = query.where(jobs.c.tenant == tenant)
    if tenants is not None:
        query = query.where(jobs.c.tenant.in_(list(tenants)))
    if before is not None:
        query = query.where(sa.tuple_(jobs.c.created_at, jobs.c.job_id) < sa.tuple_(*before))
    ids, more = within(conn.execute(query.limit(limit + 1)), limit, max_bytes)
    if not ids:
        return [], False
    rows = conn.execute(
        sa.select(*_LISTED_COLUMNS)
        .where(jobs.c.job_id.in_(ids))
        .order_by(jobs.c.created_at.desc(), jobs.c.job_id.desc())
    )
    return [_job_from_row(row, spec={}) for row in rows], more


def within(rows: Any, limit: int, max_bytes: int) -> tuple[list[Any], bool]:
    """Keys of (key, size) rows up to `limit` and `max_bytes` (at least one), and whether
    any row was left out."""
    keys: list[Any] = []
    total = 0
    for key, size in rows:
        if len(keys) >= limit or (keys and total + size > max_bytes):
            return keys, True
        keys.append(key)
        total += size
    return keys, False


def unfinished_tasks(conn: sa.Connection, tenant: str) -> int:
    """Tasks of the tenant's unfinished jobs without a result yet, rows not yet expanded
    included (a job's total is its counted rows from the start)."""
    open_jobs = sa.select(jobs.c.job_id).where(
        jobs.c.tenant == tenant, jobs.c.state.not_in([int(s) for s in TERMINAL_JOB_STATES])
    )
    total = sa.select(sa.func.coalesce(sa.func.sum(jobs.c.total), 0)).where(
        jobs.c.job_id.in_(open_jobs)
    )
    done = sa.select(sa.func.count()).where(results.c.job_id.in_(open_jobs))
    return max(int(conn.execute(total).scalar_one()) - int(conn.execute(done).scalar_one()), 0)


def unfinished_jobs(conn: sa.Connection) -> list[JobRecord]:
    query = (
        _select_jobs()
        .where(jobs.c.state.not_in([int(s) for s in TERMINAL_JOB_STATES]))
        .order_by(jobs.c.created_at, jobs.c.job_id)
    )
    return [_job_from_row(row) for row in conn.execute(query)]


def set_job_state(
    conn: sa.Connection,
    job_id: str,
    state: JobState,
    expected: Collection[JobState] | None,
    error: str | None,
    now: float,
) -> bool:
    values: dict[str, Any] = {"state": int(state)}
    if state.is_terminal:
        values["finished_at"] = now
    if error is not None:
        values["error"] = error
    query = sa.update(jobs).where(jobs.c.job_id == job_id).values(values)
    if expected is not None:
        query = query.where(jobs.c.state.in_([int(s) for s in expected]))
    changed = conn.execute(query).rowcount == 1
    if changed and state.is_terminal:
        delete_job_input(conn, job_id)  # an ended job is never expanded again
    return changed


def set_job_priority(conn: sa.Connection, job_id: str, priority: int) -> bool:
    query = sa.update(jobs).where(jobs.c.job_id == job_id).values(priority=priority)
    return conn.execute(query).rowcount == 1


def mark_expanded(conn: sa.Connection, job_id: str, total: int) -> None:
    query = sa.update(jobs).where(jobs.c.job_id == job_id).values(expanded=True, total=total)
    if conn.execute(query).rowcount != 1:
        raise KeyError(f"job {job_id!r} not found")
    delete_job_input(conn, job_id)  # every row is a task now: the file is read no more


def register_template(
    conn: sa.Connection, tenant: str, name: str, version: str, body: str, now: float
) -> tuple[float, bool]:
    values = {"tenant": tenant, "name": name, "version": version, "body": body, "created_at": now}
    if conn.execute(insert_ignoring_conflicts(conn, templates), values).rowcount == 1:
        return now, True
    row = conn.execute(
        sa.select(templates.c.body, templates.c.created_at).where(
            templates.c.tenant == tenant, templates.c.name == name, templates.c.version == version
        )
    ).one()
    if row.body != body:
        raise TemplateConflict(name, version)
    return row.created_at, False


def list_templates(
    conn: sa.Connection, name: str | None, tenants: Collection[str] | None
) -> list[TemplateRecord]:
    query = sa.select(*templates.c).order_by(
        templates.c.name, templates.c.created_at, templates.c.version, templates.c.tenant
    )
    if name is not None:
        query = query.where(templates.c.name == name)
    if tenants is not None:
        query = query.where(templates.c.tenant.in_(list(tenants)))
    return [
        TemplateRecord(row.tenant, row.name, row.version, row.body, row.created_at)
        for row in conn.execute(query)
    ]


def template_page(
    conn: sa.Connection,
    name: str | None,
    tenants: Collection[str] | None,
    limit: int,
    after: tuple[str, float, str, str] | None,
    max_bytes: int,
) -> tuple[list[TemplateRecord], bool]:
    """Templates by name then age (then tenant), of `tenants` when given ('' for the shared
    ones), after the position `after` (name, created_at, version, tenant) of the last page:
    at most `limit` of them and `max_bytes` of bodies and names (one at any size). Returns
    (templates, more may follow)."""
    order = (templates.c.name, templates.c.created_at, templates.c.version, templates.c.tenant)
    size = octets(conn, templates.c.body) + octets(conn, templates.c.name)
    size = size + octets(conn, templates.c.version)
    query = sa.select(*order, size).order_by(*order)
    if name is not None:
        query = query.where(templates.c.name == name)
    if tenants is not None:
        query = query.where(templates.c.tenant.in_(list(tenants)))
    if after is not None:
        query = query.where(sa.tuple_(*order) > sa.tuple_(*after))
    sized = [((tn, n, v), size) for n, _t, v, tn, size in conn.execute(query.limit(limit + 1))]
    keys, more = within(sized, limit, max_bytes)
    if not keys:
        return [], False
    key = sa.tuple_(templates.c.tenant, templates.c.name, templates.c.version)
    rows = conn.execute(sa.select(*templates.c).where(key.in_(keys)).order_by(*order))
    return [TemplateRecord(r.tenant, r.name, r.version, r.body, r.created_at) for r in rows], more
