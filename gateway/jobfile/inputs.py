"""Input rows, read lazily: inline rows, a JSONL or CSV file, or a matrix.

A file is read a line at a time, each line at most Limits.max_row_bytes: a line
longer than that is a bad row (its bytes are skipped, never held), so a file of
one endless line cannot fill the memory.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import Problem
from .schema import JobSpec

Row = tuple[int, dict[str, Any]]  # (1-based row number, fields)
NO_UPLOAD = (
    "no input file was uploaded with the job: the gateway reads only the bytes sent with"
    " SubmitJob, never a path named in a job file (the CLI uploads the file)"
)
_SKIP_CHUNK = 1 << 16


def iter_rows(job: JobSpec) -> Iterator[Row | Problem]:
    """Every row in a stable order; a bad row yields a Problem in its place."""
    inputs = job.inputs
    if inputs.rows is not None:
        yield from enumerate(inputs.rows, 1)
    elif inputs.matrix is not None:
        keys = list(inputs.matrix)
        combos = itertools.product(*(inputs.matrix[k] for k in keys))
        for number, combo in enumerate(combos, 1):
            yield number, dict(zip(keys, combo, strict=True))
    else:
        path = job.input_file_path()
        if path is None:
            yield Problem(NO_UPLOAD, job.source, None, "inputs.file")
            return
        cap = job.limits().max_row_bytes
        yield from _file_rows(path, inputs.format or "jsonl", job.source, cap)


def count_rows(job: JobSpec, stop_at: int | None = None) -> int:
    """The number of rows, without rendering any (a file is scanned once); a count past
    `stop_at` stops there, so a huge file or matrix costs no more than the cap."""
    inputs = job.inputs
    if inputs.rows is not None:
        return len(inputs.rows)
    if inputs.matrix is not None:
        return math.prod(len(v) for v in inputs.matrix.values())
    path = job.input_file_path()
    if path is None:
        return 0
    try:
        f = open_regular_file(path)
    except OSError:
        return 0  # reading the rows reports it, naming inputs.file
    limit = stop_at if stop_at is not None else math.inf
    count = 0
    with f:
        lines = bounded_lines(f, job.limits().max_row_bytes)
        if inputs.format == "csv":
            texts = (raw.decode("utf-8", "replace") for raw in lines if raw is not None)
            records = csv.reader(texts)
            try:
                for record in records:
                    count += bool(record)
                    if count > limit:
                        break
            except csv.Error:
                pass  # the same record is reported, with its row, when the rows are read
            return max(0, count - 1)
        for raw in lines:
            count += raw is None or bool(raw.strip())  # a line too long is a (bad) row
            if count >= limit:
                break
        return count


def open_regular_file(path: Path) -> BinaryIO:
    """Opens `path` for reading; refuses what is not a plain file (/dev/zero, a FIFO)."""
    f = path.open("rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise OSError(f"{path} is not a regular file")
    return f


def bounded_lines(f: BinaryIO, cap: int) -> Iterator[bytes | None]:
    """Each line of `f` with its newline; None for a line over `cap` bytes (its rest skipped)."""
    while True:
        raw = f.readline(cap + 1)
        if not raw:
            return
        if len(raw) > cap and not raw.endswith(b"\n"):
            while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield raw


def _file_rows(path: Path, fmt: str, source: str, cap: int) -> Iterator[Row | Problem]:
    name = str(path)
    try:
        f = open_regular_file(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        yield Problem(f"cannot read the input file: {reason}", source, None, "inputs.file")
        return
    with f:
        yield from (_jsonl_rows(f, name, cap) if fmt == "jsonl" else _csv_rows(f, name, cap))


def _too_long(cap: int, name: str, lineno: int, row: int | None = None) -> Problem:
    message = f"the line is longer than {cap:,} bytes (limit max_row_bytes)"
    return Problem(message, name, lineno, row=row)


def _decode(raw: bytes, lineno: int, name: str) -> str | Problem:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        return Problem(
            f"not valid UTF-8 (byte 0x{bad} at column {exc.start + 1}); save the file as UTF-8",
            name,
            lineno,
        )
    return text.removeprefix("\ufeff") if lineno == 1 else text


def _jsonl_rows(f: BinaryIO, name: str, cap: int) -> Iterator[Row | Problem]:
    for item in jsonl_rows(f, name, cap):
        yield item if isinstance(item, Problem) else (item[0], item[2])


def jsonl_rows(
    f: BinaryIO, name: str, cap: int
) -> Iterator[tuple[int, int, dict[str, Any]] | Problem]:
    """(row number, line number, object) for each non-blank line; a Problem for a bad one."""
    number = 0
    for lineno, raw in enumerate(bounded_lines(f, cap), 1):
        if raw is None:
            number += 1
            yield _too_long(cap, name, lineno, number)
            continue
        if not raw.strip():
            continue
        number += 1
        text = _decode(raw, lineno, name)
        if isinstance(text, Problem):
            yield _with_row(text, number)
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Problem(f"invalid JSON: {exc.msg} (column {exc.colno})", name, lineno, row=number)
            continue
        except RecursionError:
            yield Problem("invalid JSON: nested too deeply", name, lineno, row=number)
            continue
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            yield Problem(f"invalid JSON: {exc}", name, lineno, row=number)
            continue
        if not isinstance(row, dict):
            yield Problem(
                f"expected a JSON object per line, got {type(row).__name__}",
                name,
                lineno,
                row=number,
            )
            continue
        yield number, lineno, row


class _Lines:
    """Decoded lines for csv.reader, counting lines and setting aside bad ones."""

    def __init__(self, f: BinaryIO, name: str, cap: int) -> None:
        self.f, self.name, self.cap, self.lineno = f, name, cap, 0
        self.problems: list[Problem] = []

    def __iter__(self) -> Iterator[str]:
        for raw in bounded_lines(self.f, self.cap):
            self.lineno += 1
            if raw is None:
                self.problems.append(_too_long(self.cap, self.name, self.lineno))
                continue
            text = _decode(raw, self.lineno, self.name)
            if isinstance(text, Problem):
                self.problems.append(text)
            else:
                yield text


def _csv_rows(f: BinaryIO, name: str, cap: int) -> Iterator[Row | Problem]:
    # csv's own cap on a field (128 KiB by default, process-wide) follows max_row_bytes,
    # so a quoted field running over many lines still stops there
    if csv.field_size_limit() < cap:
        csv.field_size_limit(cap)
    lines = _Lines(f, name, cap)
    reader = csv.reader(lines)
    header: list[str] | None = None
    number = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            number += 1
            yield Problem(f"invalid CSV: {exc}", name, lines.lineno, row=number)
            return
        while lines.problems:
            number += 1
            yield _with_row(lines.problems.pop(0), number)
        if not record:
            continue
        if header is None:
            header = [h.strip() for h in record]
            problem = _bad_header(header, name, lines.lineno)
            if problem:
                yield problem
                return
            continue
        number += 1
        if len(record) != len(header):
            yield Problem(
                f"has {len(record)} values but the header has {len(header)} columns"
                " (quote values that contain commas)",
                name,
                lines.lineno,
                row=number,
            )
            continue
        yield number, dict(zip(header, record, strict=True))
    for problem in lines.problems:
        number += 1
        yield _with_row(problem, number)
    if header is None:
        yield Problem("the CSV file is empty: it needs a header line and rows", name, 1)


def _bad_header(header: list[str], name: str, lineno: int) -> Problem | None:
    if any(not h for h in header):
        return Problem("the CSV header has an empty column name", name, lineno)
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        return Problem(f"the CSV header repeats {', '.join(dupes)}", name, lineno)
    return None


def _with_row(problem: Problem, number: int) -> Problem:
    return Problem(problem.message, problem.file, problem.line, problem.field, number)
