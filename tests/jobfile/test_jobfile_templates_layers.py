"""Sandboxed templates, and the extends / profiles layering."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.jobfile import JobFileError, Problem, expand, load_job

JOB = """\
name: t
model: m
task: generate
vars: {greeting: Hello}
template: "TEMPLATE"
inputs:
  rows:
    - {name: Ann}
    - {nom: Bob}
"""


def first_problem(template: str) -> Problem:
    job = load_job(text=JOB.replace("TEMPLATE", template), filename="t.yaml")
    with pytest.raises(JobFileError) as err:
        list(expand(job))
    return err.value.problems[0]


def load_problems(template: str) -> list[Problem]:
    with pytest.raises(JobFileError) as err:
        load_job(text=JOB.replace("TEMPLATE", template), filename="t.yaml")
    return err.value.problems


def test_rows_and_vars_are_template_variables() -> None:
    text = JOB.replace(
        "TEMPLATE", "{{ greeting }} {{ name }} ({{ vars.greeting }}, row {{ row_number }})"
    )
    job = load_job(text=text.replace("{nom: Bob}", "{name: Bob, greeting: Hi}"))
    assert [t.prompt for t in expand(job)] == ["Hello Ann (Hello, row 1)", "Hi Bob (Hello, row 2)"]


def test_missing_field_names_template_row_and_field() -> None:
    problem = first_problem("{{ greeting }} {{ name }}")
    assert (problem.file, problem.line, problem.field, problem.row) == ("t.yaml", 5, "template", 2)
    assert (
        "reads field 'name', which this row does not have (it has: greeting, nom)"
        in problem.message
    )


def test_syntax_error_names_the_template() -> None:
    (problem,) = load_problems("{{ name ")
    assert (problem.field, problem.line) == (
        "template",
        5,
    ) and "template syntax error" in problem.message


@pytest.mark.parametrize(
    "escape",
    ["{{ ''.__class__.__mro__ }}", "{{ name['__class__'] }}", "{{ __builtins__ }}"],
)
def test_sandbox_escapes_are_refused_at_load(escape: str) -> None:
    (problem,) = load_problems(escape)
    assert problem.field == "template" and "forbidden in templates" in problem.message


def test_sandbox_refuses_unsafe_calls_at_render() -> None:
    problem = first_problem("{{ [].append(1) }}")
    assert problem.row == 1 and problem.field == "template"
    assert "forbidden by the sandbox" in problem.message


def test_error_in_a_message_template_names_the_message() -> None:
    text = JOB.replace("task: generate", "task: chat").replace(
        'template: "TEMPLATE"',
        'messages:\n  - {role: system, content: "x"}\n  - {role: user, content: "{{ name }}"}',
    )
    with pytest.raises(JobFileError) as err:
        list(expand(load_job(text=text)))
    assert err.value.problems[0].field == "messages[1].content"


# ---------------------------------------------------------------- layering


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = "model: m\ntask: generate\ntemplate: '{{ x }}'\nparams: {temperature: 0.5, max_new_tokens: 8, stop: [a, b]}\n"
CHILD = """\
name: child
extends: base.yaml
params: {max_new_tokens: 32, stop: [c]}
inputs: {rows: [{x: 1}]}
profiles:
  prod: {params: {max_new_tokens: 256}, schedule: {priority: 9}}
  dev: {params: {max_new_tokens: 4}}
"""


def test_extends_merges_maps_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    job = load_job(write(tmp_path, "child.yaml", CHILD))
    assert (
        job.params.temperature == 0.5
        and job.params.max_new_tokens == 32
        and job.params.stop == ["c"]
    )
    assert job.extends == "base.yaml"


def test_profile_overlays_last(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    job = load_job(write(tmp_path, "child.yaml", CHILD), profile="prod")
    assert (job.params.max_new_tokens, job.params.temperature, job.schedule.priority) == (
        256,
        0.5,
        9,
    )
    assert job.profile == "prod"


def test_unknown_profile_suggests_a_name(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, "child.yaml", CHILD), profile="prd")
    assert "unknown profile 'prd' (did you mean 'prod'?); profiles: dev, prod" in str(err.value)


def test_error_in_a_profile_points_into_the_profile(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", CHILD.replace("max_new_tokens: 4", "max_new_tokens: 0"))
    with pytest.raises(JobFileError) as err:
        load_job(child, profile="dev")
    (problem,) = err.value.problems
    assert (problem.line, problem.field) == (7, "params.max_new_tokens")


def test_error_in_a_base_names_the_base_file(tmp_path: Path) -> None:
    write(tmp_path, "layers/global.yaml", "model: m\nparams: {top_k: -1}\n")
    write(tmp_path, "base.yaml", "extends: layers/global.yaml\n" + BASE.replace("model: m\n", ""))
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, "child.yaml", CHILD))
    (problem,) = err.value.problems
    assert problem.file is not None and problem.file.endswith("layers/global.yaml")
    assert (problem.line, problem.field) == (2, "params.top_k")


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: child.yaml\n")
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, "child.yaml", CHILD.replace("base.yaml", "a.yaml")))
    assert "extends makes a cycle: child.yaml -> a.yaml -> b.yaml -> child.yaml" in str(err.value)


def test_missing_extends_file(tmp_path: Path) -> None:
    with pytest.raises(JobFileError) as err:
        load_job(write(tmp_path, "child.yaml", CHILD))
    (problem,) = err.value.problems
    assert (problem.line, problem.field) == (2, "extends") and "no such file" in problem.message


def test_registered_template_needs_a_gateway() -> None:
    text = CHILD.replace("base.yaml", "summarize@3")
    with pytest.raises(JobFileError) as err:
        load_job(text=text)
    assert "registered templates need a gateway" in str(err.value)
    calls = []

    def resolve(name: str, version: str) -> str:
        calls.append((name, version))
        return BASE

    job = load_job(text=text, resolve_template=resolve)
    assert calls == [("summarize", "3")] and job.params.temperature == 0.5


def test_read_file_callback_is_used_for_extends() -> None:
    job = load_job(text=CHILD, read_file={"base.yaml": BASE}.__getitem__)
    assert job.params.max_new_tokens == 32
