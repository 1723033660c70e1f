"""Where a gateway process's CPU goes, for benchmarks/gateway_throughput.py.

Two measurements, both of the running gateway, neither inside it:

- per thread, exact: each thread's user + system time from /proc/PID/task/*/stat, read
  just before the gateway is stopped: the event loop's main thread, gRPC core's own
  threads (known by their native names), and the other Python threads (Python does
  not name them natively; in practice the store's thread is the busy one);
- per area, sampled (``--profile``): py-spy samples the Python stacks of every thread
  (non-blocking, so it does not pause the gateway) and each sample is given to the
  area of its innermost frame that belongs to one: store, scheduler, gRPC + protobuf,
  telemetry; the rest is dispatch and the event loop. The shares of the Python samples
  are applied to the CPU of the threads that run Python (all but gRPC core's), so
  the split adds up to the measured total. gRPC core's native threads hold no Python
  frames: their CPU is reported as measured, under gRPC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

AREAS = ("store", "scheduler", "grpc", "telemetry", "other")

# Path fragments of a frame's file, most specific first; the first that matches wins.
_AREA_OF_FILE = (
    ("/gateway/store/", "store"),
    ("/sqlalchemy/", "store"),
    ("sqlite3", "store"),
    ("/gateway/scheduling/", "scheduler"),
    ("/gateway/dispatch/window.py", "scheduler"),
    ("/gateway/telemetry.py", "telemetry"),
    ("/opentelemetry/", "telemetry"),
    ("/collector/", "telemetry"),
    ("/grpc/", "grpc"),
    ("/google/protobuf/", "grpc"),
    ("/gateway/links.py", "grpc"),
    ("/gateway/api.py", "grpc"),
)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far per group of threads: loop, grpc (gRPC core), python (the rest)."""
    tick = os.sysconf("SC_CLK_TCK")
    groups: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rpartition(")")[2].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if task.name == str(pid):
            groups["loop"] += seconds
        elif name == "python":
            groups["python"] += seconds
        else:  # event_engine, grpc_global_tim, lifeguard: gRPC core
            groups["grpc"] += seconds
    return dict(groups)


class Sampler:
    """py-spy recording the gateway's Python stacks until stop()."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.out = out
        argv = [spy, "record", "--pid", str(pid), "--format", "raw", "--full-filenames"]
        argv += ["--nonblocking", "--rate", str(rate), "--output", str(out)]
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> Counter[str]:
        """Samples per area (py-spy writes its file when the gateway exits)."""
        self.popen.wait(60)
        return area_samples(self.out.read_text())


def area_samples(raw: str) -> Counter[str]:
    """Samples per area from py-spy's raw format: `frame;frame;...;leaf COUNT` lines."""
    areas: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        areas[_area(stack.split(";"))] += int(count)
    return areas


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for fragment, area in _AREA_OF_FILE:
            if fragment in frame:
                return area
    return "other"


def split(threads: dict[str, float], samples: Counter[str]) -> dict[str, float]:
    """CPU seconds per area: Python threads' CPU shared by samples, plus gRPC core's."""
    python_cpu = sum(s for group, s in threads.items() if group != "grpc")
    total = sum(samples.values()) or 1
    areas = {area: python_cpu * samples[area] / total for area in AREAS}
    areas["grpc"] += threads.get("grpc", 0.0)
    return areas
