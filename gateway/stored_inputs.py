"""An uploaded input file of a stored job, as a file on the replica that expands the job.

Kept apart from gateway.uploads (which receives files and raises the API's errors): the
submission module uses this one, and gateway.errors imports the submission module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from gateway.store import JobStore


class InputFiles:
    """The uploaded input file of a stored job spec, as a file on this replica: the
    render workers read files (in other processes, under their own limits), so the
    expanding replica writes the stored pieces into `folder` and deletes the file once
    the step is over. Rows are not streamed over the render pipe instead, so that a
    worker keeps reading its input as it always did (formats, line caps, the first line
    of an OpenAI batch file) and a bad row still fails only its worker."""

    def __init__(self, folder: Path, store: JobStore) -> None:
        self.folder = folder
        self.store = store

    def path(self, input_id: str) -> Path:
        return self.folder / f"{input_id}.input"

    def local(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The spec with `upload` at this replica's copy of the file (which may not be
        there: a check that does not count rows reads at most the first line)."""
        input_id = spec.get("input_id")
        return {**spec, "upload": str(self.path(input_id))} if input_id else dict(spec)

    @contextlib.asynccontextmanager
    async def materialised(self, spec: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The spec with `upload` at a local copy of the stored file for the block: the
        receiving replica's own copy when it has one, else one written from the store
        (checked against the size received). Deleted after the block, however it ends."""
        input_id = spec.get("input_id")
        if not input_id:  # no upload, or a job stored before uploads went to the store
            yield dict(spec)
            return
        path = self.path(input_id)
        try:
            if not path.exists():
                await self._write(input_id, path, int(spec.get("input_bytes") or 0))
            yield self.local(spec)
        finally:
            path.unlink(missing_ok=True)

    async def _write(self, input_id: str, path: Path, size: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        written = 0
        try:
            with partial.open("wb") as handle:
                async for data in self.store.input_pieces(input_id):
                    await asyncio.to_thread(handle.write, data)
                    written += len(data)
            if written != size:
                raise InputMissing(
                    f"the uploaded input file is not all in the store ({written:,} of"
                    f" {size:,} bytes): it cannot be expanded"
                )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


class InputMissing(RuntimeError):
    """The stored pieces of an upload do not add up to the file received."""
