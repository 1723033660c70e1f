"""Job files: the YAML language of batchinfer (schema, ${...}, templates, inputs, expansion).

Pure code: no gRPC, no store, and no reads of the process environment.
"""

from __future__ import annotations

from .errors import JobFileError, Problem, summarised
from .expand import Progress, RenderedTask, expand, expand_all, iter_problems, template_field
from .inputs import NO_UPLOAD, count_rows
from .loader import fragment_problems, load_job
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
    "NO_UPLOAD",
    "Inputs",
    "JobFileError",
    "JobSpec",
    "Message",
    "Params",
    "Problem",
    "Progress",
    "RateLimit",
    "RenderedTask",
    "Retry",
    "Schedule",
    "Shard",
    "count_rows",
    "escape",
    "expand",
    "expand_all",
    "fragment_problems",
    "iter_problems",
    "load_job",
    "substitute",
    "summarised",
    "template_field",
]
