"""What a model backend does for the server: validate and prepare a task, run a batch."""

from __future__ import annotations

import abc
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from services.inference.batching import compat_key
from services.inference.types import Code, InferTask, Outcome, TaskError, TaskKind
from services.inference.validation import check_task

log = logging.getLogger(__name__)

ALL_KINDS = (TaskKind.GENERATE, TaskKind.CHAT, TaskKind.CLASSIFY, TaskKind.SCORE, TaskKind.EMBED)


@dataclass(frozen=True)
class ServedModel:
    name: str
    context_length: int
    task_types: tuple[int, ...] = ALL_KINDS
    modalities: tuple[str, ...] = ("text",)


class Backend(abc.ABC):
    """A model behind the batcher. load() blocks; prepare() runs on the event loop."""

    name: str = ""
    device: str = "cpu"

    def __init__(self, default_max_new_tokens: int = 256) -> None:
        self.default_max_new_tokens = default_max_new_tokens

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model (blocking; the server calls it in a thread)."""

    @abc.abstractmethod
    def served_models(self) -> list[ServedModel]: ...

    @abc.abstractmethod
    def serves(self, model: str) -> bool: ...

    @abc.abstractmethod
    def _prepare(self, task: InferTask) -> TaskError | None:
        """Tokenize; set prompt_tokens, length, rows and prepared; check the context."""

    @abc.abstractmethod
    async def execute(self, batch: list[InferTask]) -> list[Outcome]:
        """Run one batch of compatible prepared tasks, one outcome per task, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what load() took."""

    def canonical(self, model: str) -> str:
        """The name a served model goes by in batches and metrics ("" means the default)."""
        return model or self.served_models()[0].name

    def prepare(self, task: InferTask) -> TaskError | None:
        """Validate a task and fill in what batching needs; an error fails this task alone."""
        error = check_task(task)
        if error is not None:
            return error
        if task.model and not self.serves(task.model):
            served = ", ".join(repr(m.name) for m in self.served_models())
            return TaskError(
                Code.UNSUPPORTED_MODEL,
                f"model {task.model!r} is not served here; this server serves {served}",
            )
        # Aliases of one model share batches.
        task.model = self.canonical(task.model)
        generates = task.kind in (TaskKind.GENERATE, TaskKind.CHAT)
        max_new = task.params.max_new_tokens or self.default_max_new_tokens
        task.new_tokens = max_new if generates else 0
        error = self._prepare(task)
        if error is not None:
            return error
        task.key = compat_key(task.kind, task.model, task.params, task.new_tokens)
        return None


class ThreadedBackend(Backend):
    """A backend whose batches block: they run one at a time on a thread of their own,
    so the event loop keeps streams flowing. A batch that raises is retried task by task,
    so a bad task fails alone (INTERNAL, retryable) and the rest of its batch goes on."""

    def __init__(self, default_max_new_tokens: int = 256) -> None:
        super().__init__(default_max_new_tokens)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    @abc.abstractmethod
    def run_batch(self, batch: list[InferTask]) -> list[Outcome]:
        """Run one batch synchronously."""

    async def execute(self, batch: list[InferTask]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_isolated, batch)

    def _run_isolated(self, batch: list[InferTask]) -> list[Outcome]:
        try:
            return self.run_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("task %s failed in the model", batch[0].task_id)
                message = f"the model failed on this task: {type(exc).__name__}: {exc}"
                return [Outcome.failed(batch[0], Code.INTERNAL, message, retryable=True)]
            log.warning("a batch of %d failed (%s); running its tasks one by one", len(batch), exc)
        return [out for task in batch for out in self._run_isolated([task])]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
