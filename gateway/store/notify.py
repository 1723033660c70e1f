"""PostgreSQL LISTEN/NOTIFY between gateway replicas.

A transaction that changes a job's row (state, priority, expansion) or records results
of it sends NOTIFY with the job id; PostgreSQL delivers it at commit, to every replica's
one listening connection, so a pause made through one replica stops the others' dispatch
and a result recorded by one wakes the others' StreamResults at once. Nothing relies on
a notification: one sent while a listener was reconnecting is lost, so every replica
still polls the store (slower), and a listener that reconnects asks for a full sync.
SQLite has one gateway: nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import asyncpg
import sqlalchemy as sa

log = logging.getLogger("gateway.store.notify")

JOBS = "jobs"  # a job's row changed
RESULTS = "results"  # results of a job were recorded
_NOTIFY = sa.text("SELECT pg_notify(:channel, :job_id)")
PING_S = 5.0  # a connection cut off without a word is noticed by a query that fails
MAX_BACKOFF_S = 5.0


def channel(kind: str, schema: str | None) -> str:
    """Replicas on one database (and schema) share a channel; tests' schemas do not."""
    return f"batchinfer_{kind}" if schema is None else f"batchinfer_{kind}_{schema}"


def notify(conn: sa.Connection, kind: str, job_id: str, schema: str | None) -> None:
    """Inside the caller's transaction: delivered when it commits, not if it rolls back
    (and PostgreSQL folds repeats of one payload within a transaction)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": channel(kind, schema), "job_id": job_id})


class Listener:
    """One asyncpg connection LISTENing on both channels, reconnecting with backoff.

    on_notice(kind, job_id) runs for each notification; on_connect() after each
    (re)connection, when the notifications missed meanwhile can be made up for."""

    def __init__(
        self,
        dsn: str,
        schema: str | None,
        name: str,
        on_notice: Callable[[str, str], None],
        on_connect: Callable[[], None],
    ) -> None:
        self.dsn = dsn
        self.name = name  # application_name: how an operator (or a test) finds it
        self._channels = {channel(kind, schema): kind for kind in (JOBS, RESULTS)}
        self._on_notice = on_notice
        self._on_connect = on_connect
        self.connected = asyncio.Event()

    async def run_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
                backoff = 0.1  # it was up: the next loss starts the backoff over
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("listening for the store's notifications failed: %r", exc)
            self.connected.clear()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(
            self.dsn, timeout=10, server_settings={"application_name": self.name}
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            for name in self._channels:
                await conn.add_listener(name, self._received)
            self.connected.set()
            self._on_connect()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), PING_S)
                if not lost.is_set():
                    await asyncio.wait_for(conn.execute("SELECT 1"), PING_S)
            log.warning("the store's notification connection was closed; reconnecting")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)

    def _received(self, _conn: object, _pid: int, channel_name: str, job_id: str) -> None:
        kind = self._channels.get(channel_name)
        if kind is not None:
            self._on_notice(kind, job_id)


class JobSignals:
    """Wake-ups by job id for those who wait on a job this replica does not drive (a
    WatchJob or StreamResults of a job another replica accepted)."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Event, list[int]]] = {}

    def fire(self, job_id: str) -> None:
        entry = self._waiting.pop(job_id, None)
        if entry is not None:
            entry[0].set()

    async def wait(self, job_id: str, timeout: float) -> None:
        """Until the job's next notification, or timeout (the poll it replaces)."""
        entry = self._waiting.get(job_id)
        if entry is None:
            entry = self._waiting[job_id] = (asyncio.Event(), [0])
        entry[1][0] += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry[0].wait(), timeout)
        finally:
            entry[1][0] -= 1
            if not entry[1][0] and self._waiting.get(job_id) is entry:
                del self._waiting[job_id]  # no waiter left: no entry kept per job ever watched
