"""OpenAI batch input: each line of a requests file (`custom_id`, `method`, `url`, `body`)
becomes one task of its own type, read a line at a time like any JSONL input.

A line without a usable `custom_id` or `body` (or not JSON) is a problem of the job, as
OpenAI refuses such a file; a line asking for what batchinfer does not do (another url
or method, `n` > 1, a bad parameter) becomes a task that fails alone with `rejected` set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.limits import Limits

from .errors import Problem
from .idset import IdHashSet, id_hash
from .inputs import NO_UPLOAD, bounded_lines, jsonl_rows, open_regular_file
from .schema import JobSpec, Params

ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "generate",
    "/v1/embeddings": "embed",
}
REJECTED_CODE = "INVALID_ARGUMENT"
# body fields read per endpoint; any other is ignored, with a warning on the client
_COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "n"}
KNOWN_FIELDS = {
    "chat": _COMMON | {"messages", "max_completion_tokens"},
    "generate": _COMMON | {"prompt"},
    "embed": {"model", "input", "encoding_format"},
}
_ROLES = ("system", "user", "assistant")
# OpenAI's `developer` role is the system prompt of newer models
_ROLE_ALIASES = {"developer": "system"}


@dataclass(frozen=True, slots=True)
class OpenAILine:
    """One request line, converted; `rejected` is why it cannot run (it then fails alone)."""

    number: int  # 1-based, not counting blank lines
    lineno: int
    custom_id: str
    task_type: str
    prompt: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    params: Mapping[str, Any] | None = None
    rejected: str | None = None


class _Reject(Exception):
    pass


def task_type_of_first_line(path: Path | None, cap: int) -> str:
    """The task type of the first line's url ("chat" when it has none we know): the
    job's task type, shown by `status`; each task keeps its own line's type."""
    if path is None:
        return "chat"
    try:
        with open_regular_file(path) as f:
            for raw in bounded_lines(f, cap):
                if raw is None or not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    return "chat"
                url = line.get("url") if isinstance(line, dict) else None
                return ENDPOINTS.get(url, "chat") if isinstance(url, str) else "chat"
    except OSError:
        pass
    return "chat"


def iter_lines(job: JobSpec) -> Iterator[OpenAILine | Problem]:
    """Every line of the job's requests file, converted, in order; a Problem in place of
    a line the job cannot take (the message names the line)."""
    path = job.input_file_path()
    if path is None:
        yield Problem(NO_UPLOAD, job.source, None, "inputs.file")
        return
    limits = job.limits()
    defaults = job.params.model_dump(exclude_none=True)
    try:
        f = open_regular_file(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        yield Problem(f"cannot read the input file: {reason}", job.source, None, "inputs.file")
        return
    name = job.inputs.file or str(path)
    seen = IdHashSet()
    with f:
        for item in jsonl_rows(f, name, limits.max_row_bytes):
            if isinstance(item, Problem):
                yield item
                continue
            number, lineno, row = item
            line = convert_line(row, lineno, number, name, defaults, limits)
            if isinstance(line, OpenAILine) and not seen.add(id_hash(line.custom_id)):
                first = _first_line_with(path, line.custom_id, lineno, limits)
                if first is not None:
                    message = (
                        f"line {lineno}: duplicate custom_id {line.custom_id!r}, also on line"
                        f" {first} (each custom_id must be unique in the file)"
                    )
                    yield Problem(message, name, lineno, "custom_id", number)
                    continue
            yield line


def _first_line_with(path: Path, custom_id: str, before: int, limits: Limits) -> int | None:
    """Re-reads the file to name the first line with `custom_id` (a hash hit may collide)."""
    with open_regular_file(path) as f:
        for item in jsonl_rows(f, str(path), limits.max_row_bytes):
            if isinstance(item, Problem):
                continue
            _, lineno, row = item
            if lineno >= before:
                return None
            if row.get("custom_id") == custom_id:
                return lineno
    return None


def convert_line(
    row: dict[str, Any],
    lineno: int,
    number: int,
    name: str,
    defaults: Mapping[str, Any],
    limits: Limits,
) -> OpenAILine | Problem:
    """One parsed line as a task, or the Problem that makes the file unusable."""
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id.strip():
        got = "missing" if custom_id is None else f"{type(custom_id).__name__}, not a string"
        message = f"line {lineno}: custom_id is {got}; each line needs a unique custom_id string"
        return Problem(message, name, lineno, "custom_id", number)
    if len(custom_id) > limits.max_id_chars:
        message = (
            f"line {lineno}: custom_id is {len(custom_id):,} characters; at most"
            f" {limits.max_id_chars} (limit max_id_chars)"
        )
        return Problem(message, name, lineno, "custom_id", number)
    body = row.get("body")
    if not isinstance(body, dict):
        got = "missing" if body is None else f"a {type(body).__name__}, not an object"
        message = f"line {lineno} (custom_id {custom_id!r}): body is {got}"
        return Problem(message, name, lineno, "body", number)
    url = row.get("url")
    task_type = ENDPOINTS.get(url, "chat") if isinstance(url, str) else "chat"
    try:
        return _convert(row, body, number, lineno, custom_id, defaults, limits)
    except _Reject as exc:
        message = f"{name} line {lineno} (custom_id {custom_id!r}): {exc}"
        return OpenAILine(number, lineno, custom_id, task_type, rejected=message)


def _convert(
    row: dict[str, Any],
    body: dict[str, Any],
    number: int,
    lineno: int,
    custom_id: str,
    defaults: Mapping[str, Any],
    limits: Limits,
) -> OpenAILine:
    method = row.get("method", "POST")
    if method != "POST":
        raise _Reject(f"method {method!r} is not supported; only POST")
    url = row.get("url")
    if url not in ENDPOINTS:
        supported = ", ".join(ENDPOINTS)
        raise _Reject(f"url {url!r} is not supported; supported: {supported}")
    task_type = ENDPOINTS[url]
    n = body.get("n", 1)
    if n != 1:
        raise _Reject(f"n={n!r}: only n=1 is supported (send one line per sample)")
    if task_type == "embed":
        return OpenAILine(
            number, lineno, custom_id, task_type, prompt=_embed_input(body), params={}
        )
    params = _params(body, task_type, defaults, limits)
    if task_type == "chat":
        messages = _messages(body.get("messages"))
        return OpenAILine(number, lineno, custom_id, task_type, messages=messages, params=params)
    return OpenAILine(number, lineno, custom_id, task_type, prompt=_prompt(body), params=params)


def _params(
    body: dict[str, Any], task_type: str, defaults: Mapping[str, Any], limits: Limits
) -> dict[str, Any]:
    given: dict[str, Any] = {}
    limit_key = "max_completion_tokens" if task_type == "chat" else None
    for key in ("max_tokens", limit_key):
        if key is not None and body.get(key) is not None:
            given["max_new_tokens"] = body[key]
    for key in ("temperature", "top_p", "seed", "stop"):
        if body.get(key) is not None:
            given[key] = body[key]
    try:
        params = Params.model_validate({**defaults, **given}).model_dump(exclude_none=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        where = {"max_new_tokens": "max_tokens"}.get(where, where)
        raise _Reject(f"body.{where}: {first['msg']}") from None
    stops = params.get("stop") or []
    if len(stops) > limits.max_stop_strings or any(len(s) > limits.max_stop_chars for s in stops):
        raise _Reject(
            f"body.stop: at most {limits.max_stop_strings} strings of at most"
            f" {limits.max_stop_chars} characters"
        )
    if not stops:
        params.pop("stop", None)
    return params


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _Reject(f"{where}: a content part of type {kind!r}; only text parts")
            if not isinstance(part.get("text"), str):
                raise _Reject(f"{where}: a text part needs a text string")
            texts.append(part["text"])
        return "".join(texts)
    raise _Reject(f"{where}: content must be a string or a list of text parts")


def _messages(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _Reject("body.messages must be a non-empty list of {role, content}")
    out = []
    for i, message in enumerate(value):
        where = f"body.messages[{i}]"
        if not isinstance(message, dict):
            raise _Reject(f"{where} must be an object with role and content")
        given = message.get("role")
        role = _ROLE_ALIASES.get(given, given) if isinstance(given, str) else given
        if role not in _ROLES:
            raise _Reject(f"{where}.role {message.get('role')!r}: one of {', '.join(_ROLES)}")
        out.append((role, _text(message.get("content"), f"{where}.content")))
    return tuple(out)


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        raise _Reject(f"body.prompt: a list of {len(prompt)} prompts; send one line per prompt")
    raise _Reject("body.prompt must be a string")


def _embed_input(body: dict[str, Any]) -> str:
    encoding = body.get("encoding_format", "float")
    if encoding != "float":
        raise _Reject(f"body.encoding_format {encoding!r}: only 'float' is supported")
    value = body.get("input")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, list):
        raise _Reject(
            f"body.input: a list of {len(value)} items; send one string (or a list of one) a line"
        )
    if not isinstance(value, str) or not value:
        raise _Reject("body.input must be a non-empty string")
    return value


def input_hash(model: str, line: OpenAILine) -> str:
    head = {"model": model, "task": line.task_type, "params": dict(line.params or {})}
    hasher = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode() + b"\0")
    hasher.update(f"{len(line.prompt)}:{line.prompt}".encode())
    for role, content in line.messages:
        hasher.update(f"|{role}:{len(content)}:{content}".encode())
    if line.rejected is not None:
        hasher.update(f"|rejected:{line.rejected}".encode())
    return hasher.hexdigest()


def scan_warnings(path: Path, model: str, limits: Limits, most: int = 20) -> list[str]:
    """What the client says before sending the file: body fields that are ignored, and
    `model` values other than the job's (the job's model runs every line)."""
    ignored: dict[str, list[int]] = {}
    models: dict[str, int] = {}
    try:
        f = open_regular_file(path)
    except OSError:
        return []
    with f:
        for item in jsonl_rows(f, str(path), limits.max_row_bytes):
            if isinstance(item, Problem):
                continue
            _, lineno, row = item
            body, url = row.get("body"), row.get("url")
            if not isinstance(body, dict) or url not in ENDPOINTS:
                continue
            known = KNOWN_FIELDS[ENDPOINTS[url]]
            for key in body:
                if key not in known:
                    ignored.setdefault(key, []).append(lineno)
            other = body.get("model")
            if isinstance(other, str) and other != model:
                models.setdefault(other, lineno)
    warnings = []
    for key, lines in sorted(ignored.items())[:most]:
        shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
        warnings.append(
            f"{path.name}: body field {key!r} is not supported and is ignored"
            f" ({len(lines)} line(s): {shown})"
        )
    for other, lineno in sorted(models.items())[:most]:
        warnings.append(
            f"{path.name}: body.model {other!r} (first on line {lineno}) is not the job's"
            f" model; {model} runs every line"
        )
    return warnings
