"""Sync operations on jobs and templates; each runs inside one transaction given by a backend."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway.store.records import (
    TERMINAL_JOB_STATES,
    JobRecord,
    JobState,
    TemplateConflict,
    TemplateRecord,
)
from gateway.store.schema import jobs, results, tasks, templates


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
    }


def _job_from_row(row: sa.Row) -> JobRecord:
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
        spec=json.loads(row.spec),
        idempotency_key=row.idempotency_key,
        expanded=bool(row.expanded),
        total=row.total,
        error=row.error,
        principal=row.principal,
        spec_sha256=row.spec_sha256,
    )


def _select_jobs() -> sa.Select:
    return sa.select(*jobs.c)


def create_job(conn: sa.Connection, job: JobRecord) -> tuple[JobRecord, bool]:
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
    return conn.execute(query).rowcount == 1


def set_job_priority(conn: sa.Connection, job_id: str, priority: int) -> bool:
    query = sa.update(jobs).where(jobs.c.job_id == job_id).values(priority=priority)
    return conn.execute(query).rowcount == 1


def mark_expanded(conn: sa.Connection, job_id: str, total: int) -> None:
    query = sa.update(jobs).where(jobs.c.job_id == job_id).values(expanded=True, total=total)
    if conn.execute(query).rowcount != 1:
        raise KeyError(f"job {job_id!r} not found")


def delete_job(conn: sa.Connection, job_id: str) -> None:
    conn.execute(sa.delete(results).where(results.c.job_id == job_id))
    conn.execute(sa.delete(tasks).where(tasks.c.job_id == job_id))
    conn.execute(sa.delete(jobs).where(jobs.c.job_id == job_id))


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


def get_template(conn: sa.Connection, tenant: str, name: str, version: str) -> str | None:
    query = sa.select(templates.c.body).where(
        templates.c.tenant == tenant, templates.c.name == name, templates.c.version == version
    )
    return conn.execute(query).scalar_one_or_none()


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
