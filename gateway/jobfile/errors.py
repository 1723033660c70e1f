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

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        elif self.line:
            place = f"line {self.line}: "
        if self.row is not None:
            place += f"row {self.row}: "
        if self.field:
            place += f"{self.field}: "
        return place + self.message

    def as_dict(self) -> dict[str, object]:
        return {
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "field": self.field,
            "row": self.row,
        }


class JobFileError(ValueError):
    """A job that cannot run; `problems` lists everything found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


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
