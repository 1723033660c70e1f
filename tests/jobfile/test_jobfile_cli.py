"""`batchinfer validate`: golden outputs on the example jobs, and error exits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gateway.cli_validate import build_variables, validate

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted(p.name for p in (ROOT / "examples" / "jobs").glob("*.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"  # regenerate: UPDATE_GOLDEN=1 pytest ...

app = typer.Typer()
app.command("validate")(validate)
app.command("noop")(lambda: None)  # a second command, so "validate" is a subcommand as in cli.py


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", *args], env={"COLUMNS": "100", **(env or {})})
    return result.exit_code, result.output


def check_golden(name: str, output: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(output)
    assert output == path.read_text()


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # paths in the output are relative, as a user types them


def test_all_examples_are_present() -> None:
    assert {
        "quickstart.yaml",
        "translate_csv.yaml",
        "matrix_copy.yaml",
        "classify_sentiment.yaml",
    } <= set(EXAMPLES)
    assert {"base.yaml", "with_profiles.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_json_golden(name: str) -> None:
    code, output = invoke(f"examples/jobs/{name}", "--json", "--show", "2")
    assert code == 0, output
    assert json.loads(output)["ok"] is True
    check_golden(name.replace(".yaml", ".json"), output)


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_profiles_json_golden(profile: str) -> None:
    code, output = invoke(
        "examples/jobs/with_profiles.yaml", "--json", "--profile", profile, "--set", "REGION=us"
    )
    assert code == 0, output
    report = json.loads(output)
    assert report["profile"] == profile and report["name"] == "support-replies-us"
    check_golden(f"with_profiles.{profile}.json", output)


def test_quickstart_text_golden() -> None:
    code, output = invoke("examples/jobs/quickstart.yaml")
    assert code == 0
    assert "job quickstart: 8 chat tasks on smollm2-135m-instruct" in output
    check_golden("quickstart.txt", output)


def test_set_wins_over_environment() -> None:
    code, output = invoke(
        "examples/jobs/quickstart.yaml", "--json", "--set", "MAX_TOKENS=5", env={"MAX_TOKENS": "7"}
    )
    assert code == 0 and json.loads(output)["max_new_tokens"] == 8 * 5
    code, output = invoke("examples/jobs/quickstart.yaml", "--json", env={"MAX_TOKENS": "7"})
    assert json.loads(output)["max_new_tokens"] == 8 * 7


BAD = """\
name: bad
model: m
task: generat
params:
  max_new_tokens: 0
  temperature: -1
  seed: ${SEED}
template: "{{ text }"
inputs: {rows: [{text: a}]}
"""


def test_bad_file_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    code, output = invoke(str(tmp_path / "bad.yaml"), "--json")
    assert code == 2
    report = json.loads(output)
    assert report["ok"] is False
    assert [(p["line"], p["field"]) for p in report["problems"]] == [
        (3, "task"),
        (5, "params.max_new_tokens"),
        (6, "params.temperature"),
        (7, "params.seed"),
        (8, "template"),
    ]
    code, text = invoke(str(tmp_path / "bad.yaml"))
    assert code == 2
    lines = text.splitlines()
    assert lines[0].endswith("bad.yaml: 5 problems")
    assert lines[1].endswith(
        "bad.yaml:3: task: must be one of 'generate', 'chat', 'classify', 'score' or 'embed', got 'generat' (did you mean 'generate'?)"
    )


def test_bad_rows_are_listed_with_their_row(tmp_path: Path) -> None:
    (tmp_path / "rows.yaml").write_text(
        "name: r\nmodel: m\ntask: generate\ntemplate: '{{ text }}'\n"
        "inputs: {rows: [{text: a}, {txt: b}, {text: c}, {text: a}], id: '{{ text }}'}\n"
    )
    code, output = invoke(str(tmp_path / "rows.yaml"), "--json")
    report = json.loads(output)
    assert code == 2 and report["tasks"] == 2
    assert "reads field 'text'" in report["problems"][0]["message"]
    assert "duplicate task id 'a': rows 1 and 4" in report["problems"][1]["message"]
    assert [(p["row"], p["field"]) for p in report["problems"]] == [
        (2, "inputs.id"),
        (4, "inputs.id"),
    ]


def test_bad_set_syntax_exits_2() -> None:
    code, output = invoke("examples/jobs/quickstart.yaml", "--set", "NOEQUALS")
    assert code == 2 and "--set expects NAME=value" in output


def test_build_variables() -> None:
    assert build_variables(["A=1", "B=x=y", "C="], {"A": "env", "D": "d"}) == {
        "A": "1",
        "B": "x=y",
        "C": "",
        "D": "d",
    }
    with pytest.raises(ValueError, match="got '1X=2'"):
        build_variables(["1X=2"], {})
