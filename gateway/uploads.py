"""An uploaded input file, received within the client's limits: receiving stops at the
first chunk past max_upload_bytes and the partial file is deleted, and the whole call
(the spec and every chunk) has upload_deadline_s, so a client trickling bytes cannot
hold a stream and a file forever."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from gateway.errors import DeadlineExceeded
from gateway.jobfile import JobFileError, Problem
from gateway.limits import Limits


class Upload:
    """The input file of one call, written as its chunks arrive; `path` is None until the
    first chunk. The caller keeps it (`close`) or deletes it (`discard`)."""

    def __init__(self, folder: Path, suffix: str, limits: Limits) -> None:
        self.folder = folder
        self.suffix = suffix
        self.max_bytes = limits.max_upload_bytes
        self.path: Path | None = None
        self.size = 0
        self._handle: IO[bytes] | None = None

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
            self.path = self.folder / f"{uuid.uuid4().hex}{self.suffix}"
            self._handle = self.path.open("wb")
        await asyncio.to_thread(self._handle.write, chunk)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


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
