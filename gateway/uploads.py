"""An uploaded input file, received within the client's limits: receiving stops at the
first chunk past max_upload_bytes and the partial file is deleted, and the whole call
(the spec and every chunk) has upload_deadline_s, so a client trickling bytes cannot
hold a stream and a file forever.

A submitted job's file is also stored in the job store as it streams in, in pieces of
input_ops.PIECE_BYTES, so any replica can expand the job (stored_inputs.InputFiles
gives the expanding replica a file again); the local copy spares the receiving replica
reading its own upload back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO

from gateway.errors import DeadlineExceeded
from gateway.jobfile import JobFileError, Problem
from gateway.limits import Limits
from gateway.store import JobStore
from gateway.store.input_ops import PIECE_BYTES

log = logging.getLogger(__name__)


class Upload:
    """The input file of one call, written as its chunks arrive; `path` is None until the
    first chunk. With a store, the bytes are stored too, under `input_id`. The caller
    keeps it (`finish`) or deletes it (`discard`)."""

    def __init__(
        self,
        folder: Path,
        suffix: str,
        limits: Limits,
        store: JobStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.folder = folder
        self.suffix = suffix
        self.max_bytes = limits.max_upload_bytes
        self.store = store
        self.clock = clock
        self.input_id = uuid.uuid4().hex
        self.path: Path | None = None
        self.size = 0
        self._handle: IO[bytes] | None = None
        self._pending = bytearray()  # bytes not stored yet: less than a piece
        self._pieces = 0

    async def write(self, chunk: bytes, filename: str) -> None:
        """Appends a chunk; raises JobFileError naming inputs.file once the file would pass
        max_upload_bytes (nothing of that chunk is written)."""
        self.size += len(chunk)
        if self.size > self.max_bytes:
            message = (
                f"the uploaded input file is more than {self.max_bytes:,} bytes; at most"
                f" {self.max_bytes:,} (limit max_upload_bytes)"
            )
            raise JobFileError([Problem(message, filename, None, "inputs.file")])
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = self.folder / f"{self.input_id}{self.suffix}"
            self._handle = self.path.open("wb")
        await asyncio.to_thread(self._handle.write, chunk)
        if self.store is not None:
            self._pending += chunk
            while len(self._pending) >= PIECE_BYTES:
                await self._store_piece(bytes(self._pending[:PIECE_BYTES]))
                del self._pending[:PIECE_BYTES]

    async def _store_piece(self, data: bytes) -> None:
        assert self.store is not None and self.clock is not None
        await self.store.add_input_piece(self.input_id, self._pieces, data, self.clock())
        self._pieces += 1

    async def finish(self) -> None:
        """Every byte received is in the file (and in the store)."""
        if self.store is not None and self._pending:
            await self._store_piece(bytes(self._pending))
            self._pending.clear()
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    async def discard(self) -> None:
        """Deletes the file and its stored pieces; a store that fails here leaves pieces
        that the next start-up drops (input_ops.drop_stale)."""
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        if self.store is not None and self._pieces:
            try:
                await self.store.delete_input(self.input_id)
            except Exception:
                log.warning("the stored pieces of upload %s stay until a restart", self.input_id)
            self._pieces = 0


@contextlib.asynccontextmanager
async def upload_deadline(limits: Limits) -> AsyncIterator[None]:
    """Raises DeadlineExceeded naming upload_deadline_s when the block takes longer."""
    timeout = asyncio.timeout(limits.upload_deadline_s)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        raise DeadlineExceeded(
            f"the upload took longer than {limits.upload_deadline_s:g} s"
            " (limit upload_deadline_s): send the spec and the input file faster"
        ) from None
