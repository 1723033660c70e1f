"""Sync operations on the replicas table and on the leases a replica holds."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.records import TaskState
from gateway.store.schema import replicas, tasks
from gateway.store.task_ops import state_is

_b = sa.bindparam
_RUNNING = int(TaskState.RUNNING)


def owner_prefix(replica_id: str) -> str:
    return f"{replica_id}/"


def register(conn: sa.Connection, replica_id: str, now: float) -> None:
    conn.execute(replicas.insert().values(replica_id=replica_id, started_at=now, heartbeat_at=now))


def heartbeat(conn: sa.Connection, replica_id: str, now: float) -> bool:
    """False when the row is gone: the others presumed this replica dead."""
    stmt = replicas.update().where(replicas.c.replica_id == replica_id).values(heartbeat_at=now)
    return conn.execute(stmt).rowcount > 0


def live(conn: sa.Connection, since: float) -> list[str]:
    query = sa.select(replicas.c.replica_id).where(replicas.c.heartbeat_at >= since)
    return list(conn.execute(query).scalars())


def _release(where: sa.ColumnElement[bool]) -> sa.Update:
    return (
        sa.update(tasks)
        .where(state_is(_RUNNING), where)
        .values(
            state=int(TaskState.PENDING),
            lease_owner=None,
            lease_expires_at=None,
            requeues=tasks.c.requeues + 1,
        )
    )


def reclaim_dead(conn: sa.Connection, since: float) -> dict[str, dict[str, list[str]]]:
    """Replicas whose last heartbeat is before `since`: their rows go and their leases
    come back to PENDING at no cost to the tasks. {replica_id: {job_id: task ids released}}:
    the ids, so the replica that reclaimed them can send exactly those first."""
    dead = list(
        conn.execute(
            sa.select(replicas.c.replica_id).where(replicas.c.heartbeat_at < since)
        ).scalars()
    )
    released: dict[str, dict[str, list[str]]] = {}
    for replica_id in dead:
        prefix = owner_prefix(replica_id)
        stmt = _release(tasks.c.lease_owner.startswith(prefix, autoescape=True))
        by_job: dict[str, list[str]] = {}
        for job_id, task_id in conn.execute(stmt.returning(tasks.c.job_id, tasks.c.task_id)):
            by_job.setdefault(job_id, []).append(task_id)
        released[replica_id] = by_job
        conn.execute(replicas.delete().where(replicas.c.replica_id == replica_id))
    return released


def release_orphans(conn: sa.Connection, live_ids: list[str]) -> int:
    """Leases whose owner is no live replica (an earlier process on this store that left
    no row, or one that predates replicas): back to PENDING at no cost."""
    kept = [tasks.c.lease_owner.startswith(owner_prefix(r), autoescape=True) for r in live_ids]
    where = sa.or_(tasks.c.lease_owner.is_(None), ~sa.or_(*kept)) if kept else sa.true()
    return conn.execute(_release(where)).rowcount


def leave(conn: sa.Connection, replica_id: str) -> None:
    conn.execute(replicas.delete().where(replicas.c.replica_id == replica_id))
