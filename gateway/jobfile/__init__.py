"""Job files: the YAML language of batchinfer (schema, ${...}, templates, inputs, expansion).

Pure code: no gRPC, no store, and no reads of the process environment.
"""

from __future__ import annotations

from .errors import JobFileError, Problem
from .expand import RenderedTask, expand, expand_all, iter_problems
from .inputs import count_rows
from .loader import load_job
from .schema import (
    Inputs,
    JobSpec,
    Message,
    Params,
    RateLimit,
    Retry,
    Schedule,
    Shard,
)
from .variables import escape, substitute

__all__ = [
    "Inputs",
    "JobFileError",
    "JobSpec",
    "Message",
    "Params",
    "Problem",
    "RateLimit",
    "RenderedTask",
    "Retry",
    "Schedule",
    "Shard",
    "count_rows",
    "escape",
    "expand",
    "expand_all",
    "iter_problems",
    "load_job",
    "substitute",
]
