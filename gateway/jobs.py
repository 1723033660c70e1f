"""What the engine keeps in memory about one job and its tasks."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.store import JobRecord, JobState, TaskState


@dataclass(slots=True)
class TaskEntry:
    """A task held in memory: queued in the scheduler or in flight on a server."""

    key: int
    job_id: str
    task_id: str
    payload: bytes
    est_tokens: int
    attempts: int  # leases taken: the compare-and-set token of the current one
    deadline: float | None = None
    requeues: int = 0  # leases given back at no cost
    refused: bool = False  # its last answer: a draining server's refusal (not run)
    shard_key: str | None = None
    owner: str | None = None
    link: Any = None  # the ServerLink it was sent on
    sent_at: float = 0.0
    span: Any = None
    future: Any = None  # online tasks (Execute, Generate): resolved with the result
    model: str = ""
    task_type: str = ""
    first: bool = False  # a dead replica's lease taken over: the server runs it first

    @property
    def spent(self) -> int:
        """Attempts that count against retry.max_attempts: executions that ended, and
        servers that died with the task."""
        return self.attempts - self.requeues


@dataclass
class JobCounters:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    reused: int = 0
    running: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    def add_terminal(self, state: TaskState) -> None:
        if state == TaskState.SUCCEEDED:
            self.succeeded += 1
        elif state == TaskState.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1


@dataclass
class JobRun:
    """An unfinished job the engine drives."""

    record: JobRecord
    spec: Any  # jobfile.JobSpec
    counters: JobCounters = field(default_factory=JobCounters)
    expanded: bool = False
    cursor: int = -1  # highest task idx loaded from the store
    in_memory: set[str] = field(default_factory=set)
    refilling: bool = False
    exhausted: bool = False  # the cursor reached the end of what the store holds
    rescan_at: float = 0.0
    deadline_at: float | None = None
    trace_context: Any = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    expansion: asyncio.Task[None] | None = None
    completing: bool = False  # a completion check is reading the store

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def state(self) -> JobState:
        return self.record.state

    @property
    def tasks_vary(self) -> bool:
        """Whether its tasks may differ in type or have been refused at expansion
        (Task.rejected): only an OpenAI batch file's lines can (jobfile/openai_batch.py);
        every task of any other job has the job's task type."""
        return bool(self.spec.inputs.format == "openai-batch")

    def notify(self) -> None:
        """Wakes everyone waiting for news of this job."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def finished(self) -> bool:
        return self.expanded and self.counters.done >= self.counters.total
