"""Batch formation as plain function calls: no model, no event loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.inference.batching import (
    BatchLimits,
    batch_tokens,
    compat_key,
    form_batches,
    next_batch,
)
from services.inference.types import Params, TaskKind


@dataclass(eq=False)
class Item:
    name: str
    length: int
    enqueued_at: float = 0.0
    rows: int = 1
    new_tokens: int = 0
    key: Any = "k"


LIMITS = BatchLimits(max_batch_size=4, max_batch_tokens=1000, max_wait_s=0.010)


def names(batches: list[list[Item]]) -> list[list[str]]:
    return [[i.name for i in b] for b in batches]


# ---- compatibility keys ----


def test_greedy_tasks_share_a_key_whatever_their_sampling_settings() -> None:
    a = compat_key(TaskKind.GENERATE, "m", Params(seed=1, top_p=0.5), 16)
    b = compat_key(TaskKind.GENERATE, "m", Params(temperature=0.0, top_k=3), 16)
    assert a == b


def test_generate_and_chat_share_a_key() -> None:
    assert compat_key(TaskKind.GENERATE, "m", Params(), 16) == compat_key(
        TaskKind.CHAT, "m", Params(), 16
    )


def test_stop_strings_do_not_split_batches() -> None:
    assert compat_key(TaskKind.GENERATE, "m", Params(stop=("\n",)), 16) == compat_key(
        TaskKind.GENERATE, "m", Params(), 16
    )


def test_settings_that_one_generate_call_cannot_mix_split_keys() -> None:
    base = compat_key(TaskKind.GENERATE, "m", Params(), 16)
    assert compat_key(TaskKind.GENERATE, "m", Params(), 32) != base
    assert compat_key(TaskKind.GENERATE, "other", Params(), 16) != base
    assert compat_key(TaskKind.GENERATE, "m", Params(repetition_penalty=1.2), 16) != base
    assert compat_key(TaskKind.GENERATE, "m", Params(temperature=0.7), 16) != base
    hot = Params(temperature=0.7, seed=1)
    assert compat_key(TaskKind.GENERATE, "m", hot, 16) != compat_key(
        TaskKind.GENERATE, "m", Params(temperature=0.7, seed=2), 16
    )
    assert compat_key(TaskKind.GENERATE, "m", hot, 16) == compat_key(
        TaskKind.GENERATE, "m", Params(temperature=0.7, seed=1), 16
    )


def test_classify_and_score_share_forward_passes_and_embed_stays_apart() -> None:
    classify = compat_key(TaskKind.CLASSIFY, "m", Params(), 0)
    assert classify == compat_key(TaskKind.SCORE, "m", Params(max_new_tokens=5), 0)
    assert compat_key(TaskKind.EMBED, "m", Params(), 0) != classify
    assert compat_key(TaskKind.EMBED, "m", Params(), 0) != compat_key(
        TaskKind.GENERATE, "m", Params(), 0
    )


# ---- cutting batches ----


def test_batch_tokens_count_padding_rows_and_new_tokens() -> None:
    items = [Item("a", 3, new_tokens=10), Item("b", 7, new_tokens=10), Item("c", 5, rows=3)]
    assert batch_tokens(items) == 5 * (7 + 10)
    assert batch_tokens([]) == 0


def test_batches_hold_similar_lengths_and_respect_max_batch_size() -> None:
    items = [Item(str(n), n) for n in (50, 3, 40, 4, 41, 2, 39, 5, 1)]
    batches = form_batches(items, LIMITS)
    assert names(batches) == [["1", "2", "3", "4"], ["5", "39", "40", "41"], ["50"]]


def test_batches_respect_max_batch_tokens_counted_padded() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_tokens=100)
    items = [Item(str(n), n, new_tokens=10) for n in (10, 10, 10, 20, 30, 40)]
    batches = form_batches(items, limits)
    for batch in batches:
        assert len(batch) == 1 or batch_tokens(batch) <= 100
    # 4 x (10 + 10) = 80 fits, the 20-token prompt would make 4 x 30 = 120.
    assert names(batches)[0] == ["10", "10", "10"]
    assert sum(len(b) for b in batches) == 6


def test_classify_rows_count_against_the_token_budget() -> None:
    limits = BatchLimits(max_batch_size=32, max_batch_tokens=100)
    items = [Item("a", 10, rows=5), Item("b", 10, rows=5), Item("c", 10, rows=5)]
    assert names(form_batches(items, limits)) == [["a", "b"], ["c"]]


def test_an_item_over_the_token_budget_gets_a_batch_of_its_own() -> None:
    limits = BatchLimits(max_batch_size=8, max_batch_tokens=50)
    items = [Item("small", 5), Item("huge", 500), Item("small2", 6)]
    assert names(form_batches(items, limits)) == [["small", "small2"], ["huge"]]


def test_equal_lengths_keep_arrival_order() -> None:
    items = [Item(str(i), 8, enqueued_at=float(i)) for i in range(6)]
    assert names(form_batches(list(reversed(items)), LIMITS)) == [["0", "1", "2", "3"], ["4", "5"]]


# ---- when and what to run next ----


def test_a_small_group_waits_for_max_wait() -> None:
    groups = {"k": [Item("a", 5, enqueued_at=100.0)]}
    decision = next_batch(groups, LIMITS, now=100.004)
    assert decision.batch is None
    assert abs(decision.wake_at - 100.010) < 1e-9
    decision = next_batch(groups, LIMITS, now=100.010)
    assert decision.batch is not None and names([decision.batch]) == [["a"]]


def test_a_full_group_runs_at_once() -> None:
    groups = {"k": [Item(str(i), 5, enqueued_at=100.0) for i in range(4)]}
    decision = next_batch(groups, LIMITS, now=100.0)
    assert decision.batch is not None and len(decision.batch) == 4


def test_a_group_over_the_token_budget_runs_at_once() -> None:
    groups = {"k": [Item("a", 600, enqueued_at=100.0), Item("b", 600, enqueued_at=100.0)]}
    decision = next_batch(groups, LIMITS, now=100.0)
    assert decision.batch is not None and names([decision.batch]) == [["a"]]


def test_flush_runs_what_is_there_without_waiting() -> None:
    groups = {"k": [Item("a", 5, enqueued_at=100.0)]}
    assert next_batch(groups, LIMITS, now=100.0, flush=True).batch is not None


def test_the_group_with_the_oldest_task_goes_first_and_groups_never_mix() -> None:
    groups = {
        "new": [Item(f"n{i}", 5, enqueued_at=50.0, key="new") for i in range(4)],
        "old": [Item("o", 5, enqueued_at=10.0, key="old")],
    }
    decision = next_batch(groups, LIMITS, now=50.0)
    assert decision.batch is not None and names([decision.batch]) == [["o"]]


def test_the_oldest_task_is_never_starved_by_shorter_newcomers() -> None:
    long_old = Item("old", 90, enqueued_at=1.0)
    short_new = [Item(f"s{i}", 2, enqueued_at=2.0 + i) for i in range(10)]
    decision = next_batch({"k": [long_old, *short_new]}, LIMITS, now=3.0)
    assert decision.batch is not None
    assert long_old in decision.batch


def test_the_wake_time_is_the_earliest_deadline_over_groups() -> None:
    groups = {
        "a": [Item("a", 5, enqueued_at=10.003, key="a")],
        "b": [Item("b", 5, enqueued_at=10.001, key="b")],
    }
    decision = next_batch(groups, LIMITS, now=10.005)
    assert decision.batch is None and abs(decision.wake_at - 10.011) < 1e-9


def test_nothing_queued_means_nothing_to_run_and_no_timer() -> None:
    decision = next_batch({}, LIMITS, now=1.0)
    assert decision.batch is None and decision.wake_at is None


# ---- properties ----

lengths = st.lists(
    st.tuples(st.integers(1, 300), st.integers(1, 4), st.integers(0, 64)), min_size=1, max_size=80
)


@given(lengths, st.integers(1, 16), st.integers(16, 4000))
def test_every_item_lands_in_exactly_one_batch_within_the_limits(
    specs: list[tuple[int, int, int]], size: int, budget: int
) -> None:
    new_tokens = specs[0][2]  # one compatibility group: same new tokens
    items = [Item(str(i), n, rows=r, new_tokens=new_tokens) for i, (n, r, _) in enumerate(specs)]
    limits = BatchLimits(max_batch_size=size, max_batch_tokens=budget)
    batches = form_batches(items, limits)
    flat = [i for b in batches for i in b]
    assert sorted(i.name for i in flat) == sorted(i.name for i in items)
    assert [i.length for i in flat] == sorted(i.length for i in items)
    for batch in batches:
        assert 1 <= len(batch) <= size
        assert len(batch) == 1 or batch_tokens(batch) <= budget


@given(lengths, st.integers(1, 16), st.integers(16, 4000))
def test_next_batch_always_holds_the_oldest_task(
    specs: list[tuple[int, int, int]], size: int, budget: int
) -> None:
    items = [Item(str(i), n, enqueued_at=float(i)) for i, (n, _, _) in enumerate(specs)]
    limits = BatchLimits(max_batch_size=size, max_batch_tokens=budget, max_wait_s=0.0)
    decision = next_batch({"k": items}, limits, now=1000.0)
    assert decision.batch is not None and items[0] in decision.batch
