"""load_job: text -> extends chain -> profile -> schema -> compiled templates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import JobFileError, Problem, did_you_mean
from .layers import ReadFile, ResolveTemplate, extends_chain
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
) -> JobSpec:
    """Load and check a job file; raises JobFileError listing every problem found."""
    variables = dict(variables or {})
    if path is None and text is None:
        raise ValueError("load_job needs a path or text")
    name = filename or (str(path) if path is not None else "<job>")
    base_dir = Path(path).parent if path is not None else None
    if text is None:
        text = _read_text(Path(str(path)), name)
    if read_file is None and base_dir is not None:
        read_file = _folder_reader(base_dir)

    main = parse_document(text, name, variables)
    if main.broken:
        raise JobFileError(main.problems)
    chain, problems = extends_chain(main, name, variables, read_file, resolve_template)
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

    try:
        job = JobFile.model_validate({k: v for k, v in data.items() if k not in LOADER_FIELDS})
    except ValidationError as exc:
        problems.extend(problems_from(exc, JobFile, lines, name, spoiled))
        problems.extend(raw_template_problems(data, lines, name))
        raise JobFileError(_ordered(problems)) from None
    templates, template_problems = compile_job_templates(job, lines, name)
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
    return spec


def _read_text(path: Path, name: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise JobFileError(
            [Problem(f"cannot read the job file: {exc.strerror or exc}", name)]
        ) from None
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise JobFileError([Problem(message, name, line)]) from None


def _folder_reader(folder: Path) -> ReadFile:
    def read(rel: str) -> str:
        return (folder / rel).read_bytes().decode("utf-8")

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
