"""The gateway's job store: jobs, tasks and results in SQLite (default) or PostgreSQL."""

from gateway.store.records import (
    DuplicateTaskId,
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
