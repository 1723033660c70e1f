"""The Jinja2 environment of job templates: an immutable sandbox that also bounds
what one rendering may cost.

Jinja's sandbox stops a template from reaching Python internals, not from
building a 4 GB string or looping 10^10 times. Here every operator and call that
can grow a value is checked against Limits before it runs: `*`, `**`, `+` and
`%` (intercepted, which also keeps Jinja from folding them at compile time),
`~` and buffered output (block set, macros, filter blocks), string methods and
filters that take a width or a count, `range`, and the iterations of every
`{% for %}`. A breach raises TemplateLimitError naming the limit.
"""

from __future__ import annotations

import functools
import re
import string
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import (
    do_batch,
    do_center,
    do_format,
    do_indent,
    do_replace,
    do_tojson,
    do_wordwrap,
    sync_do_join,
    sync_do_slice,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_environment, pass_eval_context

from gateway.limits import Limits


class TemplateLimitError(Exception):
    """A template tried something past one of the Limits; the message names the limit."""


_LOOP_GUARD = "_loop_guard"  # the filter every {% for %} iterable goes through


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every `~` checked and all output counted, including
    what goes into the buffers of {% set %} blocks, macros and filter blocks."""

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.count_output({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write("environment.count_output(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_text((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Budget(threading.local):
    """What the rendering in progress on this thread has spent."""

    iterations = 0
    written = 0


_BUDGET = _Budget()
OUTPUT_FACTOR = 4  # all text one rendering writes (buffers too), in units of max_prompt_bytes
_PERCENT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def start_rendering() -> None:
    """Resets this thread's budget: called before each template renders a row."""
    _BUDGET.iterations = 0
    _BUDGET.written = 0


class GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with strict undefined variables and the costs of Limits."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: Limits) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, optimized=False)
        self.limits = limits
        self.concat = self.join_text  # type: ignore[method-assign]  # buffers of set/macro/filter
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs
        self.globals["range"] = self._range
        self.filters.update(_guarded_filters(self))
        self.filters[_LOOP_GUARD] = self.guard_loop

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The parsed template, with every {% for %} iterable put through the loop guard."""
        ast = super()._parse(source, name, filename)
        for loop in ast.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _LOOP_GUARD, [], [], None, None)
            loop.iter.set_lineno(loop.lineno)
            loop.iter.set_environment(self)
        return ast

    # ---------------------------------------------------------------- sizes

    def check_text(self, length: int, what: str) -> None:
        if length > self.limits.max_prompt_bytes:
            raise TemplateLimitError(
                f"{what} would be {length:,} characters, over {self.limits.max_prompt_bytes:,}"
                " (limit max_prompt_bytes)"
            )

    def check_width(self, width: Any, what: str) -> None:
        if _is_int(width) and abs(width) > self.limits.max_format_width:
            raise TemplateLimitError(
                f"{what} {width} is over {self.limits.max_format_width} (limit max_format_width)"
            )

    def check_count(self, count: Any, what: str) -> None:
        if isinstance(count, int) and count > self.limits.max_loop_iterations:
            raise TemplateLimitError(
                f"{what} {count:,} is over {self.limits.max_loop_iterations:,}"
                " (limit max_loop_iterations)"
            )

    # ---------------------------------------------------- hooks of the code

    def guard_loop(self, iterable: Any) -> Iterator[Any]:
        cap = self.limits.max_loop_iterations
        for item in iterable:
            _BUDGET.iterations += 1
            if _BUDGET.iterations > cap:
                raise TemplateLimitError(
                    f"loops ran more than {cap:,} iterations (limit max_loop_iterations)"
                )
            yield item

    def count_output(self, text: str) -> str:
        """Every piece of output passes here; all of it may be OUTPUT_FACTOR x the cap."""
        _BUDGET.written += len(text)
        cap = self.limits.max_prompt_bytes * OUTPUT_FACTOR
        if _BUDGET.written > cap:
            raise TemplateLimitError(
                f"wrote more than {cap:,} characters, {{% set %}} blocks and macros included"
                f" ({OUTPUT_FACTOR} x limit max_prompt_bytes)"
            )
        return text

    def join_text(self, pieces: Iterable[Any]) -> str:
        parts = [p if isinstance(p, str) else str(p) for p in pieces]
        self.check_text(sum(map(len, parts)), "joined text")
        return "".join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            self._check_power(left, right)
        elif operator == "*":
            self._check_product(left, right)
        elif operator == "+":
            self._check_sum(left, right)
        elif operator == "%" and isinstance(left, str):
            self.check_percent_format(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name in _WIDTH_METHODS:
                for value in (*args, *kwargs.values()):
                    __self.check_width(value, f"{name}() width")
            elif name == "replace" and len(args) >= 2:
                __self._check_replace(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
            elif name == "join" and args:
                __self._check_join(owner, args[0])
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        self.check_brace_format(value.__self__)
        return wrapper

    # ----------------------------------------------------------- the checks

    def _range(self, *args: int) -> range:
        items = range(*args)
        if len(items) > self.limits.max_range:
            raise TemplateLimitError(
                f"range() of {len(items):,} items is over {self.limits.max_range:,}"
                " (limit max_range)"
            )
        return items

    def _check_power(self, base: Any, exponent: Any) -> None:
        if not (_is_int(base) and _is_int(exponent)) or exponent < 0 or abs(base) <= 1:
            return  # floats overflow with an error instead of growing
        bits = base.bit_length() * exponent
        if bits > self.limits.max_int_bits:
            raise TemplateLimitError(
                f"{_short(base)} ** {_short(exponent)} would have about {bits:,} bits,"
                f" over {self.limits.max_int_bits:,} (limit max_int_bits)"
            )

    def _check_product(self, left: Any, right: Any) -> None:
        if _is_int(left) and _is_int(right):
            bits = left.bit_length() + right.bit_length()
            if bits > self.limits.max_int_bits:
                raise TemplateLimitError(
                    f"a product of about {bits:,} bits is over {self.limits.max_int_bits:,}"
                    " (limit max_int_bits)"
                )
            return
        sequence, times = (left, right) if _is_int(right) else (right, left)
        if _is_int(times) and hasattr(sequence, "__len__"):
            self._check_sequence(len(sequence) * max(times, 0), sequence)

    def _check_sum(self, left: Any, right: Any) -> None:
        if hasattr(left, "__len__") and hasattr(right, "__len__") and type(left) is type(right):
            self._check_sequence(len(left) + len(right), left)

    def _check_sequence(self, length: int, sample: Any) -> None:
        if isinstance(sample, str):
            self.check_text(length, "a string")
        elif length > self.limits.max_loop_iterations:
            raise TemplateLimitError(
                f"a list of {length:,} items is over {self.limits.max_loop_iterations:,}"
                " (limit max_loop_iterations)"
            )

    def _check_replace(self, text: str, old: Any, new: Any, count: Any) -> None:
        if not isinstance(old, str) or not isinstance(new, str):
            return
        hits = len(text) + 1 if not old else len(text) // len(old)
        if _is_int(count) and count >= 0:
            hits = min(hits, count)
        self.check_text(len(text) + hits * len(new), "replace()")

    def _check_join(self, separator: str, items: Any) -> None:
        if separator and hasattr(items, "__len__"):
            self.check_text(len(separator) * len(items), "join()")

    def check_percent_format(self, template: str) -> None:
        for match in _PERCENT.finditer(template):
            for number in match.groups():
                if number == "*":
                    raise TemplateLimitError("a '*' width in a % format is not allowed")
                if number:
                    self.check_width(int(number), "a % format width")

    def check_brace_format(self, template: str) -> None:
        try:
            fields = list(string.Formatter().parse(template))
        except ValueError:
            return  # str.format raises the same error when called
        for _, _, spec, _ in fields:
            if spec and "{" in spec:
                raise TemplateLimitError("a nested {...} width in str.format is not allowed")
            for number in re.findall(r"\d+", spec or ""):
                self.check_width(int(number), "a str.format width")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(number: int) -> str:
    return str(number) if number.bit_length() < 64 else f"a {number.bit_length()}-bit number"


def _guarded_filters(env: GuardedEnvironment) -> dict[str, Callable[..., Any]]:
    """The filters that take a width or a count, checked before they run."""

    def center(value: Any, width: int = 80) -> str:
        env.check_width(width, "center width")
        return do_center(value, width)

    def indent(s: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        env.check_width(width, "indent width")
        if isinstance(width, str):
            env.check_text((str(s).count("\n") + 1) * len(width) + len(str(s)), "indent()")
        return do_indent(s, width, first, blank)

    def format_(value: str, *args: Any, **kwargs: Any) -> str:
        env.check_percent_format(str(value))
        return do_format(value, *args, **kwargs)

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        env.check_count(linecount, "batch size")
        return do_batch(value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        env.check_count(slices, "slice count")
        return sync_do_slice(value, slices, fill_with)

    @pass_eval_context
    def replace(eval_ctx: Any, s: str, old: str, new: str, count: int | None = None) -> str:
        env._check_replace(str(s), old, new, -1 if count is None else count)
        return do_replace(eval_ctx, s, old, new, count)

    @pass_eval_context
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> str:
        items = value if hasattr(value, "__len__") else list(value)
        env._check_join(str(d), items)
        return sync_do_join(eval_ctx, items, d, attribute)

    @pass_environment
    def wordwrap(environment: Any, s: str, width: int = 79, *args: Any, **kwargs: Any) -> str:
        wrapstring = kwargs.get("wrapstring") or (args[1] if len(args) > 1 else None) or "\n"
        lines = len(str(s)) // max(width, 1) + 1 if _is_int(width) else 1
        env.check_text(len(str(s)) + lines * len(str(wrapstring)), "wordwrap()")
        return do_wordwrap(environment, s, width, *args, **kwargs)

    @pass_eval_context
    def tojson(eval_ctx: Any, value: Any, indent: int | None = None) -> Any:
        env.check_width(indent, "tojson indent")
        return do_tojson(eval_ctx, value, indent)

    return {
        "center": center,
        "indent": indent,
        "format": format_,
        "batch": batch,
        "slice": slice_,
        "replace": replace,
        "join": join,
        "wordwrap": wordwrap,
        "tojson": tojson,
    }


@functools.lru_cache(maxsize=8)
def environment_for(limits: Limits) -> GuardedEnvironment:
    """One environment per set of limits (templates compiled in it keep them)."""
    return GuardedEnvironment(limits)
