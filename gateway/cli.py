"""The `batchinfer` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any

import grpc
import typer
from batchinfer.v1 import gateway_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gateway.channels import NO_CREDENTIALS, Credentials, gateway_targets
from gateway.cli_credentials import (
    TlsCaOption,
    TlsCertOption,
    TlsKeyOption,
    TokenOption,
)
from gateway.cli_credentials import credentials as _credentials
from gateway.cli_models import confusion_lines, model_table
from gateway.cli_validate import build_variables, validate
from gateway.client import (
    RECONNECT_FOR_S,
    GatewayClient,
    GatewayUnavailable,
    ResultSink,
    read_local_job,
)
from gateway.jobfile import JobFileError

EXIT_CODES = (
    "Exit codes: 0 done (for a job: every task succeeded); 3 the job ended with failed or "
    "cancelled tasks, or was cancelled or failed; 1 the gateway could not be reached, the job "
    "was not found or the gateway refused the request; 2 invalid input (a bad job file or "
    "bad arguments)."
)
app = typer.Typer(
    help="Run large batches of LLM tasks through a gateway and a fleet of inference servers.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
)
app.command("validate", help="Check a job file and show the tasks it expands to.")(validate)
console = Console(stderr=True)
out = Console()

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in gateway_pb2.JobState.items()}
STATUS_JOBS = 50  # recent jobs that `status` lists

SetOption = Annotated[list[str], typer.Option("--set", help="NAME=value for ${NAME}; repeatable.")]
ProfileOption = Annotated[
    str | None, typer.Option("--profile", help="A profile of the job file to apply.")
]


def _gateway_targets(values: list[str]) -> list[str]:
    try:
        return list(gateway_targets(values))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


GatewayOption = Annotated[
    list[str],
    typer.Option(
        "--gateway",
        "-g",
        envvar="BATCHINFER_GATEWAY",
        callback=_gateway_targets,
        help="Gateway HOST:PORT. Replicas of one service: HOST:PORT,HOST:PORT or the option "
        "repeated (the client moves to the next when one dies), or dns:///NAME:PORT "
        "(round_robin over what it resolves to).",
    ),
]
DEFAULT_GATEWAY = ["127.0.0.1:50051"]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        min=0,
        help="Seconds to keep trying while the gateway is out of reach, at the start and "
        "each time it goes away (0: give up at once).",
    ),
]


def _load(job: Path, sets: list[str], profile: str | None) -> Any:
    try:
        variables = build_variables(sets, os.environ)
        return read_local_job(job, variables, profile)
    except (JobFileError, ValueError, OSError) as exc:
        console.print(f"[red]invalid job file[/red] {job}:\n{exc}")
        raise typer.Exit(EXIT_INVALID) from exc


def _note(text: str) -> None:
    """One line on stderr, never wrapped (a terminal's width does not split it)."""
    console.print(escape(text), soft_wrap=True, highlight=False)


def _fail(text: str, code: int) -> typer.Exit:
    console.print(f"[red]error[/red]: {escape(text)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _where(gateway: str | Sequence[str]) -> str:
    """The address(es) an error or a note names."""
    return gateway if isinstance(gateway, str) else ", ".join(gateway)


def _unreachable(address: str, reason: str, waited_s: float = 0.0) -> str:
    tried = f" after trying for {waited_s:.0f} s" if waited_s >= 1 else ""
    return (
        f"cannot reach the gateway at {address} ({reason}){tried}; is it running? "
        "start it with `batchinfer gateway ...` or pass --gateway HOST:PORT"
    )


def _retry_delay_s(exc: grpc.aio.AioRpcError) -> int | None:
    """The RetryInfo the gateway attaches to RESOURCE_EXHAUSTED, in seconds."""
    status = rpc_status.from_call(exc)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds
    return None


def _rpc_message(exc: grpc.aio.AioRpcError, address: str, job_id: str | None) -> str:
    """One line for a status the gateway answered with (gRPC's own text is flattened)."""
    code = exc.code()
    details = " ".join((exc.details() or "").split())
    if code == grpc.StatusCode.NOT_FOUND and job_id:
        return f"job {job_id} not found at the gateway {address}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and "(limit " not in details:
        return f"the gateway at {address} did not answer in time (DEADLINE_EXCEEDED)"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (delay := _retry_delay_s(exc)):
        return f"{details}; try again in {delay} s (RESOURCE_EXHAUSTED)"
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return f"the gateway at {address} refused the request: {details} ({code.name})"
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return f"the gateway at {address} failed: {details} ({code.name}); its log says more"
    return f"{details} ({code.name})"


@contextlib.contextmanager
def _errors_to_exit(gateway: str | Sequence[str], job_id: str | None = None) -> Iterator[None]:
    """Turns what the gateway, the way to it or the results file said into one line on
    stderr and the exit code: no gRPC dump, no traceback."""
    address = _where(gateway)
    try:
        yield
    except GatewayUnavailable as exc:
        raise _fail(_unreachable(address, exc.reason, exc.waited_s), EXIT_ERROR) from None
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:  # the client raises GatewayUnavailable
            raise _fail(_unreachable(address, "unavailable"), EXIT_ERROR) from None
        invalid = exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        message = _rpc_message(exc, address, job_id)
        raise _fail(message, EXIT_INVALID if invalid else EXIT_ERROR) from None
    except OSError as exc:  # writing the results
        where = f" {exc.filename}" if exc.filename else ""
        raise _fail(f"cannot write{where}: {exc.strerror or exc}", EXIT_ERROR) from None


def _client(
    gateway: str | Sequence[str], timeout_s: float = 0.0, credentials: Credentials = NO_CREDENTIALS
) -> GatewayClient:
    """A client that moves to the next replica when one is out of reach, keeps trying for
    `timeout_s` while all are, and says so on stderr, once per outage."""
    address = _where(gateway)

    def on_wait(reason: str, for_s: float) -> None:
        _note(f"waiting for the gateway at {address} ({reason}); giving up after {for_s:.0f} s")

    def on_back(waited_s: float) -> None:
        _note(f"reached the gateway at {address} after {waited_s:.1f} s")

    def on_move(left: str, to: str, reason: str) -> None:
        _note(f"lost the gateway at {left} ({reason}); going on at {to}")

    return GatewayClient(
        gateway,
        reconnect_for_s=timeout_s,
        on_wait=on_wait,
        on_back=on_back,
        on_move=on_move,
        credentials=credentials,
    )


async def _together(*coroutines: Coroutine[Any, Any, Any]) -> None:
    """Runs the coroutines at once; the first to fail stops the others and raises."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def _replaced_on_success(path: Path) -> Iterator[IO[str]]:
    """A temporary file in `path`'s folder, renamed onto `path` only when the block
    succeeds: a failure leaves an existing file as it was."""
    path = path.resolve()  # a symbolic link's target is the file to replace
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.chmod(temporary, _file_mode(path))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _file_mode(path: Path) -> int:
    """The existing file's permissions, else what open() would give (mkstemp's are 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _exit_code(job: gateway_pb2.Job) -> int:
    """The exit code of a command that waited for `job` to end (see EXIT_CODES)."""
    if (
        job.state == gateway_pb2.JOB_STATE_COMPLETED
        and job.counts.failed == 0
        and job.counts.cancelled == 0
    ):
        return EXIT_OK
    return EXIT_PARTIAL


async def _follow(
    client: GatewayClient,
    job_id: str,
    output: Path,
    total_hint: int,
    results_format: ResultsFormat | None = None,
) -> gateway_pb2.Job:
    """Writes the results file while a live progress bar shows done/failed/total, rates and ETA."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fmt = results_format or ResultsFormat()
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

    with contextlib.ExitStack() as stack:
        handle = stack.enter_context(output.open("w", encoding="utf-8"))
        sink = await fmt.sink(client, job_id, output, handle, stack)
        stack.enter_context(progress)
        bar = progress.add_task(job_id, total=max(total_hint, 1), failed=0, rate=0.0, tok_rate=0.0)

        def show(**fields: Any) -> None:
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(
                bar,
                completed=stats["done"],
                failed=stats["failed"],
                rate=stats["done"] / elapsed,
                tok_rate=stats["tokens"] / elapsed,
                **fields,
            )

        async def show_progress() -> None:
            async for snapshot in client.watch(job_id, interval_ms=300):
                show(total=max(snapshot.counts.total, 1))

        await _together(
            client.follow_results(job_id, handle, on_result, sink=sink), show_progress()
        )
        show()
    return await client.get(job_id)


@dataclass
class ResultsFormat:
    """How results are written: JSONL lines of ours, or OpenAI's batch output and error
    files (`errors`: default the output's name with `.errors` before the suffix)."""

    name: str = "jsonl"
    errors: Path | None = None

    def errors_path(self, output: Path) -> Path:
        return self.errors or output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")

    async def sink(
        self,
        client: GatewayClient,
        job_id: str,
        output: Path,
        handle: IO[str],
        stack: contextlib.ExitStack,
        errors_handle: IO[str] | None = None,
    ) -> ResultSink | None:
        if self.name != "openai":
            return None
        from gateway.convert import TASK_TYPE_NAMES
        from gateway.openai_output import OpenAIBatchWriter

        job = await client.get(job_id)
        if errors_handle is None:
            errors = self.errors_path(output)
            errors.parent.mkdir(parents=True, exist_ok=True)
            errors_handle = stack.enter_context(errors.open("w", encoding="utf-8"))
        task_type = TASK_TYPE_NAMES.get(job.task_type, "chat")
        return OpenAIBatchWriter(
            handle, errors_handle, model=job.model, task_type=task_type, job_id=job_id
        )


def _results_format(name: str, errors: Path | None) -> ResultsFormat:
    if name not in ("jsonl", "openai"):
        raise _fail(f"--format must be jsonl or openai, got {name!r}", EXIT_INVALID)
    return ResultsFormat(name, errors)


FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="Results as jsonl (ours) or openai (OpenAI's batch output and error files); "
        "default jsonl, openai with --openai-batch.",
    ),
]
ErrorsOption = Annotated[
    Path | None,
    typer.Option(
        "--errors",
        help="With --format openai: the error file (default OUTPUT.errors.jsonl).",
    ),
]


def _summary(job: gateway_pb2.Job, output: Path | None, fmt: ResultsFormat | None = None) -> None:
    c = job.counts
    text = (
        f"job {job.job_id} ({job.name}) {STATE_NAMES.get(job.state, '?')}: {c.succeeded} succeeded, "
        f"{c.failed} failed, {c.cancelled} cancelled of {c.total}"
    )
    if c.reused:
        text += f" ({c.reused} reused from an earlier run)"
    console.print(text)
    _print_models(job, console)
    if job.error:
        console.print(f"[red]error[/red]: {job.error}")
    if output is not None:
        console.print(f"results: {output}")
        if fmt is not None and fmt.name == "openai":
            console.print(f"errors: {fmt.errors_path(output)}")


@app.command(epilog=EXIT_CODES)
def run(
    job: Annotated[
        Path | None, typer.Argument(help="The job file (YAML); none with --openai-batch.")
    ] = None,
    set_: SetOption = [],  # noqa: B006
    profile: ProfileOption = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Results file (JSONL).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, max=64, help="Inference servers to start (per model)."),
    ] = 1,
    backend: Annotated[
        str, typer.Option("--backend", help="transformers (the real model) or echo.")
    ] = "transformers",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Keep the gateway's SQLite store here (a re-run then reuses finished tasks).",
        ),
    ] = None,
    worker_arg: Annotated[
        list[str], typer.Option("--worker-arg", help="Extra flag for each inference server.")
    ] = [],  # noqa: B006
    openai_batch: Annotated[
        Path | None,
        typer.Option(
            "--openai-batch",
            help="An OpenAI batch requests file (JSONL) to run without a job file.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="With --openai-batch: the model to run.")
    ] = None,
    results_format: FormatOption = None,
    errors: ErrorsOption = None,
) -> None:
    """Start a local gateway and inference servers, run the job, write its results, stop everything."""
    from gateway.local import LocalFleet, StartError

    if backend not in ("transformers", "echo"):
        console.print(f"[red]--backend[/red] must be transformers or echo, got {backend!r}")
        raise typer.Exit(EXIT_INVALID)
    if (job is None) == (openai_batch is None):
        raise _fail("give a job file or --openai-batch FILE (one of them)", EXIT_INVALID)
    if openai_batch is not None:
        local = _openai_batch_job(openai_batch, model, set_)
        data_dir = data_dir or Path(".batchinfer") / "runs" / local.spec.name
    else:
        if model is not None:
            raise _fail("--model is for --openai-batch; a job file names its model", EXIT_INVALID)
        assert job is not None
        local = _load(job, set_, profile)
    fmt = _results_format(results_format or ("openai" if openai_batch else "jsonl"), errors)
    _warn_ignored_fields(local)
    output = output or Path(local.spec.output or f"results/{local.spec.name}.jsonl")
    workdir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="batchinfer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    fleet = LocalFleet(workdir)
    try:
        with console.status(
            f"starting {workers} inference server(s) ({backend}, {local.spec.model}) and a gateway"
        ):
            # echo serves any model name; a real backend runs one model per server
            models = [local.spec.model] if backend == "echo" else local.spec.model_names()
            for model in models:
                fleet.start_workers(workers, backend, model, extra=list(worker_arg))
            gateway = fleet.start_gateway()
        with _errors_to_exit(gateway.address):
            result = asyncio.run(
                _submit_and_follow(
                    gateway.address, local, profile, output, fmt, resume=data_dir is not None
                )
            )
    except StartError as exc:
        console.print(f"[red]could not start the local fleet[/red]: {exc}\n(logs in {workdir})")
        raise typer.Exit(EXIT_ERROR) from exc
    finally:
        fleet.stop()
    raise typer.Exit(result)


def _openai_batch_job(requests: Path, model: str | None, sets: list[str]) -> Any:
    """The job of `run --openai-batch`: named after the file, so a re-run (with the same
    --data-dir) reuses the lines that finished."""
    from gateway.client import LocalJob
    from gateway.jobfile import load_job
    from gateway.jobfile.variables import escape as escape_variables

    if not model:
        raise _fail("--openai-batch needs --model (the model that runs every line)", EXIT_INVALID)
    if sets:
        raise _fail("--set is for job files; --openai-batch takes none", EXIT_INVALID)
    if not requests.is_file():
        raise _fail(f"cannot read {requests}: not a file", EXIT_INVALID)
    name = f"openai-batch-{requests.stem}"[:200]
    text = json.dumps(
        {
            "version": 1,
            "name": name,
            "model": escape_variables(model),
            "inputs": {"file": requests.name, "format": "openai-batch"},
        }
    )
    filename = f"{name}.yaml"
    try:
        spec = load_job(text=text, filename=filename, input_file=requests)
    except JobFileError as exc:
        console.print(f"[red]invalid OpenAI batch file[/red] {requests}:\n{exc}")
        raise typer.Exit(EXIT_INVALID) from exc
    return LocalJob(path=Path(filename), spec=spec, text=text)


def _warn_ignored_fields(local: Any) -> None:
    """OpenAI batch body fields that batchinfer ignores, said once each on stderr."""
    spec = local.spec
    path = spec.input_file_path()
    if spec.inputs.format != "openai-batch" or path is None:
        return
    from gateway.jobfile.openai_batch import scan_warnings

    for warning in scan_warnings(path, spec.model, spec.limits()):
        _note(f"warning: {warning}")


async def _cancel_interrupted(client: GatewayClient, name: str) -> None:
    """An earlier run of the same job that was interrupted is cancelled (its finished
    results stay, and the new job reuses them) so that it does not run alongside."""
    for job in await client.list_jobs(STATUS_JOBS):
        if job.name == name and job.state < gateway_pb2.JOB_STATE_COMPLETED:
            await client.call("CancelJob", gateway_pb2.CancelJobRequest(job_id=job.job_id))


async def _submit_and_follow(
    address: str,
    local: Any,
    profile: str | None,
    output: Path,
    fmt: ResultsFormat,
    resume: bool = False,
) -> int:
    client = _client(address, RECONNECT_FOR_S)
    try:
        if resume:
            await _cancel_interrupted(client, local.spec.name)
        job = await client.submit(local, profile=profile)
        final = await _follow(client, job.job_id, output, job.counts.total, fmt)
    finally:
        await client.close()
    _summary(final, output, fmt)
    return _exit_code(final)


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
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML file with a tenants section: per tenant weight, requests_per_s, "
            "tokens_per_s, max_queued_tasks (docs/operations.md).",
        ),
    ] = None,
    lease_s: Annotated[
        float,
        typer.Option(
            help="Seconds a server may go without progress before its tasks are taken back."
        ),
    ] = 60.0,
    max_job_tasks: Annotated[int, typer.Option(help="Tasks in one job at most.")] = 5_000_000,
    limit: Annotated[
        list[str],
        typer.Option(
            "--limit",
            help="NAME=VALUE: a cap on what clients send (docs/security.md); repeatable.",
        ),
    ] = [],  # noqa: B006
    render_workers: Annotated[
        int,
        typer.Option(min=0, help="Processes that check and expand jobs (0: in threads)."),
    ] = 2,
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
    replica_timeout_s: Annotated[
        float,
        typer.Option(
            "--replica-timeout-s",
            min=1,
            help="With several replicas on PostgreSQL: seconds without a heartbeat after "
            "which a replica is presumed dead and the others take over its leases.",
        ),
    ] = 6.0,
    replica_poll_s: Annotated[
        float,
        typer.Option(
            "--replica-poll-s",
            min=0.1,
            help="With several replicas: seconds between reads of what the others did "
            "(pause, cancel, results, new jobs); on PostgreSQL notifications wake a "
            "replica at once, and this poll is the fallback.",
        ),
    ] = 2.0,
    grace_s: Annotated[
        float,
        typer.Option(
            "--grace-s",
            min=0,
            help="On SIGTERM: seconds to wait for the results of tasks in flight before "
            "giving them back to the store and exiting 0.",
        ),
    ] = 20.0,
    max_connection_age_s: Annotated[
        float | None,
        typer.Option(
            "--max-connection-age-s",
            min=0.001,
            help="Recycle client connections this old (clients re-open their streams "
            "from their cursor); default: never.",
        ),
    ] = None,
    max_connection_age_grace_s: Annotated[
        float,
        typer.Option(
            "--max-connection-age-grace-s",
            min=0,
            help="How long an old connection's calls may go on before they are cut.",
        ),
    ] = 30.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="Log level (else BATCHINFER_LOG_LEVEL, else INFO).")
    ] = None,
    auth_file: Annotated[
        Path | None,
        typer.Option(
            "--auth-file",
            help="Principals file (YAML): token digests, certificate CNs, tenants, roles; "
            "reloaded when it changes (docs/security.md).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="Certificate chain (PEM) of the public port.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="Private key (PEM) of --tls-cert.")
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-client-ca",
            help="Require client certificates signed by this CA (PEM); the principal is the "
            "certificate's subject CN.",
        ),
    ] = None,
    worker_tls_ca: Annotated[
        Path | None,
        typer.Option("--worker-tls-ca", help="TLS to the inference servers, checked with this CA."),
    ] = None,
    worker_tls_cert: Annotated[
        Path | None,
        typer.Option("--worker-tls-cert", help="The gateway's client certificate for the servers."),
    ] = None,
    worker_tls_key: Annotated[
        Path | None, typer.Option("--worker-tls-key", help="Private key of --worker-tls-cert.")
    ] = None,
    worker_tls_server_name: Annotated[
        str | None,
        typer.Option(
            "--worker-tls-server-name",
            help="Check the servers' certificates against this name, not the dialled address.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve on a non-loopback address without authentication (anyone who reaches "
            "the port controls every job).",
        ),
    ] = False,
) -> None:
    """Run the gateway service."""
    from collector import TelemetryConfig, setup_telemetry
    from gateway.limits import Limits
    from gateway.server import main as serve_main
    from gateway.settings import GatewayConfig, SettingsError, load_gateway_file

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
            tenants=load_gateway_file(config_file) if config_file else {},
            lease_s=lease_s,
            max_job_tasks=max_job_tasks,
            limits=Limits().with_overrides(limit),
            render_workers=render_workers,
            eject_after_failures=eject_after_failures,
            eject_s=eject_s,
            grace_s=grace_s,
            replica_timeout_s=replica_timeout_s,
            replica_poll_s=replica_poll_s,
            auth_file=auth_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            worker_tls_ca=worker_tls_ca,
            worker_tls_cert=worker_tls_cert,
            worker_tls_key=worker_tls_key,
            worker_tls_server_name=worker_tls_server_name,
            insecure=insecure,
            max_connection_age_s=max_connection_age_s,
            max_connection_age_grace_s=max_connection_age_grace_s,
        )
    except (SettingsError, ValueError) as exc:
        raise _fail(str(exc), EXIT_INVALID) from exc
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


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # --help goes to the server's own parser, which knows its flags
)
def worker(ctx: typer.Context) -> None:
    """Run an inference server (`batchinfer worker --help` lists its flags)."""
    from services.inference.__main__ import build_parser

    build_parser(prog="batchinfer worker").parse_args(ctx.args)  # --help and bad flags end here
    argv = [sys.executable, "-m", "services.inference", *ctx.args]
    os.execv(sys.executable, argv)


@app.command(epilog=EXIT_CODES)
def submit(
    job: Annotated[Path, typer.Argument(help="The job file (YAML).")],
    gateway: GatewayOption = DEFAULT_GATEWAY,
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
    timeout: TimeoutOption = RECONNECT_FOR_S,
    results_format: FormatOption = None,
    errors: ErrorsOption = None,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Submit a job file to a running gateway (and with --watch, follow it to its end)."""
    credentials = _credentials(token, tls_ca, tls_cert, tls_key)
    fmt = _results_format(results_format or "jsonl", errors)
    local = _load(job, set_, profile)
    _warn_ignored_fields(local)
    target = output or Path(local.spec.output or f"results/{local.spec.name}.jsonl")

    async def go() -> int:
        client = _client(gateway, timeout, credentials)
        try:
            submitted = await client.submit(local, profile=profile, idempotency_key=idempotency_key)
            out.print(submitted.job_id)
            if not watch:
                return EXIT_OK
            final = await _follow(client, submitted.job_id, target, submitted.counts.total, fmt)
        finally:
            await client.close()
        _summary(final, target, fmt)
        return _exit_code(final)

    with _errors_to_exit(gateway):
        code = asyncio.run(go())
    raise typer.Exit(code)


def _unary(
    gateway: Sequence[str],
    call: str,
    request: Any,
    job_id: str | None = None,
    credentials: Credentials = NO_CREDENTIALS,
) -> Any:
    """One call, not retried: a command that does not wait for a job answers at once."""

    async def go() -> Any:
        client = _client(gateway, credentials=credentials)
        try:
            return await client.call(call, request)
        finally:
            await client.close()

    with _errors_to_exit(gateway, job_id):
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
    _print_models(job, out)


def _print_models(job: gateway_pb2.Job, where: Console) -> None:
    models = getattr(job, "models", ())  # control replies (pause, resume, ...) came without
    table = model_table(models)
    if table is not None:
        where.print(table)
        for line in confusion_lines(models):
            where.print(line)


@app.command()
def status(
    job_id: Annotated[
        str | None, typer.Argument(help="A job id; all recent jobs when omitted.")
    ] = None,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Show a job's state, counts and why it waits (or list recent jobs)."""
    credentials = _credentials(token, tls_ca, tls_cert, tls_key)
    if job_id:
        request = gateway_pb2.GetJobRequest(job_id=job_id)
        _print_job(_unary(gateway, "GetJob", request, job_id, credentials).job)
        return

    async def recent() -> list[gateway_pb2.Job]:
        client = _client(gateway, credentials=credentials)
        try:
            return await client.list_jobs(STATUS_JOBS)
        finally:
            await client.close()

    with _errors_to_exit(gateway):
        jobs = asyncio.run(recent())
    table = Table("job", "name", "state", "tenant", "done", "failed", "total")
    for job in jobs:
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


@app.command(epilog=EXIT_CODES)
def results(
    job_id: Annotated[str, typer.Argument(help="The job id.")],
    gateway: GatewayOption = DEFAULT_GATEWAY,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Results file, replaced only once the job has ended; stdout when omitted.",
        ),
    ] = None,
    timeout: TimeoutOption = RECONNECT_FOR_S,
    results_format: FormatOption = None,
    errors: ErrorsOption = None,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Write a job's results (JSONL), following it until it ends."""
    credentials = _credentials(token, tls_ca, tls_cert, tls_key)
    fmt = _results_format(results_format or "jsonl", errors)
    if fmt.name == "openai" and output is None:
        raise _fail("--format openai writes two files: give -o OUTPUT", EXIT_INVALID)

    async def go() -> int:
        client = _client(gateway, timeout, credentials)
        try:
            if output is None:
                await client.follow_results(job_id, sys.stdout)
            else:
                with contextlib.ExitStack() as stack:
                    handle = stack.enter_context(_replaced_on_success(output))
                    errors_handle = None
                    if fmt.name == "openai":
                        errors_path = fmt.errors_path(output)
                        errors_handle = stack.enter_context(_replaced_on_success(errors_path))
                    sink = await fmt.sink(client, job_id, output, handle, stack, errors_handle)
                    await client.follow_results(job_id, handle, sink=sink)
            final = await client.get(job_id)
        finally:
            await client.close()
        _summary(final, output, fmt)
        return _exit_code(final)

    with _errors_to_exit(gateway, job_id):
        code = asyncio.run(go())
    raise typer.Exit(code)


ReportFormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="html: one self-contained file, charts embedded; md: a Markdown table and the "
        "worst examples, its charts written next to it as OUTPUT-STEM-*.png. Default: md "
        "when OUTPUT ends in .md, else html.",
    ),
]


@app.command(epilog=EXIT_CODES)
def report(
    job_id: Annotated[str | None, typer.Argument(help="The job id; none with --from-file.")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="The report (default report.html).")
    ] = None,
    report_format: ReportFormatOption = None,
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="Build it from a results file (JSONL), no gateway."),
    ] = None,
    examples: Annotated[
        int, typer.Option("--examples", min=0, help="Worst-scoring examples shown per model.")
    ] = 5,
    metric: Annotated[
        str | None,
        typer.Option(help="Rank the worst examples by this metric (default: the first seen)."),
    ] = None,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    timeout: TimeoutOption = RECONNECT_FOR_S,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Write a job's report: per model the tasks, each metric's mean, macro-F1, latency
    p50/p95, tokens/s and tasks/s; charts of the metrics, latencies and throughput;
    confusion matrices; the worst-scoring examples. It follows the job to its end (or
    reads --from-file) and exits like `results`: 3 when tasks failed or were cancelled."""
    from gateway.report import FORMATS, ReportInputError, from_gateway, job_info, render
    from gateway.report import from_file as read_file
    from gateway.report.summary import Summary

    if (job_id is None) == (from_file is None):
        raise _fail("give a JOB id or --from-file FILE (one of them)", EXIT_INVALID)
    target = output or Path("report.md" if report_format == "md" else "report.html")
    fmt = report_format or ("md" if target.suffix.lower() == ".md" else "html")
    if fmt not in FORMATS:
        raise _fail(f"--format must be html or md, got {fmt!r}", EXIT_INVALID)
    summary = Summary(keep_examples=examples)
    summary.ranking_metric = metric
    if from_file is not None:
        try:
            job = read_file(from_file, summary)
        except (ReportInputError, OSError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot read {from_file}: {exc}", EXIT_INVALID) from None
        code = EXIT_OK if summary.statuses["succeeded"] == summary.lines else EXIT_PARTIAL
    else:
        credentials = _credentials(token, tls_ca, tls_cert, tls_key)
        asked = job_id or ""

        async def go() -> gateway_pb2.Job:
            client = _client(gateway, timeout, credentials)
            try:
                return await from_gateway(client, asked, summary)
            finally:
                await client.close()

        with _errors_to_exit(gateway, job_id):
            final = asyncio.run(go())
        job, code = job_info(final), _exit_code(final)
    text, images = render(fmt, job, summary, target.stem)
    with _errors_to_exit(gateway):
        target.parent.mkdir(parents=True, exist_ok=True)
        for name, png in images.items():
            (target.parent / name).write_bytes(png)
        with _replaced_on_success(target) as handle:
            handle.write(text)
    _note(f"report: {target} ({summary.lines} results, {len(summary.models)} models)")
    raise typer.Exit(code)


def _control(call: str, request_type: Any) -> Any:
    def command(
        job_id: Annotated[str, typer.Argument(help="The job id.")],
        gateway: GatewayOption = DEFAULT_GATEWAY,
        token: TokenOption = None,
        tls_ca: TlsCaOption = None,
        tls_cert: TlsCertOption = None,
        tls_key: TlsKeyOption = None,
    ) -> None:
        credentials = _credentials(token, tls_ca, tls_cert, tls_key)
        _print_job(_unary(gateway, call, request_type(job_id=job_id), job_id, credentials).job)

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
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
    tls_ca: TlsCaOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
) -> None:
    """Change a running job's priority."""
    credentials = _credentials(token, tls_ca, tls_cert, tls_key)
    request = gateway_pb2.UpdateJobRequest(job_id=job_id, priority=level)
    _print_job(_unary(gateway, "UpdateJob", request, job_id, credentials).job)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
