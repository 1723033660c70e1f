"""Input rows, read lazily: inline rows, a JSONL or CSV file, or a matrix."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .errors import Problem
from .schema import JobSpec

Row = tuple[int, dict[str, Any]]  # (1-based row number, fields)


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
        assert path is not None
        yield from _file_rows(path, inputs.format or "jsonl", job.source)


def count_rows(job: JobSpec) -> int:
    """The number of rows, without rendering any (a file is scanned once)."""
    inputs = job.inputs
    if inputs.rows is not None:
        return len(inputs.rows)
    if inputs.matrix is not None:
        return math.prod(len(v) for v in inputs.matrix.values())
    path = job.input_file_path()
    assert path is not None
    with path.open("rb") as f:
        if inputs.format == "csv":
            lines = (raw.decode("utf-8", "replace") for raw in f)
            return max(0, sum(1 for rec in csv.reader(lines) if rec) - 1)
        return sum(1 for raw in f if raw.strip())


def _file_rows(path: Path, fmt: str, source: str) -> Iterator[Row | Problem]:
    name = str(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        yield Problem(
            f"cannot read the input file: {exc.strerror or exc}", source, None, "inputs.file"
        )
        return
    with f:
        yield from (_jsonl_rows(f, name) if fmt == "jsonl" else _csv_rows(f, name))


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


def _jsonl_rows(f: BinaryIO, name: str) -> Iterator[Row | Problem]:
    number = 0
    for lineno, raw in enumerate(f, 1):
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
        if not isinstance(row, dict):
            yield Problem(
                f"expected a JSON object per line, got {type(row).__name__}",
                name,
                lineno,
                row=number,
            )
            continue
        yield number, row


class _Lines:
    """Decoded lines for csv.reader, counting lines and setting aside undecodable ones."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f, self.name, self.lineno = f, name, 0
        self.problems: list[Problem] = []

    def __iter__(self) -> Iterator[str]:
        for raw in self.f:
            self.lineno += 1
            text = _decode(raw, self.lineno, self.name)
            if isinstance(text, Problem):
                self.problems.append(text)
            else:
                yield text


def _csv_rows(f: BinaryIO, name: str) -> Iterator[Row | Problem]:
    lines = _Lines(f, name)
    reader = csv.reader(lines)
    header: list[str] | None = None
    number = 0
    for record in reader:
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
