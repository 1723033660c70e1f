"""JobStore's operations on uploaded input files and on the expansion lease (input_ops)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from gateway.store import input_ops
from gateway.store.backends import Backend


class InputsMixin:
    """Part of JobStore: uploaded files kept where every replica reads them."""

    _backend: Backend

    async def add_input_piece(self, input_id: str, seq: int, data: bytes, now: float) -> None:
        """Piece `seq` (from 0) of an uploaded file, in its own transaction: a file is
        stored as it streams in, never held whole."""
        fn = partial(input_ops.add_piece, input_id=input_id, seq=seq, data=data, now=now)
        await self._backend.run(fn, write=True)

    async def input_pieces(self, input_id: str) -> AsyncIterator[bytes]:
        """The file's pieces in order, one read each (a file is never loaded whole)."""
        seq = 0
        while True:
            fn = partial(input_ops.piece, input_id=input_id, seq=seq)
            data = await self._backend.run(fn, write=False)
            if data is None:
                return
            yield data
            seq += 1

    async def delete_input(self, input_id: str) -> int:
        """Drops an uploaded file's pieces (a refused or repeated submission); how many."""
        fn = partial(input_ops.delete_input, input_id=input_id)
        return await self._backend.run(fn, write=True)

    async def drop_stale_inputs(self, before: float) -> int:
        """Pieces older than `before` that no job names (input_ops.drop_stale)."""
        return await self._backend.run(partial(input_ops.drop_stale, before=before), write=True)

    async def claim_expansion(self, job_id: str, replica_id: str) -> int | None:
        """Takes over the job's expansion if its expander is gone: the tasks stored so far
        (where expansion resumes), or None (input_ops.claim_expansion)."""
        fn = partial(input_ops.claim_expansion, job_id=job_id, replica_id=replica_id)
        return await self._backend.run(fn, write=True)
