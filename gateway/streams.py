"""What one client connection may hold at the gateway: a number of open streams per
gRPC peer, and a window in bytes per stream, so that streams a client opens and never
reads cost a bounded amount, however many it tries to open."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from gateway.errors import ResourceExhausted
from gateway.limits import Limits


def transport_options(limits: Limits) -> list[tuple[str, int]]:
    """The gateway's HTTP/2 windows: a fixed read-ahead per stream. With BDP probing on,
    gRPC grew them to tens of MB for a client pushing data the gateway was not reading (16
    unread Execute streams of 1 MB tasks: 830 MB of RSS, 360 MB with these)."""
    return [
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", limits.stream_read_ahead_bytes),
    ]


class PeerStreams:
    """Open streams per peer (`context.peer()`: one client connection), at most `cap`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, peer: str) -> Iterator[None]:
        """One stream of `peer` while the block runs; raises ResourceExhausted past the cap."""
        if self.open[peer] >= self.cap:
            raise ResourceExhausted(
                f"this connection already has {self.open[peer]} streams open; at most"
                f" {self.cap} (limit max_streams_per_peer): finish or cancel one first"
            )
        self.open[peer] += 1
        try:
            yield
        finally:
            self.open[peer] -= 1
            if self.open[peer] <= 0:
                del self.open[peer]


class ByteWindow:
    """Bytes a stream holds for its client. `acquire` waits while the window is full; an
    item larger than the whole window goes alone, once the window is empty."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._freed = asyncio.Event()

    def fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.cap

    async def acquire(self, size: int) -> None:
        while not self.fits(size):
            self._freed.clear()
            await self._freed.wait()
        self.used += size

    def take(self, size: int) -> None:
        """Counts bytes that arrived whether or not they fit (a result of a task in flight)."""
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self._freed.set()


def one_stream(method: Callable[..., Any]) -> Callable[..., Any]:
    """A servicer method that counts as one stream of its caller's connection while it
    runs (the servicer's `streams`, a PeerStreams); under `rpc_errors`, which maps the
    refusal."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self.streams.hold(context.peer()):
                async with contextlib.aclosing(method(self, request, context)) as responses:
                    async for response in responses:
                        yield response

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        with self.streams.hold(context.peer()):
            return await method(self, request, context)

    return unary
