"""Durations ("500ms", "1s", "2m", "1h30m", 90) and deadlines (a duration or an ISO time)."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+\Z")
MAX_DURATION_S = 366 * 86400.0  # a year: anything longer is a typo or an attack on the arithmetic


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "1h30m"; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, 500ms or 2h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and _WHOLE.match(value.strip().replace(" ", "")):
        text = value.strip().replace(" ", "")
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    else:
        raise ValueError(f"expected a duration such as 30s, 500ms or 2h, got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration must be at most 366d, got {value!r}")
    return seconds


def _is_duration(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bool(_WHOLE.match(value.strip().replace(" ", "")))
    return isinstance(value, (int, float))


def parse_deadline(value: object) -> float | datetime | None:
    """A relative deadline in seconds, or an absolute time (naive times are UTC)."""
    if value is None or isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):  # YAML reads 2030-01-01 as a date
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and ("T" in value or "-" in value[1:]):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"expected a duration (2h, 30m, 90s) or an ISO time, got {value!r}"
            ) from None
    else:
        if not _is_duration(value):
            raise ValueError(f"expected a duration (2h, 30m, 90s) or an ISO time, got {value!r}")
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ValueError(f"a deadline must be in the future, got {value!r}")
        return seconds
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
