"""The gateway's job store: jobs, tasks and results in SQLite (default) or PostgreSQL."""

from gateway.store.records import (
    DuplicateTaskId,
    Evaluation,
    ExpansionLost,
    JobRecord,
    JobState,
    NewTask,
    Outcome,
    OverCap,
    ResultRecord,
    TaskRecord,
    TaskState,
    TemplateConflict,
    TemplateRecord,
)
from gateway.store.store import JobStore

__all__ = [
    "DuplicateTaskId",
    "Evaluation",
    "ExpansionLost",
    "JobRecord",
    "JobState",
    "JobStore",
    "NewTask",
    "Outcome",
    "OverCap",
    "ResultRecord",
    "TaskRecord",
    "TaskState",
    "TemplateConflict",
    "TemplateRecord",
]
