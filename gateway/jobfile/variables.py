"""The ${NAME} / ${NAME:default} language of job files.

Values come only from the mapping passed in: this module never reads the
process environment, so a job cannot read the gateway's secrets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class VariableIssue:
    """A bad reference at `offset` (a character index into the scanned text)."""

    message: str
    offset: int
    name: str | None = None


def escape(text: str) -> str:
    """The text that substitutes back to `text` exactly ("${" becomes "$${")."""
    return text.replace("${", "$${")


def substitute(text: str, variables: Mapping[str, str]) -> tuple[str, list[VariableIssue]]:
    """Replace every ${NAME} / ${NAME:default}; "$${" stands for a literal "${".

    Returns the new text and every issue found. An undefined reference stays in
    the text as written, so the caller can tell which field it spoiled.
    """
    if "$" not in text:
        return text, []
    out: list[str] = []
    issues: list[VariableIssue] = []
    i, n = 0, len(text)
    while i < n:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith("$${", j):
            out.append("${")
            i = j + 3
        elif text.startswith("${", j):
            end = text.find("}", j + 2)
            if end < 0:
                issues.append(
                    VariableIssue("unterminated ${ (no closing '}'); write $${ for a literal ${", j)
                )
                out.append(text[j:])
                break
            out.append(_resolve(text[j + 2 : end], j, variables, issues, text[j : end + 1]))
            i = end + 1
        else:
            out.append("$")
            i = j + 1
    return "".join(out), issues


def _resolve(
    body: str, offset: int, variables: Mapping[str, str], issues: list[VariableIssue], raw: str
) -> str:
    name, colon, default = body.partition(":")
    if not _NAME.match(name):
        issues.append(
            VariableIssue(
                f"bad variable name {name!r} in {raw}: use letters, digits and _", offset, name
            )
        )
        return raw
    if name in variables:
        return str(variables[name])
    if colon:
        return default
    issues.append(
        VariableIssue(
            f"undefined variable {name}: set it with --set {name}=VALUE"
            f" or give a default, as in ${{{name}:default}}",
            offset,
            name,
        )
    )
    return raw


def referenced_names(text: str) -> set[str]:
    """The names that ${...} references in `text` (so a client sends only those)."""
    seen: dict[str, str] = {}

    class _Recorder(dict[str, str]):
        def __contains__(self, name: object) -> bool:
            seen[str(name)] = ""
            return True

        def __getitem__(self, name: str) -> str:
            return ""

    substitute(text, _Recorder())
    return set(seen)
