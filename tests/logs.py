"""Reading the logs that test subprocesses leave behind."""

from __future__ import annotations

from pathlib import Path

# What asyncio logs when a task is lost or its failure unseen: each one hides a bug.
ASYNCIO_WARNINGS = (
    "Task was destroyed but it is pending",
    "Task exception was never retrieved",
    "asynchronous generator is already running",
    "coroutine was never awaited",
)


def asyncio_warnings_in(folder: Path) -> list[str]:
    """'file: line' for each asyncio warning in the *.log files under folder."""
    found = []
    for path in sorted(folder.rglob("*.log")):
        with path.open(errors="replace") as handle:
            for line in handle:
                if any(warning in line for warning in ASYNCIO_WARNINGS):
                    found.append(f"{path.relative_to(folder)}: {line.strip()[:300]}")
    return found
