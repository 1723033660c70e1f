"""Tables of the job store, shared by the SQLite and PostgreSQL backends (SQLAlchemy Core)."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.records import TaskState

# Integer primary keys: a rowid alias on SQLite, a 64-bit identity on PostgreSQL.
_RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RUNNING = sa.text(f"state = {int(TaskState.RUNNING)}")
_EMPTY = sa.text("''")

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("tenant", sa.String, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("model", sa.String, nullable=False),
    sa.Column("task_type", sa.String, nullable=False),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("finished_at", sa.Double),
    sa.Column("spec", sa.Text, nullable=False),  # JSON text
    sa.Column("idempotency_key", sa.String),
    sa.Column("expanded", sa.Boolean, nullable=False, default=False),
    sa.Column("total", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    # Who submitted it ('' without authentication), and the SHA-256 of what was submitted
    # (the JobSpec; '' for jobs stored before it was kept).
    sa.Column("principal", sa.String, nullable=False, server_default=_EMPTY),
    sa.Column("spec_sha256", sa.String, nullable=False, server_default=_EMPTY),
    # The replica that expands the job (its lease on expansion: another takes the job over
    # once this one's row is gone from `replicas`), and the key of its uploaded input file
    # in job_inputs ('' for none).
    sa.Column("expander", sa.String, nullable=False, server_default=_EMPTY),
    sa.Column("input_id", sa.String, nullable=False, server_default=_EMPTY),
    # Keys are per tenant, so one tenant cannot take another's. NULL keys do not collide,
    # so only keyed submissions are deduplicated.
    sa.Index("jobs_tenant_idempotency_key", "tenant", "idempotency_key", unique=True),
    sa.Index("jobs_state", "state"),
    sa.Index("jobs_tenant_created", "tenant", "created_at"),
    sa.Index("jobs_created", "created_at"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", _RowId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id"), nullable=False),
    sa.Column("task_id", sa.String, nullable=False),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("input_hash", sa.String, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("est_tokens", sa.Integer, nullable=False),
    sa.Column("shard_key", sa.String),
    sa.Column("deadline", sa.Double),
    sa.Column("lease_owner", sa.String),
    sa.Column("lease_expires_at", sa.Double),
    sa.Column("not_before", sa.Double),
    sa.Column("last_error", sa.Text),
    # Leases given back at no cost to the task (a gateway restart or drain, a server that
    # refused it unrun): attempts - requeues is what the task has spent.
    sa.Column("requeues", sa.Integer, nullable=False, server_default="0"),
    sa.Index("tasks_job_task", "job_id", "task_id", unique=True),
    sa.Index("tasks_job_state_idx", "job_id", "state", "idx"),
    # Partial: only running tasks hold leases, so these stay small.
    sa.Index("tasks_lease_owner", "lease_owner", sqlite_where=_RUNNING, postgresql_where=_RUNNING),
    sa.Index(
        "tasks_lease_expiry", "lease_expires_at", sqlite_where=_RUNNING, postgresql_where=_RUNNING
    ),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("seq", _RowId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id"), nullable=False),
    sa.Column("task_id", sa.String, nullable=False),
    # Denormalised from jobs and tasks so that reuse is one index lookup.
    sa.Column("job_name", sa.String, nullable=False),
    sa.Column("input_hash", sa.String, nullable=False),
    sa.Column("state", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("result", sa.LargeBinary, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("finished_at", sa.Double, nullable=False),
    sa.Column("reused", sa.Boolean, nullable=False),
    sa.Column("requeues", sa.Integer, nullable=False, server_default="0"),
    sa.Index("results_job_seq", "job_id", "seq"),
    # What makes "a result is recorded once" hold even if a state check were missed.
    sa.Index("results_job_task", "job_id", "task_id", unique=True),
    sa.Index("results_reuse", "job_name", "task_id", "input_hash"),
)

# A job with an `evaluate:` section: each task's reference and input, kept beside the task
# (never sent to a server), and its scores (JSON) once its result is recorded.
evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("job_id", sa.String, sa.ForeignKey("jobs.job_id"), primary_key=True),
    sa.Column("task_id", sa.String, primary_key=True),
    sa.Column("reference", sa.Text, nullable=False),
    sa.Column("input", sa.Text, nullable=False),
    sa.Column("scores", sa.Text),
)

# Template names are per tenant ('' is shared by every tenant). It replaced `templates`
# (one global namespace), whose rows backends.create_schema copies in as shared ones.
templates = sa.Table(
    "tenant_templates",
    metadata,
    sa.Column("tenant", sa.String, primary_key=True),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("version", sa.String, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

# Gateway processes sharing this store, each with a heartbeat: a lease owner is
# "<replica_id>/<server>#<stream>", so a dead replica's leases can be found and reclaimed.
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("replica_id", sa.String, primary_key=True),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("heartbeat_at", sa.Double, nullable=False),
)

# Uploaded input files, in pieces of about a MiB (neither backend holds one huge value
# well), stored as they stream in, so whichever replica expands the job reads them; a
# job's pieces go once it is expanded or ends (job_ops), those of no job at start-up.
job_inputs = sa.Table(
    "job_inputs",
    metadata,
    sa.Column("input_id", sa.String, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)

# Indexes of older stores that newer ones replaced: create_schema drops them.
LEGACY_INDEXES = {"jobs": ("jobs_idempotency_key",)}  # global keys, now per tenant
LEGACY_TEMPLATES = "templates"
