from __future__ import annotations

from gateway.scheduling import QueuedTask
from gateway.scheduling.queues import JobQueue


def _keys(q: JobQueue) -> list[int]:
    return [q.pop()[3].key for _ in range(len(q))]


def test_fifo_when_no_deadlines() -> None:
    q = JobQueue()
    q.push([QueuedTask(k, 1) for k in range(5)], 0.0)
    assert _keys(q) == [0, 1, 2, 3, 4]


def test_earliest_deadline_first_with_fifo_ties_after_out_of_order_arrival() -> None:
    q = JobQueue()
    q.push([QueuedTask(1, 1, 50.0), QueuedTask(2, 1, 50.0), QueuedTask(3, 1, None)], 0.0)
    q.push([QueuedTask(4, 1, 10.0), QueuedTask(5, 1, 50.0)], 1.0)  # earlier deadline: heap mode
    assert _keys(q) == [4, 1, 2, 5, 3]


def test_unpop_restores_order_in_both_modes() -> None:
    for deadlines in ([None, None, None], [30.0, 20.0, 10.0]):
        q = JobQueue()
        q.push([QueuedTask(k, 1, d) for k, d in enumerate(deadlines)], 0.0)
        before = [e[3].key for e in sorted(q._entries)]
        popped = [q.pop(), q.pop()]
        q.unpop(popped)
        assert _keys(q) == before


def test_pop_expired_takes_only_due_tasks() -> None:
    q = JobQueue()
    q.push([QueuedTask(1, 1, 5.0), QueuedTask(2, 1, 9.0), QueuedTask(3, 1, None)], 0.0)
    assert q.pop_expired(5.0) == [1]
    assert q.pop_expired(8.0) == []
    assert q.pop_expired(1e9) == [2]
    assert len(q) == 1
    assert q.drain() == [3]


def test_push_front_goes_ahead_of_its_deadline_in_order_in_both_modes() -> None:
    q = JobQueue()
    q.push([QueuedTask(1, 1), QueuedTask(2, 1)], 0.0)
    q.push_front([QueuedTask(7, 1), QueuedTask(8, 1)], 1.0)
    q.push_front([QueuedTask(6, 1)], 2.0)
    assert _keys(q) == [6, 7, 8, 1, 2]
    # A later deadline than the head's cannot go first in a deque: heap mode, same rule.
    q.push([QueuedTask(1, 1, 10.0), QueuedTask(2, 1, 10.0), QueuedTask(3, 1, None)], 0.0)
    q.push_front([QueuedTask(7, 1, None), QueuedTask(8, 1, 10.0)], 1.0)
    assert _keys(q) == [8, 1, 2, 7, 3]
