"""Parse one YAML job document, substitute ${...} in its scalars, remember lines.

Substitution happens per scalar after parsing, so a value cannot change the
structure of the file; an unquoted scalar then takes its YAML type again
(`max_new_tokens: ${N:64}` is an int), a quoted one stays a string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Problem, field_path
from .variables import substitute

Path_ = tuple[str | int, ...]


@dataclass
class YamlDoc:
    """A parsed document: its data, the (file, line) of each field path, and problems."""

    data: dict[str, Any]
    lines: dict[Path_, tuple[str, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    spoiled: set[Path_] = field(default_factory=set)  # paths whose variables failed
    broken: bool = False  # not parsed at all: its other problems would be noise


def parse_document(text: str, filename: str, variables: Mapping[str, str]) -> YamlDoc:
    doc = YamlDoc(data={})
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or "could not parse"
        ctx = f" ({exc.context})" if exc.context else ""
        source_lines = text.splitlines()
        source_line = source_lines[mark.line] if mark and mark.line < len(source_lines) else ""
        hint = ""
        if "${" in source_line:  # a ${ inside flow { } / [ ] opens a YAML mapping
            hint = '; inside { } or [ ], quote a ${...} value, as in "${N:64}"'
        doc.problems.append(Problem(f"invalid YAML: {what}{ctx}{hint}", filename, line))
        doc.broken = True
        return doc
    except yaml.YAMLError as exc:
        doc.problems.append(Problem(f"invalid YAML: {exc}", filename))
        doc.broken = True
        return doc
    finally:
        loader.dispose()
    if node is None:
        doc.problems.append(Problem("the job file is empty", filename, 1))
        doc.broken = True
        return doc
    if not isinstance(node, yaml.MappingNode):
        doc.problems.append(
            Problem("a job file must be a mapping of fields (name: ..., model: ...)", filename, 1)
        )
        doc.broken = True
        return doc
    walker = _Walker(loader, filename, variables, doc)
    doc.data = walker.build(node, ())
    return doc


class _Walker:
    def __init__(
        self, loader: yaml.SafeLoader, filename: str, variables: Mapping[str, str], doc: YamlDoc
    ) -> None:
        self.loader, self.filename, self.variables, self.doc = loader, filename, variables, doc

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.doc.lines.setdefault(path, (self.filename, node.start_mark.line + 1))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        out: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = self._scalar(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is None or isinstance(key, (list, dict)):
                self._problem("a key must be a plain value", path, line)
                continue
            if key in first_line:
                self._problem(
                    f"duplicate key {key!r} (first at line {first_line[key]})", path, line
                )
                continue
            first_line[key] = line
            key = key if isinstance(key, (str, int)) else str(key)
            self.doc.lines[(*path, key)] = (self.filename, line)
            out[key] = self.build(value_node, (*path, key))
        return out

    def _scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        value = node.value
        if "$" in value:
            value = self._substitute(node, value, path)
            if node.style is not None:  # quoted or block: stays a string
                return value
            # plain: the substituted text takes its YAML type, as if written there
            node = yaml.ScalarNode(
                self.loader.resolve(yaml.ScalarNode, value, (True, False)), value
            )
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError):  # e.g. a timestamp-like "2025-13-45"
            return value

    def _substitute(self, node: yaml.ScalarNode, value: str, path: Path_) -> str:
        new, issues = substitute(value, self.variables)
        base = node.start_mark.line + 1 + (1 if node.style in ("|", ">") else 0)
        for issue in issues:
            line = base + value.count("\n", 0, issue.offset)
            self.doc.problems.append(Problem(issue.message, self.filename, line, field_path(path)))
            self.doc.spoiled.add(path)
        return new

    def _problem(self, message: str, path: Path_, line: int) -> None:
        self.doc.problems.append(Problem(message, self.filename, line, field_path(path) or None))
