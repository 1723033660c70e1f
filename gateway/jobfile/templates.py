"""Jinja2 templates in an immutable sandbox with strict undefined variables and
bounded costs (sandbox.py).

Each template is compiled once per job; rendering a row costs one call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError

from gateway.limits import DEFAULT_LIMITS, Limits

from .errors import Problem, field_path
from .sandbox import TemplateLimitError, environment_for, start_rendering

_SIMPLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}\Z")
_UNDEFINED = re.compile(r"'([^']+)' is undefined")
_NO_ATTR = re.compile(r"has no attribute '([^']+)'")


class RenderError(Exception):
    """A row the template cannot render; `problem` says where and why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class CompiledTemplate:
    """A template ready to render rows; `name` is its field path, e.g. "messages[1].content"."""

    name: str
    source: str
    file: str | None
    line: int | None
    _template: Any = None  # jinja2.Template, or None for a constant or a plain {{ field }}
    _field: str | None = None
    _constant: str = ""
    limits: Limits = DEFAULT_LIMITS

    def render(self, context: Mapping[str, Any], row: int) -> str:
        if self._field is not None:  # fast path for "{{ field }}"
            try:
                text = str(context[self._field])
            except KeyError:
                raise RenderError(self._missing(self._field, context, row)) from None
            if len(text) > self.limits.max_prompt_bytes:
                raise RenderError(self._over_cap(row))
            return text
        if self._template is None:
            return self._constant
        tpl = self._template
        try:
            return self._bounded_output(
                tpl.root_render_func(tpl.new_context(context, shared=True)), row
            )
        except RenderError:
            raise
        except TemplateLimitError as exc:
            raise RenderError(self._problem(str(exc), row)) from None
        except SecurityError as exc:
            raise RenderError(self._problem(f"forbidden by the sandbox: {exc}", row)) from None
        except UndefinedError as exc:
            raise RenderError(self._undefined(str(exc), context, row)) from None
        except MemoryError:  # under the render workers' RLIMIT_AS
            message = "ran out of memory while rendering (limit render_memory_bytes)"
            raise RenderError(self._problem(message, row)) from None
        except Exception as exc:  # a filter or expression failing on this row's data
            # the exception's text may quote the row: it travels as the detail, kept out of logs
            problem = Problem(type(exc).__name__, self.file, self.line, self.name, row, str(exc))
            raise RenderError(problem) from None

    def _bounded_output(self, pieces: Any, row: int) -> str:
        """Joins the output, stopping as soon as it passes max_prompt_bytes."""
        start_rendering()
        cap = self.limits.max_prompt_bytes
        out: list[str] = []
        size = 0
        for piece in pieces:
            size += len(piece)
            if size > cap:
                raise RenderError(self._over_cap(row))
            out.append(piece)
        return "".join(out)

    def _over_cap(self, row: int) -> Problem:
        cap = self.limits.max_prompt_bytes
        return self._problem(f"renders more than {cap:,} characters (limit max_prompt_bytes)", row)

    def _undefined(self, text: str, context: Mapping[str, Any], row: int) -> Problem:
        if "unsafe" in text:
            return self._problem(f"forbidden by the sandbox: {text}", row)
        match = _UNDEFINED.search(text)
        if match:
            return self._missing(match.group(1), context, row)
        match = _NO_ATTR.search(text)
        name = match.group(1) if match else "?"
        # the name may come from the row (text[field]): it travels as the detail
        message = "reads an attribute or key that is not there"
        return Problem(message, self.file, self.line, self.name, row, f"{name!r} ({text})")

    def _missing(self, name: str, context: Mapping[str, Any], row: int) -> Problem:
        fields = ", ".join(sorted(k for k in context if k not in ("vars", "row_number")))
        return self._problem(
            f"reads field {name!r}, which this row does not have (it has: {fields})", row
        )

    def _problem(self, message: str, row: int) -> Problem:
        return Problem(message, self.file, self.line, self.name, row)


def compile_template(
    source: str,
    name: str,
    file: str | None,
    line: int | None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[CompiledTemplate | None, list[Problem]]:
    """Parse and check a template once; problems name the template's field and line."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > limits.max_template_bytes:
        message = (
            f"the template is {size:,} bytes; at most {limits.max_template_bytes:,}"
            " (limit max_template_bytes)"
        )
        return None, [Problem(message, file, line, name)]
    env = environment_for(limits)
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        where = f" (line {exc.lineno} of the template)" if "\n" in source.strip() else ""
        return None, [Problem(f"template syntax error: {exc.message}{where}", file, line, name)]
    except RecursionError:
        return None, [Problem("the template nests too deeply to compile", file, line, name)]
    forbidden = sorted(_private_names(ast))
    if forbidden:
        listed = ", ".join(repr(n) for n in forbidden)
        message = f"reads {listed}: names starting with _ are forbidden in templates"
        return None, [Problem(message, file, line, name)]
    simple = _SIMPLE.match(source.strip()) if source == source.strip() else None
    if simple:
        return CompiledTemplate(name, source, file, line, _field=simple.group(1), limits=limits), []
    if not any(tok in source for tok in ("{{", "{%", "{#")):
        # Jinja drops one trailing newline; a constant does the same
        constant = source[:-1] if source.endswith("\n") else source
        return CompiledTemplate(name, source, file, line, _constant=constant, limits=limits), []
    try:
        template = env.from_string(ast)
    except RecursionError:
        return None, [Problem("the template nests too deeply to compile", file, line, name)]
    except TemplateSyntaxError as exc:  # found while generating code, e.g. assigning to loop
        return None, [Problem(f"template syntax error: {exc.message}", file, line, name)]
    return CompiledTemplate(name, source, file, line, template, limits=limits), []


def _private_names(ast: nodes.Template) -> set[str]:
    found = {n.attr for n in ast.find_all(nodes.Getattr) if n.attr.startswith("_")}
    for item in ast.find_all(nodes.Getitem):
        arg = item.arg
        if (
            isinstance(arg, nodes.Const)
            and isinstance(arg.value, str)
            and arg.value.startswith("_")
        ):
            found.add(arg.value)
    found |= {n.name for n in ast.find_all(nodes.Name) if n.name.startswith("__")}
    return found


@dataclass(frozen=True)
class JobTemplates:
    """Every template of a job, compiled once."""

    prompt: CompiledTemplate | None
    messages: tuple[tuple[str, CompiledTemplate], ...]
    continuation: CompiledTemplate | None
    task_id: CompiledTemplate | None
    shard_key: CompiledTemplate | None
    reference: CompiledTemplate | None = None  # evaluate.reference


def compile_job_templates(
    job: Any,
    lines: Mapping[tuple[str | int, ...], tuple[str, int]],
    default_file: str,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[JobTemplates, list[Problem]]:
    """Compile the template, messages, continuation, inputs.id, shard.key and
    evaluate.reference of `job`."""
    problems: list[Problem] = []
    reference = job.evaluate.reference if job.evaluate is not None else None
    count = len(job.messages or ()) + sum(
        source is not None
        for source in (job.template, job.continuation, job.inputs.id, job.shard.key, reference)
    )
    if count > limits.max_templates:
        file, line = lines.get(("messages",), (default_file, None))  # type: ignore[arg-type]
        message = (
            f"the job has {count} templates; at most {limits.max_templates} (limit max_templates)"
        )
        return JobTemplates(None, (), None, None, None), [Problem(message, file, line, "messages")]

    def build(source: str | None, loc: tuple[str | int, ...]) -> CompiledTemplate | None:
        if source is None:
            return None
        file, line = lines.get(loc, (default_file, None))  # type: ignore[arg-type]
        name = field_path(loc)
        compiled, found = compile_template(source, name, file, line, limits)
        problems.extend(found)
        return compiled

    messages = []
    for i, message in enumerate(job.messages or ()):
        compiled = build(message.content, ("messages", i, "content"))
        if compiled is not None:
            messages.append((message.role, compiled))
    result = JobTemplates(
        prompt=build(job.template, ("template",)),
        messages=tuple(messages),
        continuation=build(job.continuation, ("continuation",)),
        task_id=build(job.inputs.id, ("inputs", "id")),
        shard_key=build(job.shard.key, ("shard", "key")),
        reference=build(reference, ("evaluate", "reference")),
    )
    return result, problems


def raw_template_problems(
    data: Mapping[str, Any],
    lines: Mapping[tuple[str | int, ...], tuple[str, int]],
    default_file: str,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Problem]:
    """Template problems in a document that failed the schema, so they are reported too."""
    found: list[tuple[tuple[str | int, ...], Any]] = [
        (("template",), data.get("template")),
        (("continuation",), data.get("continuation")),
    ]
    for key, inner in (("inputs", "id"), ("shard", "key"), ("evaluate", "reference")):
        part = data.get(key)
        found.append(((key, inner), part.get(inner) if isinstance(part, dict) else None))
    messages = data.get("messages")
    for i, message in enumerate(
        messages[: limits.max_templates] if isinstance(messages, list) else []
    ):
        if isinstance(message, dict):
            found.append((("messages", i, "content"), message.get("content")))
    problems: list[Problem] = []
    for loc, source in found:
        if isinstance(source, str):
            file, line = lines.get(loc, (default_file, None))  # type: ignore[arg-type]
            problems.extend(compile_template(source, field_path(loc), file, line, limits)[1])
    return problems
