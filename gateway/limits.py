"""Every cap on what a client sends, with its default, in one place.

A job file, its input rows and its templates are hostile until checked: each
cap is checked before the work it bounds (sizes before parsing, counts before
expanding), and a breach is an INVALID_ARGUMENT that names the cap (for what one
connection holds: RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED, naming it too). The
gateway takes them as `GatewayConfig.limits` (`batchinfer gateway --limit
NAME=VALUE`); `batchinfer validate` applies the same defaults. Each one is
described in docs/security.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Limits:
    """Caps on one submission (its text, its rows, its templates and their rendering), on
    online tasks, and on what one client connection may hold at the gateway."""

    # sizes, checked before anything is parsed
    max_job_bytes: int = 2 * MIB
    """The job text plus the files it extends and its variables, in UTF-8 bytes."""
    max_upload_bytes: int = GIB
    """The uploaded input file (inputs.file), in bytes."""
    max_row_bytes: int = 16 * MIB
    """One line of a JSONL or CSV input file, in bytes."""
    max_idempotency_key_chars: int = 256
    """The idempotency key of a submission, in characters."""

    # the YAML document
    max_yaml_depth: int = 64
    """Nesting of mappings and lists in a job file."""
    max_yaml_nodes: int = 250_000
    """Values (scalars, mappings, lists) in one job file, before aliases are expanded."""
    max_yaml_alias_nodes: int = 10_000
    """Values that aliases (*name) and merge keys (<<) may add by repeating others."""

    # counts in the job
    max_inline_rows: int = 10_000
    """Rows given in inputs.rows; more go in an input file."""
    max_labels: int = 256
    """Labels of a classify task."""
    max_label_chars: int = 1024
    """One classify label, in characters."""
    max_models: int = 16
    """Models of one job (`models:`): each multiplies the job's tasks."""
    max_stop_strings: int = 16
    """Stop strings (params.stop) of a task."""
    max_stop_chars: int = 256
    """One stop string, in characters."""
    max_templates: int = 64
    """Templates in one job (template, messages, continuation, inputs.id, shard.key)."""
    max_template_bytes: int = 64 * KIB
    """The source of one template, in UTF-8 bytes."""
    max_id_chars: int = 256
    """A rendered task id (inputs.id), in characters."""
    max_error_details: int = 20
    """Problems listed in one error response; the rest are summarised in one line."""

    # rendering one row
    max_prompt_bytes: int = 16 * MIB
    """The rendered input of one task (template, messages, continuation together), in UTF-8
    bytes; each template's rendering stops as soon as its output passes it."""
    max_loop_iterations: int = 100_000
    """Iterations of {% for %} loops while rendering one template for one row."""
    max_range: int = 10_000
    """Items of one range(...) in a template."""
    max_format_width: int = 10_000
    """Widths and precisions in templates: center, ljust, rjust, zfill, indent, format, %."""
    max_int_bits: int = 4096
    """Size of an integer that * or ** may build in a template, in bits (about 1,233 digits)."""

    # what one client connection may hold at the gateway (gateway only)
    max_streams_per_peer: int = 16
    """Streams (SubmitJob, ValidateJob, WatchJob, StreamResults, Execute) one client
    connection (gRPC peer) may have open at once; one more is RESOURCE_EXHAUSTED."""
    stream_window_bytes: int = 2 * MIB
    """Bytes one StreamResults or Execute stream holds for its client: results not yet taken
    by the transport and, for Execute, tasks not yet answered. A single larger result still
    goes alone."""
    stream_read_ahead_bytes: int = MIB
    """Bytes gRPC takes in on one stream ahead of what the gateway has read (the HTTP/2
    window, with BDP probing off so that it stays so): what requests a client pushes and
    the gateway has not read yet cost. Uploads flow at up to this much per round trip."""
    upload_deadline_s: float = 600.0
    """Wall-clock seconds from the start of a SubmitJob or ValidateJob call to its last
    message (the spec and the input file); past them the call is DEADLINE_EXCEEDED."""

    # the worker processes that parse, validate and expand (gateway only)
    render_memory_bytes: int = 2 * GIB
    """Address space of one worker process (RLIMIT_AS); past it, the job fails."""
    render_cpu_s: int = 60
    """CPU seconds a worker may spend on one step: checking a job, or one chunk of tasks."""
    render_wall_s: float = 60.0
    """Wall-clock seconds a worker may take for one step before it is killed."""

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limit {spec.name} must be a number > 0, got {value!r}")

    def with_overrides(self, items: Iterable[str]) -> Limits:
        """A copy with each NAME=VALUE applied (the --limit flag); unknown names are errors."""
        known = {spec.name: spec for spec in dataclasses.fields(self)}
        changes: dict[str, int | float] = {}
        for item in items:
            name, eq, text = item.partition("=")
            name = name.strip()
            if not eq or name not in known:
                listed = ", ".join(sorted(known))
                raise ValueError(
                    f"--limit expects NAME=VALUE with NAME one of: {listed}; got {item!r}"
                )
            kind = float if known[name].type in ("float", float) else int
            try:
                changes[name] = kind(text.replace("_", ""))
            except ValueError:
                raise ValueError(f"--limit {name} expects a number, got {text!r}") from None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


DEFAULT_LIMITS = Limits()
