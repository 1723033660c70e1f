"""transformers backend: AutoModelForCausalLM on the CPU (float32) or CUDA (bfloat16).

- generate / chat: one left-padded generate() call per batch, its prompts prefilled by
  length bucket (prefill.py); greedy unless the batch's temperature is > 0 (the default
  temperature is 0). Output is cut at the first EOS
  (finish STOP) or at max_new_tokens (LENGTH); then at the first stop string (STOP).
- classify / score: one right-padded forward pass over every (prompt + label) or
  (prompt + continuation) row of the batch; the head runs only on the positions that
  predict the scored tokens. A label gets a leading space when neither the prompt ends
  with nor the label starts with whitespace.
- embed: mean of the last hidden states over the attention mask, L2-normalised.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from services.inference import models
from services.inference.backends import prefill
from services.inference.backends.base import ServedModel, ThreadedBackend
from services.inference.types import (
    Code,
    Finish,
    InferTask,
    LabelScore,
    Outcome,
    TaskError,
    TaskKind,
)
from services.inference.validation import too_long

log = logging.getLogger(__name__)


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class HFBackend(ThreadedBackend):
    name = "transformers"

    def __init__(
        self,
        spec: models.ModelSpec,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        default_max_new_tokens: int = 256,
        bucketed_prefill: bool = True,
    ) -> None:
        super().__init__(default_max_new_tokens)
        self.spec = spec
        self.bucketed_prefill = bucketed_prefill
        """Prefill generation batches by length bucket (see prefill.py)."""
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.threads = threads or os.cpu_count() or 1
        self.model: Any = None
        self.tokenizer: Any = None
        self.context = 0
        self._eos: set[int] = set()

    def load(self) -> None:
        if self.model is not None:
            return
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        self.model, self.tokenizer = models.load(self.spec, self.device, self.dtype)
        config = self.model.config
        self.context = int(getattr(config, "max_position_embeddings", 0) or 2048)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos = set(eos) if isinstance(eos, list) else {eos}
        log.info(
            "loaded %s (%s) on %s in %s, context %d",
            self.spec.name,
            self.spec.kind,
            self.device,
            self.dtype,
            self.context,
        )

    def served_models(self) -> list[ServedModel]:
        return [ServedModel(name, self.context) for name in self.spec.names]

    def serves(self, model: str) -> bool:
        return model.lower() in (n.lower() for n in self.spec.names)

    def canonical(self, model: str) -> str:
        return self.spec.name

    # ---- preparing one task (event loop) ----

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _prepare(self, task: InferTask) -> TaskError | None:
        kind = task.kind
        if kind == TaskKind.CHAT:
            if not getattr(self.tokenizer, "chat_template", None):
                return TaskError(
                    Code.INVALID_ARGUMENT,
                    f"model {self.spec.name!r} has no chat template: send a generate task",
                )
            messages = [{"role": role, "content": content} for role, content in task.messages]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            ids = self._encode(text)
        else:
            ids = self._encode(task.prompt)
        task.prompt_tokens = len(ids)
        if kind == TaskKind.CLASSIFY:
            space = not task.prompt[-1].isspace()
            rows = [
                self._encode(" " + label if space and not label[0].isspace() else label)
                for label in task.labels
            ]
            task.prepared = (ids, rows)
            task.rows = len(rows)
            task.length = len(ids) + max(len(r) for r in rows)
        elif kind == TaskKind.SCORE:
            cont = self._encode(task.continuation)
            task.prepared = (ids, [cont])
            task.length = len(ids) + len(cont)
        else:
            task.prepared = ids
            task.length = len(ids)
        return too_long(task.length, task.new_tokens, self.context)

    # ---- running a batch (model thread) ----

    def run_batch(self, batch: list[InferTask]) -> list[Outcome]:
        kind = batch[0].kind
        with torch.inference_mode():
            if kind in (TaskKind.GENERATE, TaskKind.CHAT):
                return self._generate(batch)
            if kind in (TaskKind.CLASSIFY, TaskKind.SCORE):
                return self._loglik(batch)
            return self._embed(batch)

    def _padded(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generate(self, batch: list[InferTask]) -> list[Outcome]:
        params = batch[0].params
        rows = [t.prepared for t in batch]
        ids, mask = self._padded(rows, left=True)
        kwargs: dict[str, Any] = {
            "max_new_tokens": batch[0].new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": sorted(self._eos),
            "do_sample": not params.greedy,
        }
        if params.greedy:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.repetition_penalty is not None:
            kwargs["repetition_penalty"] = params.repetition_penalty
        if self.bucketed_prefill and prefill.worth_it([len(r) for r in rows]):
            try:
                kwargs["cache"] = prefill.bucketed_prefill(
                    self.model, rows, self.tokenizer.pad_token_id
                )
            except Exception:
                # A model whose cache does not stack this way: pad the prefill instead.
                log.warning("bucketed prefill failed; padding prefills from now on", exc_info=True)
                self.bucketed_prefill = False
        if not params.greedy and params.seed is not None:
            torch.manual_seed(params.seed)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1] :].tolist()
        return [self._text_outcome(task, tokens) for task, tokens in zip(batch, new, strict=True)]

    def _text_outcome(self, task: InferTask, tokens: list[int]) -> Outcome:
        end = next((i for i, tok in enumerate(tokens) if tok in self._eos), None)
        if end is None:
            finish, used = Finish.LENGTH, len(tokens)
        else:
            finish, used = Finish.STOP, end + 1
        text = self.tokenizer.decode(tokens[:used], skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in task.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], Finish.STOP
        return Outcome(
            task,
            text=text,
            finish=finish,
            prompt_tokens=task.prompt_tokens,
            completion_tokens=used,
        )

    def _loglik(self, batch: list[InferTask]) -> list[Outcome]:
        rows: list[list[int]] = []
        starts: list[int] = []
        for task in batch:
            prompt, conts = task.prepared
            for cont in conts:
                rows.append(prompt + cont)
                starts.append(len(prompt))
        ids, mask = self._padded(rows, left=False)
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Position p predicts token p + 1: score tokens start..end-1 from positions start-1..end-2.
        row_idx, pos_idx, targets = [], [], []
        for r, (row, start) in enumerate(zip(rows, starts, strict=True)):
            for p in range(start, len(row)):
                row_idx.append(r)
                pos_idx.append(p - 1)
                targets.append(row[p])
        logits = self.model.get_output_embeddings()(hidden[row_idx, pos_idx]).float()
        token_lp = torch.log_softmax(logits, dim=-1)
        picked = token_lp[torch.arange(len(targets)), torch.tensor(targets)].tolist()
        sums = [0.0] * len(rows)
        for r, lp in zip(row_idx, picked, strict=True):
            sums[r] += lp
        outcomes, r = [], 0
        for task in batch:
            prompt, conts = task.prepared
            task_sums = sums[r : r + len(conts)]
            r += len(conts)
            if task.kind == TaskKind.SCORE:
                outcomes.append(
                    Outcome(task, score=(task_sums[0], len(conts[0])), prompt_tokens=task.length)
                )
                continue
            top = max(task_sums)
            total = sum(math.exp(s - top) for s in task_sums)
            scores = [
                LabelScore(label, s, math.exp(s - top) / total)
                for label, s in zip(task.labels, task_sums, strict=True)
            ]
            outcomes.append(Outcome(task, label_scores=scores, prompt_tokens=task.prompt_tokens))
        return outcomes

    def _embed(self, batch: list[InferTask]) -> list[Outcome]:
        ids, mask = self._padded([t.prepared for t in batch], left=False)
        hidden = self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
        vectors = torch.nn.functional.normalize(pooled.float(), dim=-1).tolist()
        return [
            Outcome(task, embedding=vec, prompt_tokens=task.prompt_tokens)
            for task, vec in zip(batch, vectors, strict=True)
        ]

    def close(self) -> None:
        super().close()
        self.model = None
