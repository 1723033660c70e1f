"""Parse one YAML job document, substitute ${...} in its scalars, remember lines.

Substitution happens per scalar after parsing, so a value cannot change the
structure of the file; an unquoted scalar then takes its YAML type again
(`max_new_tokens: ${N:64}` is an int), a quoted one stays a string.

Parsing runs on a budget (Limits): nesting depth and the number of values are
checked while the document is composed, and what aliases and merge keys add
by repeating values is counted while it is built, so 571 bytes of nested
aliases cannot become a billion values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gateway.limits import DEFAULT_LIMITS, Limits

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


class BudgetExceeded(Exception):
    """The document passes one of the YAML limits; `mark` is where."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.mark = mark


# Events come from libyaml's scanner and parser where PyYAML was built with it (its
# wheels are): PyYAML's own spent 20 of 24 s on a file of 100,000 labels. Nodes are
# composed by PyYAML's Python composer, whose compose_node the budget below hooks
# (libyaml's composer cannot be hooked).
if getattr(yaml, "__with_libyaml__", False):

    class _Events(yaml.cyaml.CParser):  # type: ignore[misc]
        """libyaml's scanner and parser."""

else:  # pragma: no cover - PyYAML's wheels are built with libyaml

    class _Events(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


def _too_deep(limits: Limits) -> str:
    return f"the job file nests deeper than {limits.max_yaml_depth} levels (limit max_yaml_depth)"


class _BudgetLoader(
    yaml.composer.Composer, _Events, yaml.constructor.SafeConstructor, yaml.resolver.Resolver
):
    """A safe loader that refuses deep nesting, too many values and merge keys that
    multiply."""

    def __init__(self, text: str, limits: Limits) -> None:
        _Events.__init__(self, text)  # type: ignore[call-arg]
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.limits = limits
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):  # the node composed before: counted when built
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        mark = self.peek_event().start_mark
        self.nodes += 1
        if self.nodes > self.limits.max_yaml_nodes:
            raise BudgetExceeded(
                f"the job file has more than {self.limits.max_yaml_nodes} values"
                " (limit max_yaml_nodes); put large inputs in an input file",
                mark,
            )
        self.depth += 1
        if self.depth > self.limits.max_yaml_depth:
            raise BudgetExceeded(_too_deep(self.limits), mark)
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self.depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)  # type: ignore[no-untyped-call]
        if len(node.value) > self.limits.max_yaml_alias_nodes:
            raise BudgetExceeded(
                f"merge keys (<<) make a mapping of more than {self.limits.max_yaml_alias_nodes}"
                " keys (limit max_yaml_alias_nodes)",
                node.start_mark,
            )


def parse_document(
    text: str, filename: str, variables: Mapping[str, str], limits: Limits = DEFAULT_LIMITS
) -> YamlDoc:
    doc = YamlDoc(data={})
    loader = _BudgetLoader(text, limits)
    try:
        node = loader.get_single_node()
    except BudgetExceeded as exc:
        line = exc.mark.line + 1 if exc.mark else None
        doc.problems.append(Problem(f"invalid YAML: {exc}", filename, line))
        doc.broken = True
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "maximum nesting depth" in (exc.problem or ""):  # libyaml's own cap (1000) came first
            line = mark.line + 1 if mark else None
            doc.problems.append(Problem(f"invalid YAML: {_too_deep(limits)}", filename, line))
            doc.broken = True
            return doc
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        what = exc.problem or "could not parse"
        ctx = f" ({exc.context})" if exc.context else ""
        source_lines = text.splitlines()
        source_line = source_lines[mark.line] if mark and mark.line < len(source_lines) else ""
        hint = ""
        if "${" in source_line:  # a ${ inside flow { } / [ ] opens a YAML mapping
            hint = '; inside { } or [ ], quote a ${...} value, as in "${N:64}"'
        doc.problems.append(
            Problem(f"invalid YAML: {what}{ctx}{hint}", filename, line, column=column)
        )
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
    try:
        doc.data = walker.build(node, ())
    except BudgetExceeded as exc:
        line = exc.mark.line + 1 if exc.mark else None
        doc.problems.append(Problem(f"invalid YAML: {exc}", filename, line))
        doc.data, doc.broken = {}, True
    return doc


class _Walker:
    def __init__(
        self, loader: _BudgetLoader, filename: str, variables: Mapping[str, str], doc: YamlDoc
    ) -> None:
        self.loader, self.filename, self.variables, self.doc = loader, filename, variables, doc
        self.limits = loader.limits
        self.seen: set[int] = set()  # nodes built once; an alias builds one again
        self.open: set[int] = set()  # nodes being built: an alias to one is a cycle
        self.repeated = 0

    def build(self, node: yaml.Node, path: Path_) -> Any:
        key = id(node)
        if key in self.open:
            raise BudgetExceeded("an alias refers to a value that contains it", node.start_mark)
        if key in self.seen:
            self.repeated += 1
            if self.repeated > self.limits.max_yaml_alias_nodes:
                raise BudgetExceeded(
                    f"aliases (*name) repeat more than {self.limits.max_yaml_alias_nodes} values"
                    " (limit max_yaml_alias_nodes)",
                    node.start_mark,
                )
        self.seen.add(key)
        self.doc.lines.setdefault(path, (self.filename, node.start_mark.line + 1))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        self.open.add(key)
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if path[-2:] == ("inputs", "rows") and len(node.value) > self.limits.max_inline_rows:
                raise BudgetExceeded(
                    f"inputs.rows has {len(node.value)} rows; at most {self.limits.max_inline_rows}"
                    " may be inline (limit max_inline_rows): put them in an input file",
                    node.start_mark,
                )
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(key)

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
