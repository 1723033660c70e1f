"""Problems found in a job file, and the one exception that carries them all."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job, with the place it was found."""

    message: str
    file: str | None = None
    line: int | None = None
    field: str | None = None  # dotted path, e.g. "params.max_new_tokens"
    row: int | None = None  # 1-based input row
    detail: str | None = None  # text that may quote the row's content: kept out of logs
    column: int | None = None  # 1-based, where known (YAML syntax errors, keys)

    def __str__(self) -> str:
        return self._place() + self.text()

    def text(self) -> str:
        """The message with its detail, as the submitter sees it."""
        return f"{self.message}: {self.detail}" if self.detail else self.message

    def redacted(self) -> str:
        """The problem without the detail that may quote a row's content (for logs)."""
        hidden = " (details hidden; BATCHINFER_CAPTURE_CONTENT=true logs them)"
        return self._place() + self.message + (hidden if self.detail else "")

    def _place(self) -> str:
        place = ""
        if self.file:
            place = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        elif self.line:
            place = f"line {self.line}: "
        if self.row is not None:
            place += f"row {self.row}: "
        if self.field:
            place += f"{self.field}: "
        return place

    def as_dict(self) -> dict[str, object]:
        return {
            "message": self.text(),
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "row": self.row,
        }


class JobFileError(ValueError):
    """A job that cannot run; `problems` lists everything found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def redacted(self) -> str:
        """Every problem without the details that may quote rows (for logs)."""
        return "\n".join(p.redacted() for p in self.problems)


def summarised(problems: list[Problem], limit: int, more_known: bool = False) -> list[Problem]:
    """At most `limit` problems, the last of them saying how many more there were."""
    if len(problems) <= limit and not more_known:
        return problems
    kept = problems[: max(limit - 1, 1)]
    rest = len(problems) - len(kept)
    count = f"{rest} more" if not more_known else f"{rest} or more"
    note = f"... and {count} problems (only {len(kept)} are listed: limit max_error_details)"
    return [*kept, Problem(note)]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def field_path(loc: Iterable[object]) -> str:
    """('inputs', 'rows', 3, 'text') -> 'inputs.rows[3].text'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
