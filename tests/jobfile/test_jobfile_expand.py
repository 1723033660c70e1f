"""Inputs (rows, JSONL, CSV, matrix), ids, duplicates and lazy expansion."""

from __future__ import annotations

import gc
import itertools
from pathlib import Path

import psutil
import pytest

from gateway.jobfile import (
    JobFileError,
    Problem,
    count_rows,
    expand,
    expand_all,
    iter_problems,
    load_job,
)

JOB = """\
name: e
model: m
task: generate
template: "{{ a }}/{{ b }}"
params: {max_new_tokens: 10}
inputs:
INPUTS
"""


def job_with(inputs: str, folder: Path | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    text = JOB.replace("INPUTS", inputs)
    if folder is None:
        return load_job(text=text, filename="e.yaml", **kwargs)  # type: ignore[arg-type]
    path = folder / "e.yaml"
    path.write_text(text)
    return load_job(path, **kwargs)  # type: ignore[arg-type]


def bad_rows(job) -> list[Problem]:  # type: ignore[no-untyped-def]
    return list(iter_problems(job))


def test_inline_rows_default_ids_are_row_numbers() -> None:
    job = job_with("  rows: [{a: 1, b: 2}, {a: 3, b: 4}]")
    tasks = list(expand(job))
    assert [(t.index, t.task_id, t.prompt) for t in tasks] == [(0, "1", "1/2"), (1, "2", "3/4")]
    assert tasks[0].params == {"max_new_tokens": 10} and tasks[0].est_tokens == 1 + 10
    assert count_rows(job) == 2


def test_matrix_is_a_stable_cartesian_product() -> None:
    job = job_with("  matrix: {a: [x, y], b: [1, 2, 3]}\n  id: '{{ a }}{{ b }}'")
    assert [t.task_id for t in expand(job)] == ["x1", "x2", "x3", "y1", "y2", "y3"]
    assert count_rows(job) == 6


def test_same_input_same_hash_across_loads() -> None:
    first = [t.input_hash for t in expand(job_with("  matrix: {a: [x, y], b: [1]}"))]
    again = [t.input_hash for t in expand(job_with("  matrix: {a: [x, y], b: [1]}"))]
    hotter = JOB.replace("max_new_tokens: 10", "max_new_tokens: 11").replace(
        "INPUTS", "  matrix: {a: [x, y], b: [1]}"
    )
    changed = [t.input_hash for t in expand(load_job(text=hotter))]
    assert first == again and first[0] != first[1] and set(first).isdisjoint(changed)


def test_duplicate_ids_name_both_rows() -> None:
    job = job_with("  rows: [{a: 1, b: 2}, {a: 3, b: 4}, {a: 1, b: 5}]\n  id: 'k{{ a }}'")
    with pytest.raises(JobFileError) as err:
        list(expand(job))
    (problem,) = err.value.problems
    assert problem.row == 3 and problem.field == "inputs.id"
    assert "duplicate task id 'k1': rows 1 and 3 have it" in problem.message
    assert [t.task_id for t in expand(job, check_duplicates=False)] == ["k1", "k3", "k1"]


def test_empty_id_is_an_error() -> None:
    job = job_with("  rows: [{a: '', b: 2}]\n  id: '{{ a }}'")
    assert "empty task id" in bad_rows(job)[0].message


def test_jsonl_file_relative_to_the_job(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"a": 1, "b": "x"}\n\n{"a": 2, "b": "y"}\n')
    job = job_with("  file: rows.jsonl\n  id: 'r{{ a }}'", tmp_path)
    assert job.input_file_path() == tmp_path / "rows.jsonl"
    assert [(t.task_id, t.prompt) for t in expand(job)] == [("r1", "1/x"), ("r2", "2/y")]
    assert count_rows(job) == 2


def test_input_file_override(tmp_path: Path) -> None:
    spooled = tmp_path / "upload.bin"
    spooled.write_text('{"a": 7, "b": 8}\n')
    job = job_with("  file: missing.jsonl", input_file=spooled)
    assert job.input_file_path() == spooled and [t.prompt for t in expand(job)] == ["7/8"]


def test_jsonl_bad_lines_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_bytes(
        b'{"a": 1, "b": 2}\n[1, 2]\n{"a": \n{"a": "\xff", "b": 1}\n'
    )
    job = job_with("  file: rows.jsonl", tmp_path)
    found = bad_rows(job)
    assert [(Path(p.file or "").name, p.line, p.row) for p in found] == [
        ("rows.jsonl", n, n) for n in (2, 3, 4)
    ]
    assert "expected a JSON object per line, got list" in found[0].message
    assert "invalid JSON" in found[1].message
    assert "not valid UTF-8 (byte 0xff at column 8)" in found[2].message


def test_csv_file_with_quotes_and_ragged_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text('a,b\n1,"x, y"\n2\n3,z,extra\n4,w\n')
    job = job_with("  file: rows.csv", tmp_path)
    found = bad_rows(job)
    assert [(p.line, p.row) for p in found] == [(3, 2), (4, 3)]
    assert "has 1 values but the header has 2 columns" in found[0].message
    tasks = [t for t in expand_all(job) if not isinstance(t, Problem)]
    assert [(t.task_id, t.prompt) for t in tasks] == [("1", "1/x, y"), ("4", "4/w")]
    assert count_rows(job) == 4


def test_csv_non_utf8_and_bad_header(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_bytes(b"a,b\n1,caf\xe9\n2,ok\n")
    found = bad_rows(job_with("  file: rows.csv", tmp_path))
    assert [(p.line, p.row) for p in found] == [(2, 1)] and "not valid UTF-8" in found[0].message
    (tmp_path / "rows.csv").write_text("a,a\n1,2\n")
    assert "the CSV header repeats a" in bad_rows(job_with("  file: rows.csv", tmp_path))[0].message


def test_missing_input_file_is_reported(tmp_path: Path) -> None:
    found = bad_rows(job_with("  file: nowhere.jsonl", tmp_path))
    assert found[0].field == "inputs.file" and "cannot read the input file" in found[0].message


def test_expansion_is_lazy_and_first_task_comes_at_once() -> None:
    values = ", ".join(str(i) for i in range(1000))
    job = job_with(f"  matrix: {{a: [{values}], b: [{values}]}}")
    assert count_rows(job) == 1_000_000
    first = next(expand(job))
    assert (first.task_id, first.prompt) == ("1", "0/0")


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.slow  # about 15 s per case on 2 shared cores
@pytest.mark.parametrize(("check", "bound_mib"), [(False, 40), (True, 80)])
def test_million_row_matrix_expands_in_bounded_memory(check: bool, bound_mib: int) -> None:
    values = ", ".join(str(i) for i in range(1000))
    job = job_with(f"  matrix: {{a: [{values}], b: [{values}]}}\n  id: 'a{{{{ a }}}}b{{{{ b }}}}'")
    tasks = expand(job, check_duplicates=check)
    assert len(list(itertools.islice(tasks, 10_000))) == 10_000  # warm up before the baseline
    before, peak, count = _rss(), 0, 10_000
    last_id = ""
    for count, task in enumerate(tasks, 10_001):
        last_id = task.task_id
        if count % 100_000 == 0:
            peak = max(peak, psutil.Process().memory_info().rss - before)
    assert count == 1_000_000 and last_id == "a999b999"
    # a list of the tasks would take about 1 GiB; the id table (when checked) 16 MiB
    assert peak < bound_mib * 2**20, f"RSS grew by {peak / 2**20:.1f} MiB"
