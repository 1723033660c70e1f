"""Every cap of gateway/limits.py on a job file: each breach is one problem that names
the limit (or the field), found before the work it bounds, and quickly."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from gateway.jobfile import (
    NO_UPLOAD,
    JobFileError,
    Problem,
    count_rows,
    expand_all,
    iter_problems,
    load_job,
    summarised,
)
from gateway.limits import DEFAULT_LIMITS, Limits

JOB = """\
name: limits
model: m
task: generate
template: "{{ text }}"
inputs:
  rows: [{text: hi, n: 3, xs: [1, 2, 3]}]
"""


def job_text(extra: str = "", template: str | None = None, rows: str | None = None) -> str:
    text = JOB
    if template is not None:
        text = text.replace('template: "{{ text }}"', f"template: {template!r}")
    if rows is not None:
        text = text.replace("rows: [{text: hi, n: 3, xs: [1, 2, 3]}]", f"rows: {rows}")
    return text + extra


def problems(text: str, **kwargs: object) -> list[Problem]:
    with pytest.raises(JobFileError) as err:
        load_job(text=text, filename="job.yaml", **kwargs)  # type: ignore[arg-type]
    return err.value.problems


def one(text: str, **kwargs: object) -> str:
    found = problems(text, **kwargs)
    assert len(found) == 1, found
    return str(found[0])


def rendered(template: str, limits: Limits = DEFAULT_LIMITS, rows: str | None = None) -> str:
    """The one row's prompt, or its problem as text."""
    job = load_job(text=job_text(template=template, rows=rows), filename="job.yaml", limits=limits)
    (item,) = list(expand_all(job))
    return str(item) if isinstance(item, Problem) else item.prompt


# ---------------------------------------------------------------- the settings


def test_every_limit_has_a_positive_default_and_a_docstring() -> None:
    source = Path(__file__).parents[2].joinpath("gateway", "limits.py").read_text()
    for spec in dataclasses.fields(Limits):
        assert getattr(DEFAULT_LIMITS, spec.name) > 0
        assert (
            f"    {spec.name}: " in source and '"""' in source.split(f"    {spec.name}: ")[1][:200]
        )


def test_overrides_by_name_and_refusals() -> None:
    limits = DEFAULT_LIMITS.with_overrides(["max_inline_rows=5", "render_wall_s=2.5"])
    assert limits.max_inline_rows == 5 and limits.render_wall_s == 2.5
    with pytest.raises(ValueError, match="NAME one of"):
        DEFAULT_LIMITS.with_overrides(["max_rows=5"])
    with pytest.raises(ValueError, match="expects a number"):
        DEFAULT_LIMITS.with_overrides(["max_inline_rows=many"])
    with pytest.raises(ValueError, match="max_labels must be a number > 0"):
        Limits(max_labels=0)


# ------------------------------------------------------- sizes before parsing


def test_job_text_over_max_job_bytes_is_refused_before_parsing() -> None:
    started = time.monotonic()
    message = one("x: " + "y" * (50 * 1024 * 1024))
    assert "more than 2,097,152 bytes" in message and "limit max_job_bytes" in message
    assert time.monotonic() - started < 1


def test_extended_files_count_towards_max_job_bytes() -> None:
    limits = Limits(max_job_bytes=400)
    base = "vars: {pad: '" + "p" * 300 + "'}\n"
    found = problems(
        job_text("extends: base.yaml\n"), read_file={"base.yaml": base}.__getitem__, limits=limits
    )
    assert any("limit max_job_bytes" in str(p) and p.field == "extends" for p in found)


# ------------------------------------------------------------------------ YAML

LAUGHS = "\n".join(
    ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
)


def test_billion_laughs_is_refused_at_the_alias_budget() -> None:
    started = time.monotonic()
    assert len(LAUGHS) < 600
    message = one(LAUGHS)
    assert "limit max_yaml_alias_nodes" in message
    assert time.monotonic() - started < 1


def test_a_few_aliases_are_fine() -> None:
    job = load_job(text=job_text("vars: {a: &x [1, 2], b: *x}\n"))
    assert job.vars == {"a": [1, 2], "b": [1, 2]}


def test_an_alias_inside_itself_is_refused() -> None:
    assert "an alias refers to a value that contains it" in one("a: &a [1, *a]\n")


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    message = one("a: " + "[" * 100_000 + "]" * 100_000)
    assert "nests deeper than 64 levels (limit max_yaml_depth)" in message


def test_too_many_values_are_refused_while_parsing() -> None:
    limits = Limits(max_yaml_nodes=100)
    message = one(job_text(rows="[" + ", ".join(["{}"] * 200) + "]"), limits=limits)
    assert "more than 100 values (limit max_yaml_nodes)" in message


def test_inline_rows_over_max_inline_rows() -> None:
    message = one(
        job_text(rows="[" + ", ".join(["{text: a}"] * 11) + "]"), limits=Limits(max_inline_rows=10)
    )
    assert "11 rows; at most 10 may be inline (limit max_inline_rows)" in message


# --------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("schedule: {rate_limit: {requests_per_s: .inf}}", "schedule.rate_limit.requests_per_s"),
        ("schedule: {rate_limit: {tokens_per_s: .nan}}", "schedule.rate_limit.tokens_per_s"),
        ("schedule: {deadline: .nan}", "schedule.deadline"),
        ("schedule: {deadline: .inf}", "schedule.deadline"),
        ("retry: {initial_backoff: .nan}", "retry.initial_backoff"),
        ("retry: {max_backoff: .inf}", "retry.max_backoff"),
        ("retry: {multiplier: .nan}", "retry.multiplier"),
        ("retry: {jitter: .nan}", "retry.jitter"),
        ("params: {temperature: .nan}", "params.temperature"),
        ("params: {top_p: .nan}", "params.top_p"),
        ("params: {repetition_penalty: .inf}", "params.repetition_penalty"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(extra: str, field: str) -> None:
    found = problems(job_text(extra + "\n"))
    assert len(found) == 1 and found[0].field == field, found
    assert "finite" in found[0].message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("schedule: {rate_limit: {requests_per_s: 1e300}}", "must be <= 1000000000.0"),
        ("schedule: {rate_limit: {burst: 99999999999999999999}}", "must be <= 1000000000"),
        ("schedule: {max_inflight: 99999999999999999999}", "must be <= 1000000000"),
        ("schedule: {deadline: 99999d}", "at most 366d"),
        ("retry: {max_backoff: 1.0e+30}", "at most 366d"),
    ],
)
def test_numbers_too_large_for_the_arithmetic_are_refused(extra: str, expected: str) -> None:
    assert expected in one(job_text(extra + "\n"))


# ---------------------------------------------------------- counts in the job


def classify(labels: list[str]) -> str:
    listed = ", ".join(labels)
    return job_text(f"labels: [{listed}]\n").replace("task: generate", "task: classify")


def test_labels_count_and_length() -> None:
    message = one(classify([f"l{i}" for i in range(300)]))
    assert "300 labels; at most 256 (limit max_labels)" in message


def test_models_are_capped_in_count_and_name_length() -> None:
    many = ", ".join(f"m{i}" for i in range(17))
    message = one(JOB.replace("model: m", f"models: [{many}]"))
    assert "17 models; at most 16 (limit max_models)" in message
    long_name = "m" * 300
    message = one(JOB.replace("model: m", f"models: [a, {long_name}]"))
    assert "model 2 is 300 characters; at most 256 (limit max_id_chars)" in message
    message = one(classify(["a", "b" * 2000]))
    assert "label 2 is 2,000 characters; at most 1,024 (limit max_label_chars)" in message


def test_stop_strings_count_and_length() -> None:
    stops = ", ".join(f"s{i}" for i in range(10_000))
    found = problems(job_text(f"params: {{stop: [{stops}]}}\n"))
    assert len(found) == 1 and found[0].field == "params.stop"
    assert "10000 stop strings; at most 16 (limit max_stop_strings)" in found[0].message
    message = one(job_text(f"params: {{stop: [{'x' * 300}]}}\n"))
    assert "at most 256 (limit max_stop_chars)" in message


def test_template_bytes_and_count() -> None:
    message = one(job_text(template="{{ text }}" + "x" * 70_000))
    assert "at most 65,536 (limit max_template_bytes)" in message
    messages = "".join(f"\n  - {{role: user, content: 'm{i}'}}" for i in range(70))
    text = job_text("messages:" + messages + "\n").replace("task: generate", "task: chat")
    text = text.replace('template: "{{ text }}"\n', "")
    assert "70 templates; at most 64 (limit max_templates)" in one(text)


def test_task_ids_over_max_id_chars() -> None:
    job = load_job(
        text=job_text("", rows=f"[{{text: '{'i' * 300}'}}]").replace(
            "inputs:\n", "inputs:\n  id: '{{ text }}'\n"
        )
    )
    (problem,) = list(iter_problems(job))
    assert "an id of 300 characters; at most 256 (limit max_id_chars)" in str(problem)


def test_summarised_keeps_the_first_and_counts_the_rest() -> None:
    many = [Problem(f"p{i}") for i in range(50)]
    kept = summarised(many, 20)
    assert len(kept) == 20 and kept[0].message == "p0"
    assert "and 31 more problems" in kept[-1].message and "max_error_details" in kept[-1].message
    assert summarised(many[:3], 20) == many[:3]


# ------------------------------------------------------------------ templates


@pytest.mark.parametrize(
    ("template", "limit"),
    [
        ("{{ (3**(10**8)) > 1 }}", "max_int_bits"),
        ("{{ 2 ** 5000 }}", "max_int_bits"),
        ("{{ (10 ** 1000) * (10 ** 1000) }}", "max_int_bits"),
        ("{{ 'a' * 10**9 }}", "max_prompt_bytes"),
        ("{{ [1] * 10**8 }}", "max_loop_iterations"),
        ("{{ text|center(2*10**9) }}", "max_format_width"),
        ("{{ 'x'|center(2000000000) }}", "max_format_width"),
        ("{{ text.center(2000000000) }}", "max_format_width"),
        ("{{ text.ljust(10**9) }}", "max_format_width"),
        ("{{ text.zfill(10**9) }}", "max_format_width"),
        ("{{ text|indent(10**9) }}", "max_format_width"),
        ("{{ xs|tojson(indent=10**9) }}", "max_format_width"),
        ("{{ '%0999999999d' % 1 }}", "max_format_width"),
        ("{{ '%.999999999f' % 1.5 }}", "max_format_width"),
        ("{{ '%s'|format(1) }}{{ '%999999999s'|format(1) }}", "max_format_width"),
        ("{{ '{:>999999999}'.format(1) }}", "max_format_width"),
        ("{{ xs|batch(10**9, 0)|list }}", "max_loop_iterations"),
        ("{{ xs|slice(10**9)|list }}", "max_loop_iterations"),
        ("{{ (text * 5000)|replace('', text * 5000) }}", "max_prompt_bytes"),
        ("{{ (text * 5000).replace('', text * 5000) }}", "max_prompt_bytes"),
        ("{{ (xs * 30000)|join(text * 1000) }}", "max_prompt_bytes"),
        ("{{ (text * 10**6)|wordwrap(1, wrapstring=text * 100) }}", "max_prompt_bytes"),
        (
            "{% for a in xs * 1000 %}{% for b in xs * 1000 %}{% endfor %}{% endfor %}",
            "max_loop_iterations",
        ),
        (
            "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ f(text, 60) }}",
            "max_prompt_bytes",
        ),
        (
            "{% set x %}{% for i in xs * 30000 %}{{ text * 1000 }}{% endfor %}{% endset %}{{ x|length }}",
            "max_prompt_bytes",
        ),
    ],
)
def test_template_costs_are_refused_naming_the_limit(template: str, limit: str) -> None:
    started = time.monotonic()
    message = rendered(template)
    assert f"limit {limit}" in message and "row 1: template:" in message, message
    assert time.monotonic() - started < 2


def test_huge_constants_are_not_folded_when_the_job_is_loaded() -> None:
    started = time.monotonic()
    for template in ("{{ 'x'|center(2000000000) }}", "{{ 3**(10**8) }}", "{{ 'a' * 10**9 }}"):
        load_job(text=job_text(template=template))
    assert time.monotonic() - started < 1


def test_output_over_max_prompt_bytes_stops_rendering() -> None:
    limits = Limits(max_prompt_bytes=1000)
    message = rendered("{% for x in xs %}{{ text * 200 }}{% endfor %}", limits)
    assert "renders more than 1,000 characters (limit max_prompt_bytes)" in message
    message = rendered("{{ text }}", limits, rows=f"[{{text: {'t' * 1001}}}]")
    assert "limit max_prompt_bytes" in message


def test_a_tasks_rendered_input_over_max_prompt_bytes() -> None:
    limits = Limits(max_prompt_bytes=1000)
    text = (
        job_text().replace("task: generate", "task: chat").replace('template: "{{ text }}"\n', "")
    )
    text += "messages:\n" + "".join(
        f"  - {{role: user, content: '{'m' * 400}'}}\n" for _ in range(3)
    )
    (problem,) = list(iter_problems(load_job(text=text, limits=limits)))
    assert "the task's rendered input is about 1,2" in str(problem) and "max_prompt_bytes" in str(
        problem
    )


def test_ordinary_templates_still_render() -> None:
    template = (
        "{{ 2 ** 10 }} {{ text|upper }} {% for c in 'ab' %}{{ loop.index }}{{ c }}{% endfor %}"
        " {{ '%s-%3d' % (text, n) }} {{ '{:>4}'.format(n) }} {{ xs|join(',') }} {{ text ~ '!' }}"
        " {{ text|center(6) }}|{{ xs|batch(2)|list }}"
    )
    assert rendered(template) == "1024 HI 1a2b hi-  3    3 1,2,3 hi!   hi  |[[1, 2], [3]]"


# ------------------------------------------------------------------ input files


def file_job(tmp_path: Path, inputs: str, **kwargs: object):  # type: ignore[no-untyped-def]
    path = tmp_path / "job.yaml"
    path.write_text(job_text().replace("  rows: [{text: hi, n: 3, xs: [1, 2, 3]}]", inputs))
    return load_job(path, **kwargs)  # type: ignore[arg-type]


def test_a_line_over_max_row_bytes_is_a_bad_row_and_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_bytes(
        b'{"text": "a"}\n{"text": "' + b"b" * 5000 + b'"}\n{"text": "c"}\n'
    )
    job = file_job(tmp_path, "  file: rows.jsonl", limits=Limits(max_row_bytes=1000))
    items = list(expand_all(job))
    assert [getattr(i, "prompt", None) for i in items] == ["a", None, "c"]
    assert "longer than 1,000 bytes (limit max_row_bytes)" in str(items[1]) and items[1].row == 2
    assert count_rows(job) == 3


def test_csv_lines_over_max_row_bytes(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("text\na\n" + "b" * 5000 + "\nc\n")
    job = file_job(tmp_path, "  file: rows.csv", limits=Limits(max_row_bytes=1000))
    found = list(iter_problems(job))
    assert len(found) == 1 and "limit max_row_bytes" in str(found[0])


def test_json_too_deep_or_with_huge_numbers_is_a_bad_row(tmp_path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    (tmp_path / "rows.jsonl").write_bytes(
        b'{"text": ' + deep + b"}\n" + b'{"text": 1' + b"1" * 5000 + b"}\n"
    )
    found = list(iter_problems(file_job(tmp_path, "  file: rows.jsonl")))
    assert [p.row for p in found] == [1, 2] and all("invalid JSON" in p.message for p in found)


def test_count_rows_stops_at_the_cap(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"text": "a"}\n' * 1000)
    job = file_job(tmp_path, "  file: rows.jsonl")
    assert count_rows(job) == 1000 and count_rows(job, stop_at=11) == 11
    matrix = load_job(
        text=job_text(rows=None).replace(
            "  rows: [{text: hi, n: 3, xs: [1, 2, 3]}]",
            "  matrix: {"
            + ", ".join(f"k{i}: [{', '.join(map(str, range(10)))}]" for i in range(64))
            + "}",
        )
    )
    assert count_rows(matrix, stop_at=11) == 10**64  # a product: no rows are read


# -------------------------------------------------------------------- paths


def test_the_gateway_never_reads_a_path_a_job_names() -> None:
    job = load_job(
        text=job_text().replace(
            "  rows: [{text: hi, n: 3, xs: [1, 2, 3]}]", "  file: /etc/passwd\n  format: csv"
        )
    )
    assert job.input_file_path() is None
    (problem,) = list(expand_all(job))
    assert isinstance(problem, Problem) and problem.field == "inputs.file"
    assert problem.message == NO_UPLOAD


def test_absolute_and_outside_paths_are_refused_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "outside.jsonl").write_text('{"text": "secret"}\n')
    for inputs in ("  file: /etc/passwd\n  format: csv", "  file: ../outside.jsonl"):
        with pytest.raises(JobFileError) as err:
            file_job(tmp_path / "job", inputs, root=tmp_path / "job")
        (problem,) = err.value.problems
        assert problem.field == "inputs.file" and "--allow-outside-paths" in problem.message
    job = file_job(tmp_path / "job", "  file: ../outside.jsonl", allow_outside_paths=True)
    assert [t.prompt for t in expand_all(job)] == ["secret"]  # type: ignore[union-attr]


def test_extends_outside_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "base.yaml").write_text("vars: {a: 1}\n")
    path = tmp_path / "job" / "job.yaml"
    path.write_text(job_text("extends: ../base.yaml\n"))
    with pytest.raises(JobFileError) as err:
        load_job(path, root=tmp_path / "job")
    assert err.value.problems[0].field == "extends" and "is outside" in str(err.value)
    assert load_job(path, allow_outside_paths=True).vars == {"a": 1}


def test_a_symlink_out_of_the_folder_or_to_a_device_is_refused(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero.jsonl")
    with pytest.raises(JobFileError) as err:
        file_job(tmp_path, "  file: zero.jsonl", root=tmp_path)
    assert "is outside" in str(err.value)
    with pytest.raises(JobFileError) as err:
        file_job(tmp_path, "  file: zero.jsonl", allow_outside_paths=True)
    assert "not a regular file" in str(err.value)


def test_the_default_root_is_the_working_directory_above_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text('{"text": "x"}\n')
    monkeypatch.chdir(tmp_path)  # as examples/jobs/*.yaml read examples/data/
    job = file_job(tmp_path / "jobs", "  file: ../data/rows.jsonl")
    assert [t.prompt for t in expand_all(job)] == ["x"]  # type: ignore[union-attr]
    monkeypatch.chdir(tmp_path / "jobs")
    with pytest.raises(JobFileError, match="is outside"):
        file_job(tmp_path / "jobs", "  file: ../data/rows.jsonl")


# -------------------------------------------------------------------- logs


def test_a_template_error_keeps_the_rows_value_out_of_the_redacted_text() -> None:
    template = "{{ ('{' ~ text ~ '}').format() }}"  # KeyError: 'my secret 7'
    job = load_job(text=job_text(template=template, rows="[{text: 'my secret 7'}]"))
    (problem,) = list(iter_problems(job))
    assert "my secret" in str(problem)  # the submitter sees it
    assert "my secret" not in problem.redacted() and "details hidden" in problem.redacted()
    assert "KeyError" in problem.redacted() and problem.row == 1
    assert JobFileError([problem]).redacted() == problem.redacted()
