"""The engine that drives jobs: dispatch rounds, the one writer of outcomes, the task
window in memory, online tasks and the retry policy."""

from gateway.dispatch.engine import JobEngine
from gateway.dispatch.online import ONLINE

__all__ = ["ONLINE", "JobEngine"]
