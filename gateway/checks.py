"""Checks of request fields that are not job files (those go through gateway/jobfile):
online tasks (Generate, Execute), names and ids, page tokens. Each raises
InvalidArgument naming the field and, for a cap, the limit (gateway/limits.py)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from batchinfer.v1 import task_pb2

from gateway.errors import InvalidArgument
from gateway.jobfile.caps import utf8_size
from gateway.limits import Limits


def check_name(value: str, field: str, cap: int, limit: str) -> None:
    """An id or a name: at most `cap` characters, no NUL (PostgreSQL text cannot hold one)."""
    if len(value) > cap:
        raise InvalidArgument(
            field, f"is {len(value):,} characters; at most {cap:,} (limit {limit})"
        )
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain NUL characters")


def check_task(task: task_pb2.Task, where: str, limits: Limits) -> None:
    """An online task, with the caps a job's rendered task has."""
    if not task.model:
        raise InvalidArgument(f"{where}.model", "must name a model")
    if task.task_type == task_pb2.TASK_TYPE_UNSPECIFIED:
        raise InvalidArgument(
            f"{where}.task_type", "must be set (generate, chat, classify, score or embed)"
        )
    check_name(task.task_id, f"{where}.task_id", limits.max_id_chars, "max_id_chars")
    labels, stops = f"{where}.labels", f"{where}.params.stop"
    _check_count(task.labels, labels, "labels", limits.max_labels, "max_labels")
    _check_each(task.labels, labels, limits.max_label_chars, "max_label_chars")
    _check_count(
        task.params.stop, stops, "stop strings", limits.max_stop_strings, "max_stop_strings"
    )
    _check_each(task.params.stop, stops, limits.max_stop_chars, "max_stop_chars")
    _check_prompt(task, where, limits.max_prompt_bytes)


def _check_count(values: Any, field: str, what: str, most: int, limit: str) -> None:
    if len(values) > most:
        raise InvalidArgument(field, f"{len(values):,} {what}; at most {most:,} (limit {limit})")


def _check_each(values: Any, field: str, chars: int, limit: str) -> None:
    for i, value in enumerate(values):
        if len(value) > chars:
            raise InvalidArgument(
                f"{field}[{i}]", f"is {len(value):,} characters; at most {chars:,} (limit {limit})"
            )


def _check_prompt(task: task_pb2.Task, where: str, cap: int) -> None:
    """The input of the task (prompt, messages, continuation together), in UTF-8 bytes."""
    parts = [task.prompt, task.continuation]
    for message in task.messages:
        parts += [message.role, message.content]
    chars = sum(map(len, parts))
    if chars <= cap // 4:  # at most 4 bytes a character
        return
    size = chars if chars > cap else sum(map(utf8_size, parts))
    if size > cap:
        field = f"{where}.messages" if task.messages else f"{where}.prompt"
        more = "at least " if chars > cap else ""
        raise InvalidArgument(
            field,
            f"the task's input (prompt, messages, continuation) is {more}{size:,} bytes;"
            f" at most {cap:,} (limit max_prompt_bytes)",
        )


# ------------------------------------------------------------------ page tokens


def page_token(*position: Any) -> str:
    """An opaque token for the next page: where the last page ended."""
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode()


def from_page_token(
    token: str, types: tuple[type | tuple[type, ...], ...]
) -> tuple[Any, ...] | None:
    """The position a token holds (None for ""); raises InvalidArgument for a token this
    gateway did not give."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        position = None
    if (
        len(token) > 4096
        or not isinstance(position, list)
        or len(position) != len(types)
        or not all(
            isinstance(v, t) and not isinstance(v, bool)
            for v, t in zip(position, types, strict=True)
        )
    ):
        raise InvalidArgument("page_token", "is not a token from this gateway's last page")
    return tuple(position)
