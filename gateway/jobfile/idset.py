"""A compact set of task ids: 8-byte hashes in an open-addressing table.

A million ids take 16 MiB instead of the ~100 MiB of a set of strings.
A hit may be a hash collision, so the caller confirms it by re-reading.
"""

from __future__ import annotations

import hashlib
from array import array


def id_hash(task_id: str) -> int:
    """A non-zero 64-bit hash of an id (0 marks an empty slot)."""
    digest = hashlib.blake2b(task_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class IdHashSet:
    """Insert-only set of non-zero 64-bit ints, kept at most half full."""

    def __init__(self, capacity: int = 1024) -> None:
        size = 1
        while size < capacity * 2:
            size *= 2
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, h: int) -> bool:
        """Add `h`; False when it was already there."""
        table, mask = self._table, self._mask
        i = h & mask
        while (v := table[i]) != 0:
            if v == h:
                return False
            i = (i + 1) & mask
        table[i] = h
        self._count += 1
        if self._count * 2 > mask:
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(8 * len(old) * 2))
        self._mask = len(self._table) - 1
        self._count = 0
        for v in old:
            if v:
                self.add(v)
