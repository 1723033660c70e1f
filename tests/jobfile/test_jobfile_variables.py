"""The ${NAME} / ${NAME:default} parser, alone and inside job files."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.jobfile import JobFileError, load_job
from gateway.jobfile.variables import escape, referenced_names, substitute

JOB = """\
name: vars
model: m
task: generate
template: "{{ text }}"
params:
  max_new_tokens: TOKENS
inputs: {rows: [{text: hi}]}
"""

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


def test_value_and_default_and_escape() -> None:
    text, issues = substitute("a ${X} b ${Y:dflt} c $${Z} d $5", {"X": "1"})
    assert (text, issues) == ("a 1 b dflt c ${Z} d $5", [])


def test_default_keeps_colons() -> None:
    text, issues = substitute("${URL:http://host:80/v1}", {})
    assert text == "http://host:80/v1" and not issues


def test_undefined_and_unterminated_are_reported_with_offsets() -> None:
    text, issues = substitute("x ${MISSING} y ${OPEN", {})
    assert text == "x ${MISSING} y ${OPEN"
    assert [i.name for i in issues] == ["MISSING", None]
    assert issues[0].offset == 2 and "undefined variable MISSING" in issues[0].message
    assert "unterminated ${" in issues[1].message and issues[1].offset == 15


def test_bad_name_is_reported() -> None:
    _, issues = substitute("${1X}", {})
    assert "bad variable name '1X'" in issues[0].message


def test_referenced_names_lists_every_reference() -> None:
    assert referenced_names("${A} ${B:1} $${C} ${A}") == {"A", "B"}


@given(st.text())
def test_escape_round_trips(text: str) -> None:
    assert substitute(escape(text), {}) == (text, [])


@given(names, st.text().filter(lambda s: "}" not in s))
def test_defaults_may_contain_anything_but_a_brace(name: str, default: str) -> None:
    assert substitute(f"${{{name}:{default}}}", {}) == (default, [])


@given(names, st.text(), st.text())
def test_given_value_wins_over_default(name: str, value: str, default: str) -> None:
    default = default.replace("}", "")
    assert substitute(f"<${{{name}:{default}}}>", {name: value})[0] == f"<{value}>"


@given(names)
def test_process_environment_is_never_read(name: str) -> None:
    os.environ[name] = "from-environment"
    try:
        text, issues = substitute(f"${{{name}}}", {})
        assert text == f"${{{name}}}" and issues[0].name == name
    finally:
        del os.environ[name]


def test_job_file_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENS", "12")
    with pytest.raises(JobFileError) as err:
        load_job(text=JOB.replace("TOKENS", "${TOKENS}"), filename="job.yaml")
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.field) == ("job.yaml", 6, "params.max_new_tokens")
    assert "undefined variable TOKENS" in problem.message


def test_substituted_plain_scalar_takes_the_schema_type() -> None:
    job = load_job(text=JOB.replace("TOKENS", "${N:64}"))
    assert job.params.max_new_tokens == 64
    job = load_job(text=JOB.replace("TOKENS", '"${N:64}"'), variables={"N": "9"})
    assert job.params.max_new_tokens == 9


def test_a_value_cannot_change_the_structure_of_the_file() -> None:
    text = JOB.replace('"{{ text }}"', '"${T}"').replace("TOKENS", "8")
    job = load_job(text=text, variables={"T": "a: b\n# c {{ text }}"})
    assert job.template == "a: b\n# c {{ text }}"


def test_unterminated_reference_names_file_and_line() -> None:
    text = JOB.replace("TOKENS", "8").replace("name: vars", "name: ${NAME")
    with pytest.raises(JobFileError) as err:
        load_job(text=text, filename="j.yaml")
    assert str(err.value.problems[0]).startswith("j.yaml:1: name: unterminated ${")


def test_line_of_a_reference_inside_a_block_scalar() -> None:
    text = JOB.replace("TOKENS", "8").replace(
        'template: "{{ text }}"', "template: |\n  one\n  two ${X}\n"
    )
    with pytest.raises(JobFileError) as err:
        load_job(text=text, filename="j.yaml")
    assert err.value.problems[0].line == 6


def test_unquoted_reference_in_a_flow_mapping_gets_a_quoting_hint() -> None:
    text = JOB.replace("TOKENS", "8").replace(
        "inputs: {rows: [{text: hi}]}", "inputs: {rows: [{text: ${X}}]}"
    )
    with pytest.raises(JobFileError) as err:
        load_job(text=text, filename="j.yaml")
    (problem,) = err.value.problems
    assert problem.line == 7 and "invalid YAML" in problem.message
    assert 'quote a ${...} value, as in "${N:64}"' in problem.message
