"""Sync operations on uploaded input files (job_inputs) and on the expansion lease.

An uploaded file is stored in pieces as it streams in, under an input id the job row
names once the job is accepted; any replica reads it back piece by piece, so the job
can be expanded by another replica than the one that received it. The pieces go when
the job is expanded or ends (job_ops), and at start-up those of no job that are older
than an upload can last (a replica that died mid-upload).

Expansion is leased: the job row names its expander, every chunk of tasks is stored
only while the row still names the replica that rendered it (`fence`), and a replica
takes an unexpanded job over only when its expander is no live replica
(`claim_expansion`), so exactly one replica stores each chunk.
"""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.records import TERMINAL_JOB_STATES, ExpansionLost
from gateway.store.schema import job_inputs, jobs, replicas, tasks

PIECE_BYTES = 1024 * 1024  # an uploaded file is stored in pieces of this size


def add_piece(conn: sa.Connection, input_id: str, seq: int, data: bytes, now: float) -> None:
    conn.execute(job_inputs.insert().values(input_id=input_id, seq=seq, data=data, created_at=now))


def piece(conn: sa.Connection, input_id: str, seq: int) -> bytes | None:
    query = sa.select(job_inputs.c.data).where(
        job_inputs.c.input_id == input_id, job_inputs.c.seq == seq
    )
    data = conn.execute(query).scalar_one_or_none()
    return None if data is None else bytes(data)


def delete_input(conn: sa.Connection, input_id: str) -> int:
    if not input_id:
        return 0
    return conn.execute(job_inputs.delete().where(job_inputs.c.input_id == input_id)).rowcount


def delete_job_input(conn: sa.Connection, job_id: str) -> None:
    """The job's uploaded file, once nothing will expand the job again."""
    query = sa.select(jobs.c.input_id).where(jobs.c.job_id == job_id)
    delete_input(conn, conn.execute(query).scalar_one_or_none() or "")


def drop_stale(conn: sa.Connection, before: float) -> int:
    """Pieces stored before `before` that no job names: an upload whose replica died
    before the job was accepted, or a job whose pieces were left by an older version."""
    named = sa.select(jobs.c.input_id).where(jobs.c.input_id != "")
    stmt = job_inputs.delete().where(
        job_inputs.c.created_at < before, job_inputs.c.input_id.not_in(named)
    )
    return conn.execute(stmt).rowcount


def fence(conn: sa.Connection, job_id: str, expander: str) -> None:
    """Raises ExpansionLost unless the job row still names `expander` and is unexpanded.
    The last statement of a chunk's transaction: on PostgreSQL FOR SHARE waits for a
    takeover in progress and holds one off until the chunk commits, so the takeover's
    count of stored tasks includes the chunk or the chunk is rolled back."""
    query = sa.select(jobs.c.expander).where(jobs.c.job_id == job_id, ~jobs.c.expanded)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    if conn.execute(query).scalar_one_or_none() != expander:
        raise ExpansionLost(job_id)


def claim_expansion(conn: sa.Connection, job_id: str, replica_id: str) -> int | None:
    """Compare-and-set: the job's expansion passes to `replica_id` if the job is unfinished
    and unexpanded and its expander is no live replica (its row left `replicas`, or it
    never had one). Returns the tasks stored so far (where expansion resumes), or None
    when the job is not this replica's to take."""
    alive = sa.select(replicas.c.replica_id).where(replicas.c.replica_id != replica_id)
    stmt = (
        sa.update(jobs)
        .where(
            jobs.c.job_id == job_id,
            ~jobs.c.expanded,
            jobs.c.state.not_in([int(s) for s in TERMINAL_JOB_STATES]),
            sa.or_(jobs.c.expander == replica_id, jobs.c.expander.not_in(alive)),
        )
        .values(expander=replica_id)
    )
    if conn.execute(stmt).rowcount != 1:
        return None
    count = sa.select(sa.func.count()).select_from(tasks).where(tasks.c.job_id == job_id)
    return int(conn.execute(count).scalar_one())
