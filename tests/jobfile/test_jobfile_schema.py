"""Schema checks: each bad input gets one clear problem that names its place."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.jobfile import JobFileError, Problem, load_job

GOOD = """\
version: 1
name: demo
model: m
task: generate
template: "Say {{ text }}"
params:
  max_new_tokens: 16
  temperature: 0.5
inputs:
  rows:
    - {text: hi}
"""


def problems(text: str, **kwargs: object) -> list[Problem]:
    with pytest.raises(JobFileError) as err:
        load_job(text=text, filename="job.yaml", **kwargs)  # type: ignore[arg-type]
    assert str(err.value) == "\n".join(str(p) for p in err.value.problems)
    return err.value.problems


def only(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_good_file_loads_with_defaults() -> None:
    job = load_job(text=GOOD)
    assert (job.name, job.task, job.params.max_new_tokens, job.schedule.priority) == (
        "demo",
        "generate",
        16,
        5,
    )
    assert (job.retry.max_attempts, job.retry.initial_backoff, job.shard.strategy) == (
        3,
        1.0,
        "least_loaded",
    )


def test_problem_prints_file_line_field_and_message() -> None:
    assert str(Problem("must be >= 1, got 0", "q.yaml", 12, "params.max_new_tokens")) == (
        "q.yaml:12: params.max_new_tokens: must be >= 1, got 0"
    )
    assert str(Problem("bad", "d.csv", 3, None, row=2)) == "d.csv:3: row 2: bad"


@pytest.mark.parametrize(
    ("text", "line", "expect"),
    [
        ("name: [unclosed\n", 2, "invalid YAML"),
        ("", 1, "the job file is empty"),
        ("- a\n- b\n", 1, "must be a mapping"),
        ("name: a\nname: b\n", 2, "duplicate key 'name' (first at line 1)"),
    ],
)
def test_malformed_yaml(text: str, line: int, expect: str) -> None:
    problem = next(p for p in problems(text) if expect in p.message)
    assert (problem.file, problem.line) == ("job.yaml", line) and expect in problem.message


@pytest.mark.parametrize(
    ("old", "new", "field", "line", "expect"),
    [
        (
            "max_new_tokens: 16",
            "max_new_tokens: 0",
            "params.max_new_tokens",
            7,
            "must be >= 1, got 0",
        ),
        (
            "max_new_tokens: 16",
            "max_new_tokens: 1000000",
            "params.max_new_tokens",
            7,
            "must be <= 32768",
        ),
        (
            "max_new_tokens: 16",
            "max_new_tokens: lots",
            "params.max_new_tokens",
            7,
            "expected a whole number, got 'lots'",
        ),
        (
            "temperature: 0.5",
            "temperature: -0.1",
            "params.temperature",
            8,
            "must be >= 0.0, got -0.1",
        ),
        ("temperature: 0.5", "top_p: 0", "params.top_p", 8, "must be > 0.0"),
        (
            "temperature: 0.5",
            "tempreature: 0.5",
            "params.tempreature",
            8,
            "did you mean 'temperature'?",
        ),
        ("task: generate", "task: summarize", "task", 4, "must be one of 'generate', 'chat'"),
        ("task: generate", "task: genrate", "task", 4, "did you mean 'generate'?"),
        ("version: 1", "version: 2", "version", 1, "must be one of 1"),
        ("name: demo", "nmae: demo", "nmae", 2, "unknown field 'nmae' (did you mean 'name'?)"),
        ("    - {text: hi}", "    - just text", "inputs.rows[0]", 11, "expected a mapping"),
        ("  rows:", "  rowz:", "inputs.rowz", 10, "did you mean 'rows'?"),
    ],
)
def test_field_errors_name_the_field_and_line(
    old: str, new: str, field: str, line: int, expect: str
) -> None:
    found = problems(GOOD.replace(old, new))
    match = [p for p in found if p.field == field]
    assert match, found
    assert match[0].line == line and match[0].file == "job.yaml"
    assert expect in match[0].message


def test_every_problem_is_listed_at_once() -> None:
    text = GOOD.replace("max_new_tokens: 16", "max_new_tokens: 0").replace(
        "temperature: 0.5", "temperature: -1"
    )
    text = text.replace("task: generate", "task: nope") + "colour: red\n"
    assert [p.field for p in problems(text)] == [
        "task",
        "params.max_new_tokens",
        "params.temperature",
        "colour",
    ]


def test_no_inputs_is_an_error() -> None:
    text = GOOD.split("inputs:")[0]
    assert only(text).message.startswith("no inputs")
    assert (
        "no inputs: rows is an empty list"
        in only(GOOD.split("  rows:")[0] + "  rows: []\n").message
    )
    matrix = GOOD.split("  rows:")[0] + "  matrix: {a: [1], b: []}\n"
    assert "no inputs: matrix.b is an empty list" in only(matrix).message


def test_inputs_need_exactly_one_source() -> None:
    text = GOOD + "  file: x.jsonl\n"
    assert "give only one of rows, file or matrix, not rows and file" in only(text).message


def test_input_format_comes_from_the_extension() -> None:
    text = GOOD.split("  rows:")[0] + "  file: data.txt\n"
    assert "set format: jsonl or csv" in only(text).message
    job = load_job(text=GOOD.split("  rows:")[0] + "  file: data.CSV\n")
    assert job.inputs.format == "csv"


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ("task: generate", "task: chat", None),
        ("task: generate", "task: classify", "needs labels"),
        ("task: generate", "task: score", "needs a continuation"),
        (
            'template: "Say {{ text }}"',
            "messages: [{role: user, content: hi}]",
            "messages is for task chat",
        ),
        ("task: generate", "task: generate\nlabels: [a, b]", "labels is for task classify"),
    ],
)
def test_task_specific_fields(old: str, new: str, expect: str | None) -> None:
    text = GOOD.replace(old, new)
    if expect is None:
        job = load_job(text=text)
        assert job.task == "chat" and job.template == "Say {{ text }}"
    else:
        assert expect in only(text).message


def test_unknown_message_role_and_field() -> None:
    text = GOOD.replace("task: generate", "task: chat").replace(
        'template: "Say {{ text }}"',
        "messages:\n  - {role: robot, content: hi}\n  - {role: user, contnet: x}",
    )
    found = problems(text)
    assert [(p.field, p.line) for p in found] == [
        ("messages[0].role", 6),
        ("messages[1].content", 7),
        ("messages[1].contnet", 7),
    ]
    assert "did you mean 'content'?" in found[2].message


def test_schedule_retry_and_durations() -> None:
    text = GOOD + (
        "schedule: {tenant: t, priority: 9, deadline: 1h30m, rate_limit: {requests_per_s: 5, burst: 10}}\n"
        "retry: {max_attempts: 5, initial_backoff: 500ms, max_backoff: 2m, jitter: 0.5}\n"
    )
    job = load_job(text=text)
    assert job.schedule.deadline == 5400.0 and job.schedule.rate_limit is not None
    assert (job.retry.initial_backoff, job.retry.max_backoff) == (0.5, 120.0)
    job = load_job(text=GOOD + "schedule: {deadline: '2030-01-02T03:04:05'}\n")
    assert job.schedule.deadline == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("extra", "field", "expect"),
    [
        ("schedule: {priority: 10}", "schedule.priority", "must be <= 9, got 10"),
        (
            "schedule: {deadline: soon}",
            "schedule.deadline",
            "expected a duration (2h, 30m, 90s) or an ISO time",
        ),
        ("schedule: {deadline: 0}", "schedule.deadline", "must be in the future"),
        (
            "retry: {initial_backoff: 10s, max_backoff: 1s}",
            "retry",
            "max_backoff (1.0s) is below initial_backoff",
        ),
        ("retry: {max_attempts: 0}", "retry.max_attempts", "must be >= 1"),
        ("shard: {strategy: hash}", "shard", 'strategy "hash" needs a key'),
        ("shard: {strategy: random}", "shard.strategy", "must be one of"),
        ("source: x.yaml", "source", "set by the loader"),
    ],
)
def test_schedule_retry_shard_errors(extra: str, field: str, expect: str) -> None:
    problem = only(GOOD + extra + "\n")
    assert problem.field == field and expect in problem.message and problem.line == 12


def test_stop_accepts_a_single_string() -> None:
    job = load_job(text=GOOD.replace("temperature: 0.5", 'stop: "\\n"'))
    assert job.params.stop == ["\n"]


def test_non_utf8_job_file_names_the_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "job.yaml"
    path.write_bytes(GOOD.encode().replace(b"Say", b"S\xe9y"))
    with pytest.raises(JobFileError) as err:
        load_job(path)
    (problem,) = err.value.problems
    assert problem.line == 5 and "not valid UTF-8 (byte 0xe9)" in problem.message


def test_missing_job_file() -> None:
    with pytest.raises(JobFileError) as err:
        load_job("/nonexistent/job.yaml")
    assert "cannot read the job file" in str(err.value)
