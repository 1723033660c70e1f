"""Turn pydantic's errors into Problems a newcomer can act on."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import Problem, did_you_mean, field_path

Loc = tuple[str | int, ...]


def problems_from(
    exc: ValidationError,
    root: type[BaseModel],
    lines: Mapping[Loc, tuple[str, int]],
    default_file: str,
    skip: set[Loc] | frozenset[Loc] = frozenset(),
) -> list[Problem]:
    """One Problem per error, placed at the nearest line known for its field path."""
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        if any(loc[: len(s)] == s for s in skip):
            continue  # already reported as a bad ${...}
        file, line = _place(loc, lines, default_file)
        out.append(Problem(_message(err, root), file, line, field_path(loc) or None))
    return out


def _place(loc: Loc, lines: Mapping[Loc, tuple[str, int]], default: str) -> tuple[str, int | None]:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return default, None


def _message(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _fields_at(root, loc[:-1])
        hint = did_you_mean(key, known) or (f"; known fields: {', '.join(known)}" if known else "")
        return f"unknown field {key!r}{hint}"
    if kind == "missing" and loc == ("inputs",):
        return "no inputs: add inputs with rows, file or matrix"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        choices = [
            c.strip(" '") for c in str(ctx.get("expected", "")).replace(" or ", ",").split(",")
        ]
        return f"must be one of {ctx.get('expected')}, got {given!r}" + did_you_mean(
            str(given), choices
        )
    bounds = {
        "greater_than_equal": ("must be >= {}", "ge"),
        "greater_than": ("must be > {}", "gt"),
        "less_than_equal": ("must be <= {}", "le"),
        "less_than": ("must be < {}", "lt"),
    }
    if kind in bounds:
        text, key = bounds[kind]
        return f"{text.format(ctx.get(key))}, got {given!r}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    simple = {
        "int_parsing": "expected a whole number",
        "int_from_float": "expected a whole number",
        "int_type": "expected a whole number",
        "float_parsing": "expected a number",
        "float_type": "expected a number",
        "finite_number": "must be a finite number (not .inf or .nan)",
        "bool_parsing": "expected true or false",
        "bool_type": "expected true or false",
        "string_type": "expected a text value",
        "dict_type": "expected a mapping (key: value)",
        "list_type": "expected a list",
        "model_type": "expected a mapping (key: value)",
        "model_attributes_type": "expected a mapping (key: value)",
    }
    if kind in simple:
        return f"{simple[kind]}, got {_show(given)}"
    return f"{err['msg']}, got {_show(given)}"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """The field names of the model found at `loc`, for a "did you mean" hint."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return []
            current = current.model_fields[part].annotation
        else:
            current = _element(current)
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        from .schema import LOADER_FIELDS

        return [name for name in current.model_fields if name not in LOADER_FIELDS]
    return []


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
            if len(args) != 1:
                return tp
        else:
            return tp


def _element(tp: Any) -> Any:
    args = typing.get_args(tp)
    return args[-1] if args else Any
