"""Which server a batch goes to: least_loaded, hash (rendezvous) or round_robin.

Hash sharding uses rendezvous (highest random weight) hashing over the live
servers that serve the job's model and task type, whether or not they have
free slots right now. A task whose server is full waits for it rather than
going elsewhere: prefix-cache affinity is the point of choosing `hash`.
When a server leaves, only its keys move; when one joins, only the keys it
now wins move to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

_MAX_CACHED_KEYS = 200_000  # per server set; the cache is cleared beyond this


def rendezvous_score(server_id: str, shard_key: str) -> int:
    """A stable 64-bit weight (not Python's per-process salted hash())."""
    digest = blake2b(f"{server_id}\x00{shard_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_pick(server_ids: Sequence[str], shard_key: str) -> str:
    """The server with the highest weight for this key; ties broken by server id."""
    return max(server_ids, key=lambda sid: (rendezvous_score(sid, shard_key), sid))


class RendezvousCache:
    """Memoises key -> server for each set of live servers, since keys repeat a lot."""

    __slots__ = ("_maps",)

    def __init__(self) -> None:
        self._maps: dict[tuple[str, ...], dict[str, str]] = {}

    def lookup(self, server_ids: tuple[str, ...], shard_key: str) -> str:
        mapping = self._maps.get(server_ids)
        if mapping is None:
            if len(self._maps) > 64:  # server sets come and go; keep only recent ones
                self._maps.clear()
            mapping = self._maps[server_ids] = {}
        sid = mapping.get(shard_key)
        if sid is None:
            if len(mapping) >= _MAX_CACHED_KEYS:
                mapping.clear()
            sid = mapping[shard_key] = rendezvous_pick(server_ids, shard_key)
        return sid


def least_loaded(candidates: Sequence[int], free: list[int], load: list[int]) -> int | None:
    """Index of the candidate server with free slots and the fewest outstanding tokens."""
    best, best_load = None, 0
    for i in candidates:
        if free[i] > 0 and (best is None or load[i] < best_load):
            best, best_load = i, load[i]
    return best


def round_robin(candidates: Sequence[int], free: list[int], turn: int) -> int | None:
    """Position in `candidates` of the first one with free slots, starting at position `turn`."""
    n = len(candidates)
    for step in range(n):
        pos = (turn + step) % n
        if free[candidates[pos]] > 0:
            return pos
    return None
