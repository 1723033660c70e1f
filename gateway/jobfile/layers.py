"""The extends chain: read each layer (a file or a registered template), lowest first."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.limits import DEFAULT_LIMITS, Limits

from .errors import Problem
from .yamldoc import YamlDoc, parse_document

MAX_DEPTH = 16
_REGISTERED = re.compile(r"([A-Za-z0-9_.\-/]+)@([A-Za-z0-9_.\-]+)\Z")

ReadFile = Callable[[str], str]
ResolveTemplate = Callable[[str, str], str]
CheckPath = Callable[[str], str | None]  # a path relative to the job's folder -> why not, or None


@dataclass
class Layer:
    doc: YamlDoc
    key: str  # identity for cycle detection: a normalised path or name@version
    rel_dir: str  # folder, relative to the job file's, that its own extends is read from


def extends_chain(
    main: YamlDoc,
    main_file: str,
    variables: Mapping[str, str],
    read_file: ReadFile | None,
    resolve_template: ResolveTemplate | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    check_path: CheckPath | None = None,
    used_bytes: int = 0,
) -> tuple[list[Layer], list[Problem]]:
    """The layers under `main`, lowest first, followed by `main` itself. The text of all
    of them together stays within limits.max_job_bytes (`used_bytes`: the main file's)."""
    chain = [Layer(main, f"file:{os.path.basename(main_file)}", "")]
    problems: list[Problem] = []
    seen = {chain[0].key}
    reader = _Reader(variables, read_file, resolve_template, limits, check_path, used_bytes)
    while True:
        top = chain[0]
        ref = top.doc.data.get("extends")
        if ref is None:
            break
        file, line = top.doc.lines.get(("extends",), (main_file, 0))
        if not isinstance(ref, str) or not ref.strip():
            problems.append(
                Problem("extends must be a file name or name@version", file, line, "extends")
            )
            break
        layer, problem = reader.layer(ref.strip(), top, main_file)
        if problem is None and layer.key in seen:
            keys = [*(lay.key for lay in reversed(chain)), layer.key]
            cycle = " -> ".join(k.split(":", 1)[1] for k in keys)
            problem = f"extends makes a cycle: {cycle}"
        if problem is None and len(chain) > MAX_DEPTH:
            problem = f"extends chain is deeper than {MAX_DEPTH} layers"
        if problem is not None:
            problems.append(Problem(problem, file, line or None, "extends"))
            break
        seen.add(layer.key)
        problems.extend(layer.doc.problems)
        chain.insert(0, layer)
    return chain, problems


class _Reader:
    """Reads layers, counting their bytes against max_job_bytes."""

    def __init__(
        self,
        variables: Mapping[str, str],
        read_file: ReadFile | None,
        resolve_template: ResolveTemplate | None,
        limits: Limits,
        check_path: CheckPath | None,
        used_bytes: int,
    ) -> None:
        self.variables, self.read_file, self.resolve_template = (
            variables,
            read_file,
            resolve_template,
        )
        self.limits, self.check_path, self.used = limits, check_path, used_bytes

    def layer(self, ref: str, top: Layer, main_file: str) -> tuple[Layer, str | None]:
        registered = _REGISTERED.match(ref)
        if registered and not ref.endswith((".yaml", ".yml")):
            name, version = registered.groups()
            if self.resolve_template is None:
                return (
                    _empty(),
                    f"{ref} is a registered template; registered templates need a gateway",
                )
            try:
                text = self.resolve_template(name, version)
            except (KeyError, LookupError, OSError, ValueError) as exc:
                return _empty(), f"cannot find registered template {ref}: {exc}"
            return self._parsed(text, ref, f"template:{ref}", "")
        rel = os.path.normpath(os.path.join(top.rel_dir, ref))
        display = os.path.normpath(os.path.join(os.path.dirname(main_file), rel))
        if self.read_file is None:
            return (
                _empty(),
                f"cannot read {ref}: no folder to read it from (the job has no file path)",
            )
        refused = self.check_path(rel) if self.check_path is not None else None
        if refused is not None:
            return _empty(), f"cannot read {ref}: {refused}"
        try:
            text = self.read_file(rel)
        except FileNotFoundError:
            return _empty(), f"cannot read {ref}: no such file ({display})"
        except UnicodeDecodeError as exc:
            return _empty(), f"cannot read {ref}: not valid UTF-8 (byte {exc.start + 1})"
        except OSError as exc:
            return _empty(), f"cannot read {ref}: {exc.strerror or exc}"
        return self._parsed(text, display, f"file:{rel}", os.path.dirname(rel))

    def _parsed(self, text: str, name: str, key: str, rel_dir: str) -> tuple[Layer, str | None]:
        self.used += len(text.encode("utf-8", "surrogatepass"))
        cap = self.limits.max_job_bytes
        if self.used > cap:
            return _empty(), (
                f"the job file and the files it extends pass {cap:,} bytes (limit max_job_bytes)"
            )
        return Layer(parse_document(text, name, self.variables, self.limits), key, rel_dir), None


def _empty() -> Layer:
    return Layer(YamlDoc(data={}), "", "")
