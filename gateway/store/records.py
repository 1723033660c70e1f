"""Plain data the job store reads and writes: states, rows and the store's errors."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TaskState(enum.IntEnum):
    """Same numbers as batchinfer.v1.TaskState in gateway.proto."""

    PENDING = 1
    RUNNING = 2
    RETRY_WAIT = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6

    @property
    def is_terminal(self) -> bool:
        return self >= TaskState.SUCCEEDED


class JobState(enum.IntEnum):
    """Same numbers as batchinfer.v1.JobState in gateway.proto."""

    QUEUED = 1
    RUNNING = 2
    PAUSED = 3
    COMPLETED = 4
    CANCELLED = 5
    FAILED = 6

    @property
    def is_terminal(self) -> bool:
        return self >= JobState.COMPLETED


# States a task can still leave; a task in any other state is final.
OPEN_TASK_STATES = (TaskState.PENDING, TaskState.RUNNING, TaskState.RETRY_WAIT)
TERMINAL_JOB_STATES = (JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED)


@dataclass(slots=True)
class JobRecord:
    job_id: str
    name: str
    tenant: str
    priority: int
    model: str
    task_type: str
    state: JobState
    created_at: float
    finished_at: float | None
    # JSON-able: everything the gateway needs to resume the job after a restart.
    spec: dict = field(default_factory=dict)
    idempotency_key: str | None = None
    expanded: bool = False
    total: int = 0
    error: str | None = None
    principal: str = ""  # who submitted it ('' without authentication)
    spec_sha256: str = ""  # of what was submitted: a key repeated with another spec is refused
    expander: str = ""  # the replica that expands it (a lease: see input_ops.claim_expansion)
    input_id: str = ""  # its uploaded input file in the store's job_inputs ('' for none)


class ExpansionLost(Exception):
    """Another replica took over the job's expansion (this one was presumed dead): the
    chunk was not stored, and this replica expands no more of the job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id}: another replica took over its expansion")
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """A registered template; tenant '' is shared by every tenant."""

    tenant: str
    name: str
    version: str
    body: str
    created_at: float


@dataclass(frozen=True, slots=True)
class NewTask:
    task_id: str
    idx: int
    input_hash: str
    payload: bytes  # serialized batchinfer.v1.Task, opaque to the store
    est_tokens: int
    shard_key: str | None = None
    deadline: float | None = None


@dataclass(slots=True)
class TaskRecord:
    job_id: str
    task_id: str
    idx: int
    state: TaskState
    attempts: int
    input_hash: str
    payload: bytes
    est_tokens: int
    shard_key: str | None
    deadline: float | None
    lease_owner: str | None
    lease_expires_at: float | None
    not_before: float | None
    last_error: str | None
    requeues: int = 0  # leases given back at no cost; attempts - requeues were spent

    @property
    def spent(self) -> int:
        return self.attempts - self.requeues


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished attempt, reported by the dispatcher."""

    task_id: str
    attempt: int
    state: TaskState  # SUCCEEDED | FAILED | CANCELLED
    result: bytes  # serialized batchinfer.v1.TaskResult, opaque to the store
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    requeues: int = 0  # of the attempt's leases, those that cost nothing


@dataclass(slots=True)
class ResultRecord:
    seq: int  # cursor: strictly increasing in completion order within a job
    job_id: str
    task_id: str
    state: TaskState
    attempts: int  # attempts spent: executions that ended, and servers that died with it
    result: bytes
    prompt_tokens: int
    completion_tokens: int
    finished_at: float
    reused: bool
    requeues: int = 0  # leases given back at no cost (gateway restarts, drains, refusals)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A task's reference and input (job files with `evaluate:`), and its scores as JSON
    text once its result is recorded (None before)."""

    task_id: str
    reference: str
    input: str
    scores: str | None = None


class DuplicateTaskId(ValueError):
    """Two input rows of one job render to the same task id."""

    def __init__(self, job_id: str, task_id: str, first_idx: int, second_idx: int) -> None:
        super().__init__(
            f"job {job_id}: task id {task_id!r} appears twice, "
            f"in input row {first_idx} and in input row {second_idx}"
        )
        self.job_id = job_id
        self.task_id = task_id
        self.first_idx = first_idx
        self.second_idx = second_idx


class OverCap(Exception):
    """A job would take its tenant past its admission cap; `unfinished` counts the
    tenant's unfinished tasks in the store (every replica's) when it was checked."""

    def __init__(self, tenant: str, unfinished: int) -> None:
        super().__init__(f"tenant {tenant!r} has {unfinished:,} unfinished tasks")
        self.tenant = tenant
        self.unfinished = unfinished


class TemplateConflict(ValueError):
    """A template name and version already registered with a different body."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(
            f"template {name!r} version {version!r} is already registered with a different body"
        )
        self.name = name
        self.version = version
