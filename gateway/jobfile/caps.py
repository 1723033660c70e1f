"""Checks of a job against Limits that the schema cannot express: sizes before
parsing, and counts once the job is known. Each problem names its limit."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.limits import Limits

from .errors import Problem
from .schema import JobFile

Lines = Mapping[tuple[str | int, ...], tuple[str, int]]


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def submission_size_problem(
    text: str,
    files: Mapping[str, str],
    variables: Mapping[str, str],
    limits: Limits,
    filename: str,
) -> Problem | None:
    """The job text, the files it extends and its variables together, before any parsing."""
    cap = limits.max_job_bytes
    parts = [text, *files.keys(), *files.values(), *variables.keys(), *variables.values()]
    chars = 0
    for part in parts:  # characters first: a 50 MB text is refused without encoding it
        chars += len(part)
        if chars > cap:
            return _too_big(f"more than {cap:,}", cap, filename)
    if chars * 4 <= cap:  # at most 4 bytes a character
        return None
    size = sum(utf8_size(part) for part in parts)
    return _too_big(f"{size:,}", cap, filename) if size > cap else None


def _too_big(size: str, cap: int, filename: str) -> Problem:
    return Problem(
        f"the job text, its extended files and variables are {size} bytes; at most {cap:,}"
        " (limit max_job_bytes): put large inputs in an input file",
        filename,
    )


def job_problems(job: JobFile, limits: Limits, lines: Lines, default_file: str) -> list[Problem]:
    """Counts and lengths of the labels and stop strings of a validated job."""
    problems: list[Problem] = []

    def add(message: str, loc: tuple[str | int, ...]) -> None:
        file, line = _place(lines, loc, default_file)
        path = ".".join(str(p) for p in loc)
        problems.append(Problem(message, file, line, path))

    labels = job.labels or []
    if len(labels) > limits.max_labels:
        add(f"{len(labels)} labels; at most {limits.max_labels} (limit max_labels)", ("labels",))
    for i, label in enumerate(labels[: limits.max_labels]):
        if len(label) > limits.max_label_chars:
            message = (
                f"label {i + 1} is {len(label):,} characters; at most {limits.max_label_chars:,}"
                " (limit max_label_chars)"
            )
            add(message, ("labels",))
    models = job.models or []
    if len(models) > limits.max_models:
        add(f"{len(models)} models; at most {limits.max_models} (limit max_models)", ("models",))
    for i, model in enumerate(models[: limits.max_models]):
        if len(model) > limits.max_id_chars:
            message = (
                f"model {i + 1} is {len(model):,} characters; at most {limits.max_id_chars:,}"
                " (limit max_id_chars)"
            )
            add(message, ("models",))
    stops = job.params.stop
    if len(stops) > limits.max_stop_strings:
        message = (
            f"{len(stops)} stop strings; at most {limits.max_stop_strings} (limit max_stop_strings)"
        )
        add(message, ("params", "stop"))
    for i, stop in enumerate(stops[: limits.max_stop_strings]):
        if len(stop) > limits.max_stop_chars:
            message = (
                f"stop string {i + 1} is {len(stop):,} characters; at most"
                f" {limits.max_stop_chars:,} (limit max_stop_chars)"
            )
            add(message, ("params", "stop"))
    rows = job.inputs.rows
    if rows is not None and len(rows) > limits.max_inline_rows:
        message = (
            f"{len(rows):,} inline rows; at most {limits.max_inline_rows:,}"
            " (limit max_inline_rows): put them in an input file"
        )
        add(message, ("inputs", "rows"))
    return problems


def _place(lines: Lines, loc: tuple[str | int, ...], default: str) -> tuple[str, int | None]:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return default, None
