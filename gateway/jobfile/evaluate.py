"""The metrics an `evaluate:` section may name, by task type (the scoring itself is in
gateway/evaluation, which imports this; the job-file language stays free of it)."""

from __future__ import annotations

TEXT_METRICS = ("exact_match", "contains", "rouge_l", "bleu")
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "generate": TEXT_METRICS,
    "chat": TEXT_METRICS,
    "classify": ("accuracy", "macro_f1", "confusion"),
    "score": ("mean_logprob",),
    "embed": (),
}
ALL_METRICS = tuple(dict.fromkeys(m for ms in METRICS_BY_TASK.values() for m in ms))
MAX_INPUT_CHARS = 2000  # of the input kept beside the reference for the result line


def metric_problems(task_type: str, metrics: list[str]) -> list[str]:
    """Why these metrics do not fit the task type (an empty list when they do)."""
    fits = METRICS_BY_TASK.get(task_type, ())
    problems = []
    for i, name in enumerate(metrics):
        if name not in ALL_METRICS:
            known = ", ".join(ALL_METRICS)
            problems.append(f"metrics[{i}]: unknown metric {name!r} (known: {known})")
        elif name not in fits:
            allowed = ", ".join(fits) or "none"
            problems.append(
                f"metrics[{i}]: {name} is not a metric for task {task_type} (it takes: {allowed})"
            )
    return problems


def eval_input(prompt: str, messages: tuple[tuple[str, str], ...]) -> str:
    """What the task asked: the prompt, or for chat the last user message; cut short."""
    text = prompt
    for role, content in messages:
        if role == "user":
            text = content
    return text[:MAX_INPUT_CHARS]
