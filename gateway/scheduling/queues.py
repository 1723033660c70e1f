"""The queue of one job: earliest deadline first, FIFO among equal deadlines (tasks
pushed to the front go ahead of those of their deadline).

It stays a plain deque while deadlines arrive in non-decreasing order (the
usual case: one deadline per job, or none) and turns into a heap the first
time one arrives out of order (say a retried task with an earlier deadline).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable

from gateway.scheduling.data import QueuedTask

# (deadline or inf, arrival seq, enqueued at, task): tuples order by EDF then FIFO.
Entry = tuple[float, int, float, QueuedTask]


class JobQueue:
    """EDF queue with O(1) push/pop in deque mode and O(log n) in heap mode."""

    __slots__ = ("_entries", "_front", "_heap_mode", "_seq")

    def __init__(self) -> None:
        self._entries: deque[Entry] | list[Entry] = deque()
        self._heap_mode = False
        self._seq = 0
        self._front = 0  # seqs of tasks pushed to the front count down from it

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, tasks: Iterable[QueuedTask], now: float) -> int:
        """Queue tasks; returns how many were added."""
        added = 0
        for task in tasks:
            dkey = math.inf if task.deadline is None else task.deadline
            entry = (dkey, self._seq, now, task)
            self._seq += 1
            added += 1
            if not self._heap_mode and self._entries and dkey < self._entries[-1][0]:
                self._to_heap()
            if self._heap_mode:
                heapq.heappush(self._entries, entry)  # type: ignore[arg-type]
            else:
                self._entries.append(entry)  # type: ignore[union-attr]
        return added

    def push_front(self, tasks: Iterable[QueuedTask], now: float) -> int:
        """Queue tasks ahead of every queued one of the same deadline, in their order
        (tasks a dead gateway replica held: they were due before anything queued here)."""
        batch = list(tasks)
        for task in reversed(batch):
            dkey = math.inf if task.deadline is None else task.deadline
            self._front -= 1
            entry = (dkey, self._front, now, task)
            if not self._heap_mode and self._entries and dkey > self._entries[0][0]:
                self._to_heap()
            if self._heap_mode:
                heapq.heappush(self._entries, entry)  # type: ignore[arg-type]
            else:
                self._entries.appendleft(entry)  # type: ignore[union-attr]
        return len(batch)

    def _to_heap(self) -> None:
        entries = list(self._entries)
        heapq.heapify(entries)
        self._entries = entries
        self._heap_mode = True

    def head(self) -> Entry:
        return self._entries[0]

    def pop(self) -> Entry:
        if self._heap_mode:
            return heapq.heappop(self._entries)  # type: ignore[arg-type]
        return self._entries.popleft()  # type: ignore[union-attr]

    def unpop(self, entries: list[Entry]) -> None:
        """Put back entries just popped, in the order they were popped."""
        if self._heap_mode:
            for entry in entries:
                heapq.heappush(self._entries, entry)  # type: ignore[arg-type]
        else:
            self._entries.extendleft(reversed(entries))  # type: ignore[union-attr]

    def pop_expired(self, now: float) -> list[int]:
        """Remove and return the keys of tasks whose deadline is <= now."""
        keys = []
        while self._entries and self._entries[0][0] <= now:
            keys.append(self.pop()[3].key)
        return keys

    def drain(self) -> list[int]:
        """Remove everything; returns the keys in queue order."""
        return [self.pop()[3].key for _ in range(len(self._entries))]
