"""Weighted fair queuing between tenants, in tokens.

Each tenant has one virtual time: the tokens it was charged divided by its
weight. The scheduler serves the tenant with the smallest virtual time among
those at the best effective priority level. A tenant that comes back from
idle starts at no less than the smallest virtual time of the active tenants,
so idleness banks no credit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def charge_units(tokens: int, n_tasks: int) -> int:
    """What a batch costs: its tokens, but at least one per task (0-token tasks are not free)."""
    return max(tokens, n_tasks)


class FairShare:
    """Virtual times per tenant; weights from the gateway's configuration (unknown -> 1.0)."""

    __slots__ = ("_weights", "vtime")

    def __init__(self, weights: Mapping[str, float]) -> None:
        self._weights = dict(weights)
        self.vtime: dict[str, float] = {}

    def weight(self, tenant: str) -> float:
        return self._weights.get(tenant, 1.0)

    def ensure(self, tenant: str) -> None:
        self.vtime.setdefault(tenant, 0.0)

    def activate(self, tenant: str, active: Iterable[str]) -> None:
        """Bring a tenant that was idle up to the smallest virtual time of the active ones."""
        floor = min((self.vtime[t] for t in active if t != tenant), default=None)
        own = self.vtime.get(tenant, 0.0)
        self.vtime[tenant] = own if floor is None else max(own, floor)

    def charge(self, tenant: str, units: float) -> None:
        self.vtime[tenant] += units / self.weight(tenant)
