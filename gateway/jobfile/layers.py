"""The extends chain: read each layer (a file or a registered template), lowest first."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import Problem
from .yamldoc import YamlDoc, parse_document

MAX_DEPTH = 16
_REGISTERED = re.compile(r"([A-Za-z0-9_.\-/]+)@([A-Za-z0-9_.\-]+)\Z")

ReadFile = Callable[[str], str]
ResolveTemplate = Callable[[str, str], str]


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
) -> tuple[list[Layer], list[Problem]]:
    """The layers under `main`, lowest first, followed by `main` itself."""
    chain = [Layer(main, f"file:{os.path.basename(main_file)}", "")]
    problems: list[Problem] = []
    seen = {chain[0].key}
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
        layer, problem = _read_layer(
            ref.strip(), top, main_file, variables, read_file, resolve_template
        )
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


def _read_layer(
    ref: str,
    top: Layer,
    main_file: str,
    variables: Mapping[str, str],
    read_file: ReadFile | None,
    resolve_template: ResolveTemplate | None,
) -> tuple[Layer, str | None]:
    registered = _REGISTERED.match(ref)
    if registered and not ref.endswith((".yaml", ".yml")):
        name, version = registered.groups()
        if resolve_template is None:
            return _empty(), f"{ref} is a registered template; registered templates need a gateway"
        try:
            text = resolve_template(name, version)
        except (KeyError, LookupError, OSError, ValueError) as exc:
            return _empty(), f"cannot find registered template {ref}: {exc}"
        return Layer(parse_document(text, ref, variables), f"template:{ref}", ""), None
    rel = os.path.normpath(os.path.join(top.rel_dir, ref))
    display = os.path.normpath(os.path.join(os.path.dirname(main_file), rel))
    if read_file is None:
        return _empty(), f"cannot read {ref}: no folder to read it from (the job has no file path)"
    try:
        text = read_file(rel)
    except FileNotFoundError:
        return _empty(), f"cannot read {ref}: no such file ({display})"
    except UnicodeDecodeError as exc:
        return _empty(), f"cannot read {ref}: not valid UTF-8 (byte {exc.start + 1})"
    except OSError as exc:
        return _empty(), f"cannot read {ref}: {exc.strerror or exc}"
    doc = parse_document(text, display, variables)
    return Layer(doc, f"file:{rel}", os.path.dirname(rel)), None


def _empty() -> Layer:
    return Layer(YamlDoc(data={}), "", "")
