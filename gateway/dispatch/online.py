"""Online tasks (Execute, Generate): one task outside any job, held in memory only,
sent to the least loaded server that serves its model, retried in memory."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from batchinfer.v1 import task_pb2

from gateway.convert import TASK_TYPE_NAMES
from gateway.dispatch.window import TaskWindow
from gateway.jobs import TaskEntry
from gateway.links import ServerLink, WorkerPool
from gateway.task_wire import task_bytes

ONLINE = "online"  # the job id of online tasks
ONLINE_ATTEMPTS = 3


def _error(entry: TaskEntry, code: str, message: str) -> task_pb2.TaskResult:
    return task_pb2.TaskResult(
        task_id=entry.task_id,
        error=task_pb2.TaskError(code=code, message=message),
        attempt=entry.attempts,
    )


class OnlineTasks:
    def __init__(
        self,
        pool: WorkerPool,
        window: TaskWindow,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self.pool = pool
        self.window = window
        self.clock = clock
        self.wake = wake
        self.waiting: list[TaskEntry] = []

    async def run(self, task: task_pb2.Task) -> task_pb2.TaskResult:
        prompt_chars = len(task.prompt) + sum(len(m.content) for m in task.messages)
        entry = TaskEntry(
            key=self.window.next_key(),
            job_id=ONLINE,
            task_id=task.task_id,
            payload=task.SerializeToString(),
            est_tokens=prompt_chars // 4 + (task.params.max_new_tokens or 64),
            attempts=0,
            future=asyncio.get_running_loop().create_future(),
            model=task.model,
            task_type=TASK_TYPE_NAMES.get(task.task_type, ""),
        )
        self.window.entries[entry.key] = entry
        self.waiting.append(entry)
        self.wake()
        try:
            return await entry.future
        finally:
            self.window.entries.pop(entry.key, None)

    def send(self) -> None:
        waiting, self.waiting = self.waiting, []
        ready = self.pool.ready_links()
        by_link: dict[ServerLink, list[TaskEntry]] = defaultdict(list)
        for entry in waiting:
            if entry.future.done():
                continue
            able = [link for link in ready if link.serves(entry.model, entry.task_type)]
            if ready and not able:
                kind = entry.task_type or "this task type"
                message = f"no inference server serves model {entry.model!r} for {kind}"
                entry.future.set_result(_error(entry, "UNSUPPORTED_MODEL", message))
                continue
            free = [link for link in able if link.credits > len(by_link[link])]
            if not free:
                self.waiting.append(entry)
                continue
            link = min(free, key=lambda lk: lk.inflight.total_tokens + 64 * len(by_link[lk]))
            by_link[link].append(entry)
        for link, entries in by_link.items():
            tasks = []
            for entry in entries:
                entry.attempts += 1
                entry.link, entry.owner, entry.sent_at = link, link.owner, self.clock()
                tasks.append(task_bytes(entry.payload, str(entry.key), entry.attempts))
            link.send(tasks, [(e.key, e.est_tokens) for e in entries])

    def done(self, entry: TaskEntry, result: task_pb2.TaskResult | None) -> None:
        """An answer, or None when its server went away."""
        retryable = result is None or (
            result.WhichOneof("output") == "error" and result.error.retryable
        )
        if retryable and entry.attempts < ONLINE_ATTEMPTS:
            entry.link = None
            self.waiting.append(entry)
            self.wake()
            return
        if result is None:
            result = _error(entry, "UNAVAILABLE", "the inference server went away")
        result.task_id, result.attempt = entry.task_id, entry.attempts
        if not entry.future.done():
            entry.future.set_result(result)
