"""Which server a batch goes to: least_loaded, hash (rendezvous) or round_robin.

Hash sharding is for prefix-cache affinity. A key's first home is chosen by
rendezvous (highest random weight) hashing over the live servers that serve
the job's model and task type, whether or not they have free slots now; the
key then stays on that server for as long as it is live, even when other
servers join (pure rendezvous would move some keys to a newcomer). When its
server leaves, the key is re-homed by rendezvous among those left. A task
whose server is full waits for it rather than going elsewhere.
The memory of homes is bounded; past the bound it is cleared, and keys fall
back to rendezvous, which gives the same home while the server set is unchanged.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from hashlib import blake2b

_MAX_KEYS = 1_000_000  # remembered homes; cleared beyond this


def rendezvous_score(server_id: str, shard_key: str) -> int:
    """A stable 64-bit weight (not Python's per-process salted hash())."""
    digest = blake2b(f"{server_id}\x00{shard_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_pick(server_ids: Sequence[str], shard_key: str) -> str:
    """The server with the highest weight for this key; ties broken by server id."""
    return max(server_ids, key=lambda sid: (rendezvous_score(sid, shard_key), sid))


class HashAffinity:
    """Sticky key -> server homes, per (model, task type) space, first placed by rendezvous."""

    __slots__ = ("_homes", "max_keys")

    def __init__(self, max_keys: int = _MAX_KEYS) -> None:
        self._homes: dict[tuple[str, str], str] = {}
        self.max_keys = max_keys

    def home(self, space: str, shard_key: str, live: Sequence[str], is_live: Container[str]) -> str:
        """The key's server among `live` (all the servers that can serve it now)."""
        k = (space, shard_key)
        sid = self._homes.get(k)
        if sid is not None and sid in is_live:
            return sid
        sid = rendezvous_pick(live, shard_key)
        if len(self._homes) >= self.max_keys:
            self._homes.clear()
        self._homes[k] = sid
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
