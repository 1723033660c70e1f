"""The per-model reports GetJob and WatchJob show, from the store's results: each job's
results are read once, after a cursor, and folded into running aggregates, at most once
a second while the job runs (a 100k-task job is never rescanned per poll); the reports of
an ended job are final. Any replica, or a restarted gateway, builds the same from the
store."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from batchinfer.v1 import gateway_pb2, task_pb2

from gateway.evaluation.aggregate import ModelStats
from gateway.evaluation.results import model_and_row
from gateway.store import Evaluation, JobRecord, JobStore, ResultRecord

log = logging.getLogger(__name__)

REFRESH_S = 1.0
PAGE = 2000
MAX_JOBS = 64  # jobs whose aggregates are kept; the least recently asked is dropped


@dataclass
class _JobAggregate:
    models: tuple[str, ...]
    classify: bool
    stats: dict[str, ModelStats] = field(default_factory=dict)
    seq: int = 0
    read_at: float = -1e18
    final: bool = False
    evaluates: bool | None = None
    reports: list[gateway_pb2.ModelReport] = field(default_factory=list)

    def fold(
        self, job_model: str, rows: Sequence[ResultRecord], found: dict[str, Evaluation]
    ) -> None:
        for row in rows:
            model, _ = model_and_row(job_model, row.task_id)
            evaluation = found.get(row.task_id)
            scores = json.loads(evaluation.scores or "{}") if evaluation is not None else {}
            reference = evaluation.reference if evaluation is not None else None
            result = task_pb2.TaskResult.FromString(row.result)
            stats = self.stats.setdefault(model, ModelStats())
            stats.add(row.state, row.finished_at, result, scores, reference)

    def build(self) -> list[gateway_pb2.ModelReport]:
        names = list(self.models) + [m for m in self.stats if m not in self.models]
        classify = self.classify and bool(self.evaluates)
        return [self.stats.get(m, ModelStats()).report(m, classify) for m in names]


class JobReports:
    """A job's reports are caught up by one background read at a time; a caller waits
    for it at most `wait_s` (`ended_wait_s` once the job has ended, so a small job's
    final report is whole at the first ask) and otherwise gets the reports as far as
    they are read: each report's `finished` says how far. A 20,000-result job that has
    just failed took GetJob 8 s to read through under load; GetJob must not wait on it."""

    def __init__(
        self,
        store: JobStore,
        clock: Callable[[], float] = time.monotonic,
        *,
        wait_s: float = 0.25,
        ended_wait_s: float = 2.0,
    ) -> None:
        self.store, self.clock = store, clock
        self.wait_s, self.ended_wait_s = wait_s, ended_wait_s
        self._jobs: OrderedDict[str, _JobAggregate] = OrderedDict()
        self._reads: dict[str, asyncio.Task[None]] = {}

    async def of(self, job: JobRecord) -> list[gateway_pb2.ModelReport]:
        agg = self._jobs.get(job.job_id)
        if agg is None:
            agg = _JobAggregate(tuple(job.model.split(",")), job.task_type == "classify")
            agg.reports = agg.build()  # each model at 0 until its results are read
            self._jobs[job.job_id] = agg
            while len(self._jobs) > MAX_JOBS:
                self._jobs.popitem(last=False)
        self._jobs.move_to_end(job.job_id)
        ended = job.state.is_terminal  # every result is stored before the state is
        if agg.final or (not ended and self.clock() - agg.read_at < REFRESH_S):
            return agg.reports
        read = self._reads.get(job.job_id)
        if read is None:
            read = asyncio.get_running_loop().create_task(
                self._catch_up(job, agg, ended), name=f"reports {job.job_id}"
            )
            self._reads[job.job_id] = read
            read.add_done_callback(lambda done: self._read_done(job.job_id, done))
        await asyncio.wait({read}, timeout=self.ended_wait_s if ended else self.wait_s)
        return agg.reports

    def _read_done(self, job_id: str, read: asyncio.Task[None]) -> None:
        self._reads.pop(job_id, None)
        if not read.cancelled() and read.exception() is not None:
            # The next ask starts a new read from the cursor; the reports stay as read.
            log.warning(
                "reading job %s's results for its reports failed: %r", job_id, read.exception()
            )

    async def _catch_up(self, job: JobRecord, agg: _JobAggregate, ended: bool) -> None:
        """Reads every result after the cursor, page by page; the reports are rebuilt
        after each page, so a caller that stops waiting sees the pages read so far."""
        while True:
            rows = await self.store.results_after(job.job_id, agg.seq, PAGE)
            if rows:
                found: dict[str, Evaluation] = {}
                if agg.evaluates is not False:
                    found = await self.store.evaluations(job.job_id, [r.task_id for r in rows])
                    agg.evaluates = bool(found)
                await asyncio.to_thread(agg.fold, job.model, rows, found)
                agg.seq = rows[-1].seq
                agg.reports = agg.build()
            if len(rows) < PAGE:
                break
        agg.reports, agg.read_at, agg.final = agg.build(), self.clock(), ended
