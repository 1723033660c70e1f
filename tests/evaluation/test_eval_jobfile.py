"""Job-file errors of `evaluate:` and `models:`, each naming its field, and how a job
of several models expands."""

from __future__ import annotations

import pytest

from gateway.jobfile import JobFileError, expand, load_job

JOB = """version: 1
name: ev
{models}
task: {task}
template: "Q: {{{{ q }}}}"
{labels}
inputs: {{rows: [{{id: a, q: x, answer: pos}}, {{id: b, q: y, answer: neg}}], id: "{{{{ id }}}}"}}
{evaluate}
"""
EVAL = 'evaluate: {reference: "{{ answer }}", metrics: [exact_match, contains]}'


def _load(tmp_path, *, models="model: m", task="generate", labels="", evaluate=EVAL):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(models=models, task=task, labels=labels, evaluate=evaluate))
    return load_job(path)


def _problem(tmp_path, **kw):
    with pytest.raises(JobFileError) as caught:
        job = _load(tmp_path, **kw)
        list(expand(job))
    [problem] = caught.value.problems
    return problem


def test_unknown_metric_names_the_field(tmp_path):
    problem = _problem(
        tmp_path, evaluate='evaluate: {reference: "{{ answer }}", metrics: [bleu, f2]}'
    )
    assert problem.field == "evaluate"
    assert "metrics[1]: unknown metric 'f2'" in problem.message


def test_metric_not_for_the_task_type(tmp_path):
    problem = _problem(
        tmp_path, evaluate='evaluate: {reference: "{{ answer }}", metrics: [accuracy]}'
    )
    assert problem.field == "evaluate"
    assert "accuracy is not a metric for task generate" in problem.message


def test_model_and_models_both_given(tmp_path):
    problem = _problem(tmp_path, models="model: m\nmodels: [a, b]")
    assert problem.field == "models"
    assert "give model or models, not both" in problem.message


def test_reference_missing(tmp_path):
    problem = _problem(tmp_path, evaluate="evaluate: {metrics: [exact_match]}")
    assert problem.field == "evaluate.reference"
    assert "required" in problem.message


def test_reference_of_a_row_that_lacks_the_field(tmp_path):
    problem = _problem(
        tmp_path, evaluate='evaluate: {reference: "{{ nope }}", metrics: [contains]}'
    )
    assert (problem.field, problem.row) == ("evaluate.reference", 1)


def test_classify_reference_must_be_a_label(tmp_path):
    labels = "labels: [pos, other]"
    evaluate = 'evaluate: {reference: "{{ answer }}", metrics: [accuracy, macro_f1]}'
    problem = _problem(tmp_path, task="classify", labels=labels, evaluate=evaluate)
    assert (problem.field, problem.row) == ("evaluate.reference", 2)
    assert "not one of labels" in problem.message


def test_each_row_once_per_model_with_its_reference(tmp_path):
    job = _load(tmp_path, models="models: [m1, m2]")
    assert job.model == "m1,m2" and job.model_names() == ("m1", "m2")
    tasks = list(expand(job))
    assert [(t.task_id, t.model, t.row_id, t.reference) for t in tasks] == [
        ("a@m1", "m1", "a", "pos"),
        ("a@m2", "m2", "a", "pos"),
        ("b@m1", "m1", "b", "neg"),
        ("b@m2", "m2", "b", "neg"),
    ]
    assert tasks[0].eval_input == "Q: x"
