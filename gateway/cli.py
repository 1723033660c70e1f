"""The `batchinfer` command line."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from batchinfer.v1 import gateway_pb2
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gateway.cli_validate import build_variables, validate
from gateway.client import GatewayClient, read_local_job
from gateway.jobfile import JobFileError

app = typer.Typer(
    help="Run large batches of LLM tasks through a gateway and a fleet of inference servers.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("validate", help="Check a job file and show the tasks it expands to.")(validate)
console = Console(stderr=True)
out = Console()

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in gateway_pb2.JobState.items()}

SetOption = Annotated[list[str], typer.Option("--set", help="NAME=value for ${NAME}; repeatable.")]
ProfileOption = Annotated[
    str | None, typer.Option("--profile", help="A profile of the job file to apply.")
]
GatewayOption = Annotated[
    str, typer.Option("--gateway", "-g", envvar="BATCHINFER_GATEWAY", help="Gateway HOST:PORT.")
]


def _load(job: Path, sets: list[str], profile: str | None) -> Any:
    try:
        variables = build_variables(sets, os.environ)
        return read_local_job(job, variables, profile)
    except (JobFileError, ValueError, OSError) as exc:
        console.print(f"[red]invalid job file[/red] {job}:\n{exc}")
        raise typer.Exit(EXIT_INVALID) from exc


def _grpc_error(exc: grpc.aio.AioRpcError) -> typer.Exit:
    console.print(f"[red]{exc.code().name}[/red]: {exc.details()}")
    return typer.Exit(
        EXIT_INVALID if exc.code() == grpc.StatusCode.INVALID_ARGUMENT else EXIT_ERROR
    )


def _exit_code(job: gateway_pb2.Job) -> int:
    if (
        job.state == gateway_pb2.JOB_STATE_COMPLETED
        and job.counts.failed == 0
        and job.counts.cancelled == 0
    ):
        return EXIT_OK
    return EXIT_PARTIAL


async def _follow(
    client: GatewayClient, job_id: str, output: Path, total_hint: int
) -> gateway_pb2.Job:
    """Writes the results file while a live progress bar shows done/failed/total, rates and ETA."""
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stats = {"done": 0, "failed": 0, "tokens": 0}
    progress = Progress(
        BarColumn(bar_width=16),
        TextColumn("{task.completed:.0f}/{task.total:.0f} done, {task.fields[failed]} failed"),
        TextColumn("{task.fields[rate]:.1f} tasks/s {task.fields[tok_rate]:.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(compact=True),
        console=console,
        transient=False,
    )

    def on_result(line: dict[str, Any]) -> None:
        stats["done"] += 1
        stats["failed"] += line["status"] != "succeeded"
        stats["tokens"] += line["usage"]["prompt_tokens"] + line["usage"]["completion_tokens"]

    with progress, output.open("w", encoding="utf-8") as handle:
        bar = progress.add_task(job_id, total=max(total_hint, 1), failed=0, rate=0.0, tok_rate=0.0)
        follower = asyncio.create_task(client.follow_results(job_id, handle, on_result))
        last = None
        async for snapshot in client.watch(job_id, interval_ms=300):
            last = snapshot
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(
                bar,
                total=max(snapshot.counts.total, 1),
                completed=stats["done"],
                failed=stats["failed"],
                rate=stats["done"] / elapsed,
                tok_rate=stats["tokens"] / elapsed,
            )
        await follower
        elapsed = max(time.monotonic() - started, 1e-6)
        progress.update(
            bar,
            completed=stats["done"],
            failed=stats["failed"],
            rate=stats["done"] / elapsed,
            tok_rate=stats["tokens"] / elapsed,
        )
    assert last is not None
    return await client.get(job_id)


def _summary(job: gateway_pb2.Job, output: Path | None) -> None:
    c = job.counts
    text = (
        f"job {job.job_id} ({job.name}) {STATE_NAMES.get(job.state, '?')}: {c.succeeded} succeeded, "
        f"{c.failed} failed, {c.cancelled} cancelled of {c.total}"
    )
    if c.reused:
        text += f" ({c.reused} reused from an earlier run)"
    console.print(text)
    if job.error:
        console.print(f"[red]error[/red]: {job.error}")
    if output is not None:
        console.print(f"results: {output}")


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="The job file (YAML).")],
    set_: SetOption = [],  # noqa: B006
    profile: ProfileOption = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Results file (JSONL).")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Inference servers to start.")
    ] = 1,
    backend: Annotated[
        str, typer.Option("--backend", help="transformers (the real model) or echo.")
    ] = "transformers",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Keep the gateway's SQLite store here.")
    ] = None,
    worker_arg: Annotated[
        list[str], typer.Option("--worker-arg", help="Extra flag for each inference server.")
    ] = [],  # noqa: B006
) -> None:
    """Start a local gateway and inference servers, run the job, write its results, stop everything."""
    from gateway.local import LocalFleet, StartError

    if backend not in ("transformers", "echo"):
        console.print(f"[red]--backend[/red] must be transformers or echo, got {backend!r}")
        raise typer.Exit(EXIT_INVALID)
    local = _load(job, set_, profile)
    output = output or Path(local.spec.output or f"results/{local.spec.name}.jsonl")
    workdir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="batchinfer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = LocalFleet(workdir)
    try:
        with console.status(
            f"starting {workers} inference server(s) ({backend}, {local.spec.model}) and a gateway"
        ):
            fleet.start_workers(workers, backend, local.spec.model, extra=list(worker_arg))
            gateway = fleet.start_gateway()
        result = asyncio.run(_submit_and_follow(gateway.address, local, profile, output))
    except StartError as exc:
        console.print(f"[red]could not start the local fleet[/red]: {exc}\n(logs in {workdir})")
        raise typer.Exit(EXIT_ERROR) from exc
    finally:
        fleet.stop()
    raise typer.Exit(result)


async def _submit_and_follow(address: str, local: Any, profile: str | None, output: Path) -> int:
    client = GatewayClient(address)
    try:
        await client.wait_ready()
        try:
            job = await client.submit(local, profile=profile)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from exc
        final = await _follow(client, job.job_id, output, job.counts.total)
        _summary(final, output)
        return _exit_code(final)
    finally:
        await client.close()


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the public API (0: any free port).")] = 50051,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Folder of the SQLite store and uploads.")
    ] = Path(".batchinfer"),
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store-url",
            envvar="BATCHINFER_STORE_URL",
            help="SQLAlchemy URL of the store (PostgreSQL for several replicas).",
        ),
    ] = None,
    worker: Annotated[
        list[str], typer.Option("--worker", help="Inference server HOST:PORT; repeatable.")
    ] = [],  # noqa: B006
    workers_dns: Annotated[
        str | None,
        typer.Option(
            "--workers-dns", help="HOST:PORT whose DNS records are the inference servers."
        ),
    ] = None,
    tenant_weight: Annotated[
        list[str],
        typer.Option("--tenant-weight", help="TENANT=WEIGHT fair-share weight; repeatable."),
    ] = [],  # noqa: B006
    tenant_max_queued: Annotated[
        int | None, typer.Option(help="Admission cap on unfinished tasks per tenant.")
    ] = None,
    lease_s: Annotated[
        float,
        typer.Option(
            help="Seconds a server may go without progress before its tasks are taken back."
        ),
    ] = 60.0,
    max_job_tasks: Annotated[int, typer.Option(help="Tasks in one job at most.")] = 5_000_000,
    eject_after_failures: Annotated[
        int,
        typer.Option(
            min=1,
            help="Streams in a row a server accepted and then dropped, after which it is "
            "ejected (a server that is down or restarting is only retried).",
        ),
    ] = 3,
    eject_s: Annotated[
        float,
        typer.Option(help="Seconds an ejected server is left alone before a health check."),
    ] = 10.0,
    grace_s: Annotated[
        float,
        typer.Option(
            "--grace-s",
            min=0,
            help="On SIGTERM: seconds to wait for the results of tasks in flight before "
            "giving them back to the store and exiting 0.",
        ),
    ] = 20.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level (else BATCHINFER_LOG_LEVEL, else INFO).")
    ] = None,
) -> None:
    """Run the gateway service."""
    from collector import TelemetryConfig, setup_telemetry
    from gateway.server import main as serve_main
    from gateway.settings import GatewayConfig, SettingsError

    try:
        weights = {}
        for item in tenant_weight:
            name, eq, value = item.partition("=")
            if not eq:
                raise SettingsError(f"--tenant-weight expects TENANT=WEIGHT, got {item!r}")
            weights[name] = float(value)
        config = GatewayConfig(
            host=host,
            port=port,
            data_dir=data_dir,
            store_url=store_url,
            workers=tuple(worker),
            workers_dns=workers_dns,
            tenant_weights=weights,
            tenant_max_queued=tenant_max_queued,
            lease_s=lease_s,
            max_job_tasks=max_job_tasks,
            eject_after_failures=eject_after_failures,
            eject_s=eject_s,
            grace_s=grace_s,
        )
    except (SettingsError, ValueError) as exc:
        console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    telemetry = setup_telemetry(
        TelemetryConfig(
            service_name="batchinfer-gateway", metrics_port=metrics_port, log_level=log_level
        )
    )
    try:
        code = serve_main(config)
    finally:
        telemetry.shutdown()
    raise typer.Exit(code)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context) -> None:
    """Run an inference server (flags as `python -m services.inference --help`)."""
    argv = [sys.executable, "-m", "services.inference", *ctx.args]
    os.execv(sys.executable, argv)


@app.command()
def submit(
    job: Annotated[Path, typer.Argument(help="The job file (YAML).")],
    gateway: GatewayOption = "127.0.0.1:50051",
    set_: SetOption = [],  # noqa: B006
    profile: ProfileOption = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Submitting again with the same key returns the same job.")
    ] = "",
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow the job and write its results.")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Results file when --watch.")
    ] = None,
) -> None:
    """Submit a job file to a running gateway."""
    local = _load(job, set_, profile)

    async def go() -> int:
        client = GatewayClient(gateway)
        try:
            try:
                submitted = await client.submit(
                    local, profile=profile, idempotency_key=idempotency_key
                )
            except grpc.aio.AioRpcError as exc:
                raise _grpc_error(exc) from exc
            out.print(submitted.job_id)
            if not watch:
                return EXIT_OK
            target = output or Path(local.spec.output or f"results/{local.spec.name}.jsonl")
            final = await _follow(client, submitted.job_id, target, submitted.counts.total)
            _summary(final, target)
            return _exit_code(final)
        finally:
            await client.close()

    raise typer.Exit(asyncio.run(go()))


def _unary(gateway: str, call: str, request: Any) -> Any:
    async def go() -> Any:
        client = GatewayClient(gateway)
        try:
            return await getattr(client.stub, call)(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from exc
        finally:
            await client.close()

    return asyncio.run(go())


def _print_job(job: gateway_pb2.Job) -> None:
    table = Table(show_header=False, box=None)
    c = job.counts
    rows = [
        ("job", f"{job.job_id} ({job.name})"),
        ("state", STATE_NAMES.get(job.state, "?")),
        ("tenant / priority", f"{job.tenant} / {job.priority}"),
        ("model", job.model),
        (
            "tasks",
            f"{c.total} total: {c.pending} pending, {c.running} running, {c.succeeded} succeeded, "
            f"{c.failed} failed, {c.cancelled} cancelled, {c.reused} reused",
        ),
        ("tokens", f"{job.usage.prompt_tokens} prompt, {job.usage.completion_tokens} completion"),
    ]
    if job.wait_reason:
        rows.append(("waiting because", job.wait_reason))
    if job.error:
        rows.append(("error", job.error))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/bold]", value)
    out.print(table)


@app.command()
def status(
    job_id: Annotated[
        str | None, typer.Argument(help="A job id; all recent jobs when omitted.")
    ] = None,
    gateway: GatewayOption = "127.0.0.1:50051",
) -> None:
    """Show a job's state, counts and why it waits (or list recent jobs)."""
    if job_id:
        _print_job(_unary(gateway, "GetJob", gateway_pb2.GetJobRequest(job_id=job_id)).job)
        return
    table = Table("job", "name", "state", "tenant", "done", "failed", "total")
    for job in _unary(gateway, "ListJobs", gateway_pb2.ListJobsRequest(limit=50)).jobs:
        c = job.counts
        table.add_row(
            job.job_id,
            job.name,
            STATE_NAMES.get(job.state, "?"),
            job.tenant,
            str(c.succeeded + c.failed + c.cancelled),
            str(c.failed),
            str(c.total),
        )
    out.print(table)


@app.command()
def results(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    gateway: GatewayOption = "127.0.0.1:50051",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Results file; stdout when omitted.")
    ] = None,
) -> None:
    """Write a job's results (JSONL), following it until it ends."""

    async def go() -> None:
        client = GatewayClient(gateway)
        try:
            if output is None:
                await client.follow_results(job_id, sys.stdout)
            else:
                with output.open("w", encoding="utf-8") as handle:
                    await client.follow_results(job_id, handle)
        except grpc.aio.AioRpcError as exc:
            raise _grpc_error(exc) from exc
        finally:
            await client.close()

    asyncio.run(go())


def _control(call: str, request_type: Any) -> Any:
    def command(
        job_id: Annotated[str, typer.Argument(help="The job id.")],
        gateway: GatewayOption = "127.0.0.1:50051",
    ) -> None:
        _print_job(_unary(gateway, call, request_type(job_id=job_id)).job)

    return command


app.command("cancel", help="Cancel a job; results that exist are kept.")(
    _control("CancelJob", gateway_pb2.CancelJobRequest)
)
app.command("pause", help="Pause a job: nothing more is sent until it resumes.")(
    _control("PauseJob", gateway_pb2.PauseJobRequest)
)
app.command("resume", help="Resume a paused job.")(
    _control("ResumeJob", gateway_pb2.ResumeJobRequest)
)


@app.command()
def priority(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    level: Annotated[int, typer.Argument(help="0 (highest) to 9.")],
    gateway: GatewayOption = "127.0.0.1:50051",
) -> None:
    """Change a running job's priority."""
    _print_job(
        _unary(
            gateway, "UpdateJob", gateway_pb2.UpdateJobRequest(job_id=job_id, priority=level)
        ).job
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
