"""Render workers: a job is checked and expanded in a child process; one that passes
its CPU, wall-clock or memory budget is killed, and the error names the limit, the
row and the template. Also the request caps checked before any of that."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.errors import InvalidArgument
from gateway.jobfile import JobFileError
from gateway.limits import Limits
from gateway.render_pool import InlineRenderer, RenderPool, WorkerCrashed
from gateway.submission import Submission

pytestmark = pytest.mark.timeout(120)

ROWS = "[{text: a}, {text: b}, {text: c}]"


def spec(template: str = "{{ text }}", rows: str = ROWS, **extra: object) -> dict[str, object]:
    text = (
        f"name: pool\nmodel: m\ntask: generate\ntemplate: {template!r}\n"
        f"inputs: {{rows: {rows}, id: 'r{{{{ row_number }}}}'}}\n"
    )
    return {"job_yaml": text, "variables": {}, "filename": "pool.yaml", "files": {}, **extra}


BURN = "{% for a in xs %}{{ (text * 1000)|replace('', 'ab')|length }}{% endfor %}"
BURN_ROWS = (
    "[{text: a, xs: [1]}, {text: " + "y" * 3000 + ", xs: [" + ", ".join(["1"] * 2000) + "]}]"
)


@pytest.fixture(params=["pool", "inline"])
def renderer(request: pytest.FixtureRequest) -> RenderPool | InlineRenderer:
    limits = Limits(render_wall_s=20, render_cpu_s=20)
    return RenderPool(limits, 2) if request.param == "pool" else InlineRenderer(limits)


async def test_check_counts_and_returns_the_job(renderer: RenderPool | InlineRenderer) -> None:
    checked = await renderer.check(spec(), {}, max_rows=10, prevalidate_rows=10)
    assert checked.rows == 3 and checked.job.name == "pool"


async def test_check_refuses_a_bad_row_and_too_many_rows(
    renderer: RenderPool | InlineRenderer,
) -> None:
    with pytest.raises(JobFileError) as err:
        await renderer.check(spec("{{ nope }}"), {}, max_rows=10, prevalidate_rows=10)
    assert [p.row for p in err.value.problems] == [1, 2, 3]
    with pytest.raises(JobFileError, match="the job has 3 tasks; this gateway takes at most 2"):
        await renderer.check(spec(), {}, max_rows=2, prevalidate_rows=10)


async def test_check_refuses_a_file_input_without_upload(
    renderer: RenderPool | InlineRenderer,
) -> None:
    job = spec()
    job["job_yaml"] = str(job["job_yaml"]).replace(
        f"rows: {ROWS}", "file: /etc/passwd, format: csv"
    )
    with pytest.raises(JobFileError) as err:
        await renderer.check(job, {}, max_rows=10, prevalidate_rows=10)
    (problem,) = err.value.problems
    assert problem.field == "inputs.file" and "no input file was uploaded" in problem.message


async def test_expand_streams_chunks_from_a_row_on(renderer: RenderPool | InlineRenderer) -> None:
    rows = "[" + ", ".join(f"{{text: t{i}}}" for i in range(4500)) + "]"
    chunks = [c async for c in renderer.expand(spec(rows=rows), {}, job_id="j", skip=100)]
    assert [len(c) for c in chunks] == [2000, 2000, 400]
    task_id, idx, input_hash, payload, est_tokens, shard_key, evaluation = chunks[0][0]
    assert (task_id, idx, shard_key) == ("r101", 100, None) and len(input_hash) == 64
    assert payload and est_tokens == 1 and evaluation is None


async def test_expand_stops_at_a_bad_row(renderer: RenderPool | InlineRenderer) -> None:
    with pytest.raises(JobFileError, match="row 2"):
        async for _ in renderer.expand(spec("{{ 1 // (row_number - 2) }}"), {}, job_id="j", skip=0):
            pass


async def test_a_worker_past_its_cpu_budget_is_killed_naming_the_row() -> None:
    pool = RenderPool(Limits(render_cpu_s=1, render_wall_s=30), 1)
    started = time.monotonic()
    with pytest.raises(JobFileError) as err:
        await pool.check(spec(BURN, BURN_ROWS), {}, max_rows=10, prevalidate_rows=10)
    (problem,) = err.value.problems
    assert "used more than 1 s of CPU (limit render_cpu_s)" in problem.message
    assert (problem.row, problem.field) == (2, "template")
    assert time.monotonic() - started < 10


async def test_a_worker_past_its_wall_clock_budget_is_killed() -> None:
    pool = RenderPool(Limits(render_cpu_s=60, render_wall_s=1), 1)
    with pytest.raises(JobFileError) as err:
        async for _ in pool.expand(spec(BURN, BURN_ROWS), {}, job_id="j", skip=0):
            pass
    (problem,) = err.value.problems
    assert "expanding the job took longer than 1 s (limit render_wall_s)" in problem.message
    assert problem.row == 2


async def test_a_worker_out_of_memory_fails_the_job_not_the_gateway() -> None:
    pool = RenderPool(Limits(render_memory_bytes=400 * 1024 * 1024), 1)
    rows = "[{text: " + "y" * 3000 + "}]"
    with pytest.raises(JobFileError) as err:
        await pool.check(
            spec("{{ (text * 5000)|batch(1)|list|length }}", rows),
            {},
            max_rows=1,
            prevalidate_rows=1,
        )
    assert "limit render_memory_bytes" in str(err.value) and err.value.problems[0].row == 1


async def test_a_bug_in_a_worker_is_not_blamed_on_the_job() -> None:
    pool = RenderPool(Limits(), 1)
    with pytest.raises(WorkerCrashed):
        await pool.check({"job_yaml": None}, {}, max_rows=1, prevalidate_rows=1)


# ----------------------------------------------------------- request caps


def test_request_fields_over_their_caps_are_refused(tmp_path: Path) -> None:
    limits = Limits(max_upload_bytes=10)
    with pytest.raises(InvalidArgument) as err:
        Submission("x", {}, idempotency_key="k" * 300).check_sizes(limits)
    assert err.value.field == "idempotency_key" and "max_idempotency_key_chars" in str(err.value)
    with pytest.raises(JobFileError, match="limit max_job_bytes"):
        Submission("x" * (3 * 1024 * 1024), {}).check_sizes(limits)
    with pytest.raises(JobFileError, match="limit max_job_bytes"):
        Submission("x", {"V": "v" * (3 * 1024 * 1024)}).check_sizes(limits)
    upload = tmp_path / "up"
    upload.write_bytes(b"x" * 11)
    with pytest.raises(JobFileError) as err2:
        Submission("x", {}, upload=upload).check_sizes(limits)
    assert err2.value.problems[0].field == "inputs.file" and "max_upload_bytes" in str(err2.value)


# ------------------------------------------------------------- validate


def test_validate_stops_counting_at_max_tasks_and_prints_one_line(tmp_path: Path) -> None:
    import typer

    from gateway.cli_validate import validate

    app = typer.Typer()
    app.command("validate")(validate)
    app.command("noop")(lambda: None)
    values = ", ".join(str(i) for i in range(10))
    matrix = ", ".join(f"k{i}: [{values}]" for i in range(64))
    (tmp_path / "huge.yaml").write_text(
        f"name: h\nmodel: m\ntask: generate\ntemplate: x\ninputs: {{matrix: {{{matrix}}}}}\n"
    )
    (tmp_path / "deep.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    started = time.monotonic()
    result = CliRunner().invoke(
        app, ["validate", str(tmp_path / "huge.yaml"), "--max-tasks", "100"]
    )
    assert result.exit_code == 2 and "at most 100 (--max-tasks)" in result.output
    assert time.monotonic() - started < 5
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "deep.yaml")])
    assert result.exit_code == 2 and "limit max_yaml_depth" in result.output
    assert "Traceback" not in result.output
