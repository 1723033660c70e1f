"""Python logging for batchinfer processes: JSON lines on stderr, OTLP records when on.

Both carry the trace and span ids of the span that is current when the record is made.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

# Attributes every LogRecord has; anything else came from `extra=` and is passed on.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
# Marks the handlers this module installed, so a second setup replaces them.
_OURS = "_batchinfer_telemetry"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, trace_id, span_id, service, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        entry.update(_trace_ids())
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _trace_ids() -> dict[str, str]:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }


def mark(handler: logging.Handler) -> logging.Handler:
    setattr(handler, _OURS, True)
    return handler


def remove_our_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, _OURS, False):
            logger.removeHandler(handler)
            handler.close()


def configure_stderr(
    service: str, level: str, json_lines: bool, stream: TextIO | None = None
) -> logging.Handler:
    """Root logger at `level`, with one stderr handler (JSON or plain text) of ours."""
    root = logging.getLogger()
    remove_our_handlers(root)
    root.setLevel(level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(service)
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(mark(handler))
    return handler
