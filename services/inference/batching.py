"""Batch formation as pure policy: which queued tasks go into the next model call.

No I/O, no clock reads: callers pass `now`. Tasks are grouped by a compatibility key
(tasks whose parameters cannot share one model call never meet), sorted by length so
that a batch holds prompts of similar length (little padding), and cut under
max_batch_size and max_batch_tokens, where a batch costs
rows x (longest row + new tokens), i.e. counted as padded.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol, TypeVar

from services.inference.types import Params, TaskKind


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_wait_s: float = 0.010


class BatchItem(Protocol):
    """What batch formation needs to know about a queued task (InferTask has it all)."""

    @property
    def key(self) -> Hashable: ...
    @property
    def length(self) -> int: ...
    @property
    def rows(self) -> int: ...
    @property
    def new_tokens(self) -> int: ...
    @property
    def enqueued_at(self) -> float: ...


T = TypeVar("T", bound=BatchItem)


def compat_key(kind: int, model: str, params: Params, max_new_tokens: int) -> tuple[Any, ...]:
    """Tasks with equal keys can share one model call.

    Generate and chat share generate() calls when every setting generate() takes for the
    whole batch is equal; sampling settings only matter when sampling. Stop strings are
    applied per task after decoding, so they do not split batches. Classify and score both
    need the log-likelihood of a continuation and share forward passes; embed has its own.
    """
    if kind in (TaskKind.GENERATE, TaskKind.CHAT):
        if params.greedy:
            sampling: tuple[Any, ...] = ("greedy",)
        else:
            sampling = ("sample", params.temperature, params.top_p, params.top_k, params.seed)
        return ("generate", model, max_new_tokens, params.repetition_penalty, *sampling)
    if kind in (TaskKind.CLASSIFY, TaskKind.SCORE):
        return ("loglik", model)
    return ("embed", model)


def batch_tokens(items: Sequence[BatchItem]) -> int:
    """Tokens a batch of these items costs, padded: rows x (longest row + new tokens)."""
    if not items:
        return 0
    rows = sum(i.rows for i in items)
    return rows * (max(i.length for i in items) + max(i.new_tokens for i in items))


def form_batches(items: Sequence[T], limits: BatchLimits, until: Any = None) -> list[list[T]]:
    """Cut compatible items, sorted by length, into consecutive batches under the limits.

    An item too large for max_batch_tokens on its own still gets a batch of its own
    (its length was checked against the model's context when it was queued). With
    `until`, stop after the batch that holds that item.
    """
    ordered = sorted(items, key=_by_length)
    batches: list[list[T]] = []
    current: list[T] = []
    rows = 0
    found = False
    size, budget = limits.max_batch_size, limits.max_batch_tokens
    for item in ordered:
        # Sorted ascending, so the item is the batch's longest row if it joins.
        if current and (
            len(current) >= size or (rows + item.rows) * (item.length + item.new_tokens) > budget
        ):
            batches.append(current)
            if found:
                return batches
            current, rows = [], 0
        current.append(item)
        rows += item.rows
        found = found or item is until
    if current:
        batches.append(current)
    return batches


_by_length = attrgetter("length", "enqueued_at")


@dataclass
class Decision:
    """The next batch to run, or none yet and when to look again (None: on the next arrival)."""

    batch: list[Any] | None = None
    wake_at: float | None = None


def is_full(items: Sequence[BatchItem], limits: BatchLimits) -> bool:
    """Whether waiting longer cannot make the first batch of these items any bigger."""
    return len(items) >= limits.max_batch_size or batch_tokens(items) >= limits.max_batch_tokens


def next_batch(
    groups: Mapping[Hashable, Sequence[T]], limits: BatchLimits, now: float, flush: bool = False
) -> Decision:
    """Pick the next batch from queued tasks grouped by compatibility key (arrival order).

    A group is ready when it can fill a batch, when its oldest task has waited
    max_wait_s, or when `flush` is set (draining). Among ready groups the one holding the
    oldest task runs, and of its batches the one holding that task, so nothing starves.
    """
    best: Sequence[T] | None = None
    wake_at: float | None = None
    for items in groups.values():
        if not items:
            continue
        oldest = items[0].enqueued_at
        ready = flush or now - oldest >= limits.max_wait_s or is_full(items, limits)
        if ready:
            if best is None or oldest < best[0].enqueued_at:
                best = items
        else:
            deadline = oldest + limits.max_wait_s
            wake_at = deadline if wake_at is None else min(wake_at, deadline)
    if best is None:
        return Decision(None, wake_at)
    # The oldest task's batch: the last one formed when formation stops after it.
    return Decision(form_batches(best, limits, until=best[0])[-1], None)
