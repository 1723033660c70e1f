"""The job file schema (pydantic v2). Unknown keys are errors everywhere."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.limits import DEFAULT_LIMITS, Limits

from .durations import parse_deadline, parse_duration
from .evaluate import metric_problems

TaskType = Literal["generate", "chat", "classify", "score", "embed"]
TASK_TYPES: tuple[str, ...] = ("generate", "chat", "classify", "score", "embed")
Duration = Annotated[float, BeforeValidator(parse_duration)]
MAX_NEW_TOKENS_LIMIT = 32768


MAX_RATE = 1e9  # per second: beyond it a bucket's arithmetic is all rounding (and inf overflows)
MAX_COUNT = 10**9  # bursts and in-flight caps


class _Strict(BaseModel):
    # allow_inf_nan: .inf and .nan are refused in every float field, naming it
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Params(_Strict):
    """Generation parameters; unset ones are left to the server."""

    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=100_000)
    # how many, and how long: Limits.max_stop_strings / max_stop_chars (checked by the loader)
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_as_list)] = Field(
        default_factory=list
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)


class Message(_Strict):
    """One chat message; `content` is a Jinja template."""

    role: Literal["system", "user", "assistant"]
    content: str


class Inputs(_Strict):
    """Where the rows come from: exactly one of rows, file or matrix."""

    rows: list[dict[str, Any]] | None = None
    file: str | None = None
    matrix: dict[str, list[Any]] | None = None
    id: str | None = None  # Jinja template of the task id; default: the row number
    # openai-batch: a JSONL file of OpenAI batch requests (jobfile/openai_batch.py)
    format: Literal["jsonl", "csv", "openai-batch"] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Inputs:
        given = [k for k in ("rows", "file", "matrix") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of rows, file or matrix, not {' and '.join(given)}")
        if not given:
            raise ValueError("no inputs: give rows, file or matrix")
        if self.rows is not None and not self.rows:
            raise ValueError("no inputs: rows is an empty list")
        for key, values in (self.matrix or {}).items():
            if not values:
                raise ValueError(f"no inputs: matrix.{key} is an empty list")
        if self.matrix is not None and not self.matrix:
            raise ValueError("no inputs: matrix is empty")
        if self.file is not None and self.format is None:
            suffix = Path(self.file).suffix.lower()
            guessed = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(suffix)
            if guessed is None:
                raise ValueError(
                    f"cannot tell the format of {self.file!r} from its name; set format: jsonl or csv"
                )
            object.__setattr__(self, "format", guessed)
        return self


class RateLimit(_Strict):
    """Token buckets, counted in requests and in tokens."""

    requests_per_s: float | None = Field(default=None, gt=0, le=MAX_RATE)
    burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    tokens_per_s: float | None = Field(default=None, gt=0, le=MAX_RATE)
    token_burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)


class Schedule(_Strict):
    tenant: str = Field(default="default", min_length=1, max_length=128)
    priority: int = Field(default=5, ge=0, le=9)
    deadline: Annotated[float | datetime | None, BeforeValidator(parse_deadline)] = None
    rate_limit: RateLimit | None = None
    max_inflight: int | None = Field(default=None, ge=1, le=MAX_COUNT)


class Retry(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=100)
    initial_backoff: Duration = 1.0
    max_backoff: Duration = 30.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Retry:
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff ({self.max_backoff}s) is below initial_backoff ({self.initial_backoff}s)"
            )
        return self


class Shard(_Strict):
    strategy: Literal["least_loaded", "hash", "round_robin"] = "least_loaded"
    key: str | None = None  # Jinja template rendered per row

    @model_validator(mode="after")
    def _key_for_hash(self) -> Shard:
        if self.strategy == "hash" and not self.key:
            raise ValueError('strategy "hash" needs a key, e.g. key: "{{ customer }}"')
        return self


class Evaluate(_Strict):
    """Score each output against a reference rendered from its row (docs/job-files.md)."""

    reference: str = Field(min_length=1)  # Jinja template, e.g. "{{ answer }}"
    metrics: list[str] = Field(min_length=1)


class JobFile(_Strict):
    """What a job file may say, after extends, profiles and ${...} are applied."""

    version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    extends: str | None = None
    model: str = Field(min_length=1)
    # Several models side by side: each row runs once per model, as "<row id>@<model>".
    # The loader sets `model` to them joined by commas (giving both is an error).
    models: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    task: TaskType
    template: str | None = None
    messages: list[Message] | None = None
    labels: list[Annotated[str, Field(min_length=1)]] | None = None
    continuation: str | None = None
    params: Params = Params()
    inputs: Inputs
    schedule: Schedule = Schedule()
    retry: Retry = Retry()
    shard: Shard = Shard()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    output: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    evaluate: Evaluate | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_from_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("models"), list) and "model" not in data:
            data = {**data, "model": joined_models(data["models"])}
        return data

    @field_validator("models")
    @classmethod
    def _models_alone(cls, models: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if models is None:
            return None
        if info.data.get("model") != joined_models(models):
            raise ValueError("give model or models, not both")
        if len(set(models)) != len(models):
            raise ValueError("a model is named twice")
        if any("@" in m or "," in m for m in models):
            raise ValueError("model names in models may not contain '@' or ','")
        return models

    @field_validator("evaluate")
    @classmethod
    def _metrics_fit(cls, evaluate: Evaluate | None, info: ValidationInfo) -> Evaluate | None:
        task = info.data.get("task")
        if evaluate is not None and task is not None:
            problems = metric_problems(task, evaluate.metrics)
            if problems:
                raise ValueError("; ".join(problems))
        return evaluate

    def model_names(self) -> tuple[str, ...]:
        """The models each row runs on: `models`, or the one `model`."""
        return tuple(self.models) if self.models else (self.model,)

    @model_validator(mode="after")
    def _fits_task(self) -> JobFile:
        _check_task_fields(self)
        return self


def _check_task_fields(job: JobFile) -> None:
    task = job.task
    if job.inputs.format == "openai-batch":
        _check_openai_batch(job)
        return
    if task != "chat" and job.messages is not None:
        raise ValueError(f"messages is for task chat; task {task} uses template")
    if task == "chat" and job.messages is not None and job.template is not None:
        raise ValueError("give messages or template for a chat task, not both")
    if task == "chat" and job.messages is None and job.template is None:
        raise ValueError("a chat task needs messages (or a template, sent as one user message)")
    if task == "chat" and job.messages is not None and not job.messages:
        raise ValueError("messages is an empty list")
    if task != "chat" and job.template is None:
        raise ValueError(f"task {task} needs a template")
    if task == "classify" and (not job.labels or len(job.labels) < 2):
        raise ValueError("task classify needs labels: a list of at least two choices")
    if task != "classify" and job.labels is not None:
        raise ValueError(f"labels is for task classify, not {task}")
    if task == "score" and job.continuation is None:
        raise ValueError("task score needs a continuation (the text whose likelihood is scored)")
    if task != "score" and job.continuation is not None:
        raise ValueError(f"continuation is for task score, not {task}")


def joined_models(models: list[Any]) -> str:
    """What `model` says for a job of several models (jobs.model, telemetry)."""
    return ",".join(str(m) for m in models)


def _check_openai_batch(job: JobFile) -> None:
    """The lines say what to run: no templates, labels or ids of the job's own."""
    if job.models is not None or job.evaluate is not None:
        raise ValueError("models and evaluate are not used with format openai-batch")
    if job.inputs.file is None:
        raise ValueError("format openai-batch needs inputs.file (the requests JSONL file)")
    for key in ("template", "messages", "labels", "continuation"):
        if getattr(job, key) is not None:
            raise ValueError(f"{key} is not used with format openai-batch: each line has its body")
    if job.inputs.id is not None:
        raise ValueError("inputs.id is not used with format openai-batch: custom_id is the id")
    if job.task not in ("chat", "generate", "embed"):
        raise ValueError(f"task {job.task} is not an OpenAI batch endpoint (chat, generate, embed)")


class JobSpec(JobFile):
    """A loaded job: the file's fields plus where it came from (set by the loader)."""

    source: str = "<job>"
    base_dir: Path | None = None
    profile: str | None = None
    input_override: Path | None = None
    _templates: Any = PrivateAttr(default=None)  # templates.JobTemplates, compiled by the loader
    _limits: Limits = PrivateAttr(default=DEFAULT_LIMITS)

    def limits(self) -> Limits:
        """The caps this job was loaded under (they bound reading and rendering it too)."""
        return self._limits

    def input_file_path(self) -> Path | None:
        """Where inputs.file is read from: the uploaded file, else (a job loaded from a
        file) the path next to the job file; None when there is neither."""
        if self.inputs.file is None:
            return None
        if self.input_override is not None:
            return self.input_override
        if self.base_dir is None:
            return None  # a job given as text: only uploaded bytes, never a path it names
        path = Path(self.inputs.file)
        return path if path.is_absolute() else self.base_dir / path


LOADER_FIELDS = frozenset({"source", "base_dir", "profile", "input_override"})
