"""Small builders for hand-built scheduler state."""

from __future__ import annotations

from itertools import count

from gateway.scheduling import Dispatch, JobPolicy, QueuedTask, ServerState

MODEL, TASK = "m", "chat"
_keys = count()


def server(
    sid: str, free: int = 1000, load: int = 0, models: tuple[str, ...] = (MODEL,)
) -> ServerState:
    return ServerState(sid, free, load, frozenset(models), frozenset({TASK}))


def job(job_id: str, tenant: str = "t", priority: int = 5, **kw: object) -> JobPolicy:
    return JobPolicy(job_id, tenant, priority, MODEL, TASK, **kw)  # type: ignore[arg-type]


def tasks(
    n: int, tokens: int = 10, deadline: float | None = None, shard_key: str | None = None
) -> list[QueuedTask]:
    return [QueuedTask(next(_keys), tokens, deadline, shard_key) for _ in range(n)]


def sent(dispatches: list[Dispatch], job_id: str | None = None) -> int:
    return sum(len(d.keys) for d in dispatches if job_id is None or d.job_id == job_id)
