"""load_job: text -> extends chain -> profile -> schema -> compiled templates.

A job loaded from a file reads the files it names (`extends`, `inputs.file`) only
inside its root folder unless `allow_outside_paths`; a job given as text (the
gateway) reads no path at all: its extended files come in `read_file`, its rows
as the uploaded `input_file`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.limits import DEFAULT_LIMITS, Limits

from .caps import job_problems, submission_size_problem, utf8_size
from .errors import JobFileError, Problem, did_you_mean
from .inputs import open_regular_file
from .layers import CheckPath, ReadFile, ResolveTemplate, extends_chain
from .merge import deep_merge
from .schema import LOADER_FIELDS, JobFile, JobSpec
from .schema_errors import Loc, problems_from
from .templates import compile_job_templates, raw_template_problems
from .yamldoc import parse_document


def load_job(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    filename: str | None = None,
    variables: Mapping[str, str] | None = None,
    profile: str | None = None,
    read_file: ReadFile | None = None,
    resolve_template: ResolveTemplate | None = None,
    input_file: str | Path | None = None,
    limits: Limits = DEFAULT_LIMITS,
    root: str | Path | None = None,
    allow_outside_paths: bool = False,
) -> JobSpec:
    """Load and check a job file; raises JobFileError listing every problem found.

    `root`: the folder that a job loaded from `path` may read files in (default: the
    working directory when the job file is inside it, else the job file's folder).
    """
    variables = dict(variables or {})
    if path is None and text is None:
        raise ValueError("load_job needs a path or text")
    name = filename or (str(path) if path is not None else "<job>")
    base_dir = Path(path).parent if path is not None else None
    if text is None:
        text = _read_text(Path(str(path)), name, limits.max_job_bytes)
    too_big = submission_size_problem(text, {}, variables, limits, name)
    if too_big is not None:
        raise JobFileError([too_big])
    check_path: CheckPath | None = None
    if base_dir is not None and not allow_outside_paths:
        check_path = _confiner(
            base_dir, Path(root) if root is not None else _default_root(base_dir)
        )
    if read_file is None and base_dir is not None:
        read_file = _folder_reader(base_dir, limits.max_job_bytes)

    main = parse_document(text, name, variables, limits)
    if main.broken:
        raise JobFileError(main.problems)
    chain, problems = extends_chain(
        main,
        name,
        variables,
        read_file,
        resolve_template,
        limits=limits,
        check_path=check_path,
        used_bytes=utf8_size(text),
    )
    problems = [*main.problems, *problems]
    if any(layer.doc.broken for layer in chain) or any(p.field == "extends" for p in problems):
        raise JobFileError(_ordered(problems))  # without its layers, the rest would be noise
    data: dict[str, Any] = {}
    lines: dict[Loc, tuple[str, int]] = {}
    spoiled: set[Loc] = set()
    for layer in chain:
        data = deep_merge(data, layer.doc.data)
        lines.update(layer.doc.lines)
        spoiled |= layer.doc.spoiled
    if "extends" in main.data:
        data["extends"] = main.data["extends"]
    if profile is not None:
        data = _apply_profile(data, profile, lines, spoiled, problems, name)
    problems.extend(_reserved(data, lines, name))
    if _is_openai_batch(data) and "task" not in data:
        data["task"] = _first_line_task(data, input_file, base_dir, check_path, limits)

    try:
        job = JobFile.model_validate({k: v for k, v in data.items() if k not in LOADER_FIELDS})
    except ValidationError as exc:
        problems.extend(problems_from(exc, JobFile, lines, name, spoiled))
        problems.extend(raw_template_problems(data, lines, name, limits))
        raise JobFileError(_ordered(problems)) from None
    problems.extend(job_problems(job, limits, lines, name))
    if job.inputs.file is not None and input_file is None and base_dir is not None:
        problems.extend(_input_file_problems(job.inputs.file, base_dir, check_path, lines, name))
    templates, template_problems = compile_job_templates(job, lines, name, limits)
    problems.extend(template_problems)
    if problems:
        raise JobFileError(_ordered(problems))
    spec = JobSpec.model_construct(
        **{k: getattr(job, k) for k in JobFile.model_fields},
        source=name,
        base_dir=base_dir,
        profile=profile,
        input_override=Path(input_file) if input_file is not None else None,
    )
    spec._templates = templates
    spec._limits = limits
    return spec


def _is_openai_batch(data: Mapping[str, Any]) -> bool:
    inputs = data.get("inputs")
    return isinstance(inputs, dict) and inputs.get("format") == "openai-batch"


def _first_line_task(
    data: Mapping[str, Any],
    input_file: str | Path | None,
    base_dir: Path | None,
    check_path: CheckPath | None,
    limits: Limits,
) -> str:
    """An OpenAI batch job's task type, when the file does not say: its first line's."""
    from .openai_batch import task_type_of_first_line

    path = Path(input_file) if input_file is not None else None
    file = data["inputs"].get("file")
    if path is None and base_dir is not None and isinstance(file, str):
        allowed = check_path is None or check_path(file) is None  # else reported later
        path = base_dir / file if allowed else None
    return task_type_of_first_line(path, limits.max_row_bytes)


def fragment_problems(text: str, filename: str, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """Why a registered template's body is not a job-file fragment: not YAML within the
    YAML limits, or not a mapping (its size is the caller's check: it counts towards
    max_job_bytes in every job that extends it). Its fields are checked in those jobs."""
    doc = parse_document(text, filename, {}, limits)
    return doc.problems if doc.broken else []


def _default_root(base_dir: Path) -> Path:
    """The working directory when the job file is inside it (examples/jobs/x.yaml may read
    examples/data/), else the job file's own folder."""
    cwd = Path.cwd().resolve()
    return cwd if base_dir.resolve().is_relative_to(cwd) else base_dir


def _confiner(base_dir: Path, root: Path) -> CheckPath:
    resolved_root = root.resolve()

    def check(rel: str) -> str | None:
        target = (base_dir / rel).resolve()  # symlinks followed: a link out is outside too
        if target.is_relative_to(resolved_root):
            return None
        return (
            f"{target} is outside {resolved_root} (the folder a job file may read from;"
            " --allow-outside-paths lifts this)"
        )

    return check


def _input_file_problems(
    file: str, base_dir: Path, check_path: CheckPath | None, lines: Any, name: str
) -> list[Problem]:
    where, line = lines.get(("inputs", "file"), lines.get(("inputs",), (name, None)))
    refused = check_path(file) if check_path is not None else None
    if refused is None:
        target = base_dir / file
        if target.exists() and not target.is_file():
            refused = f"{target} is not a regular file"
    return (
        [Problem(f"cannot read {file}: {refused}", where, line, "inputs.file")] if refused else []
    )


def _read_text(path: Path, name: str, cap: int) -> str:
    try:
        with open_regular_file(path) as f:
            raw = f.read(cap + 1)
    except OSError as exc:
        raise JobFileError(
            [Problem(f"cannot read the job file: {exc.strerror or exc}", name)]
        ) from None
    if len(raw) > cap:
        message = f"the job file is more than {cap:,} bytes (limit max_job_bytes)"
        raise JobFileError([Problem(message, name)])
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise JobFileError([Problem(message, name, line)]) from None


def _folder_reader(folder: Path, cap: int) -> ReadFile:
    def read(rel: str) -> str:
        with open_regular_file(folder / rel) as f:
            return f.read(cap + 1).decode("utf-8")  # the byte count is checked by the caller

    return read


def _apply_profile(
    data: dict[str, Any],
    profile: str,
    lines: dict[Loc, tuple[str, int]],
    spoiled: set[Loc],
    problems: list[Problem],
    name: str,
) -> dict[str, Any]:
    profiles = data.get("profiles")
    file, line = lines.get(("profiles",), (name, None))  # type: ignore[arg-type]
    if not isinstance(profiles, dict) or profile not in profiles:
        known = sorted(profiles) if isinstance(profiles, dict) else []
        listed = f"; profiles: {', '.join(known)}" if known else "; this job defines no profiles"
        problems.append(
            Problem(
                f"unknown profile {profile!r}{did_you_mean(profile, known)}{listed}",
                file,
                line,
                "profiles",
            )
        )
        return data
    overlay = profiles[profile]
    if not isinstance(overlay, dict):
        problems.append(
            Problem(
                "a profile must be a mapping of fields to override",
                file,
                line,
                f"profiles.{profile}",
            )
        )
        return data
    for key in ("profiles", "extends"):
        if key in overlay:
            problems.append(
                Problem(f"a profile cannot set {key}", file, line, f"profiles.{profile}.{key}")
            )
    prefix: Loc = ("profiles", profile)
    for loc, place in list(lines.items()):
        if loc[:2] == prefix and len(loc) > 2:
            lines[loc[2:]] = place
    spoiled |= {loc[2:] for loc in spoiled if loc[:2] == prefix}
    return deep_merge(data, {k: v for k, v in overlay.items() if k not in ("profiles", "extends")})


def _reserved(
    data: Mapping[str, Any], lines: Mapping[Loc, tuple[str, int]], name: str
) -> list[Problem]:
    out = []
    for key in sorted(LOADER_FIELDS & set(data)):
        file, line = lines.get((key,), (name, 0))
        out.append(
            Problem(
                f"unknown field {key!r} (it is set by the loader, not the job file)",
                file,
                line or None,
                key,
            )
        )
    return out


def _ordered(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file or "", p.line or 0))
