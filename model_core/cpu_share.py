"""How many CPU threads a job should use on a machine that is doing other things too.

PyTorch's CPU kernels split each operation over all its threads and wait for the slowest: when
another process keeps one of two cores busy, two threads take 4-10 times as long as one (measured:
the model on 60 s of audio, 0.7 s idle, 5.5 and 8.6 s beside a busy core, 1.2-1.4 s every time with
one thread). So before each job the threads are set to the CPUs this process may use less those
that other processes kept busy while the previous job ran.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

THREADS_VARIABLE = "MEMORYTALKER_THREADS"  # a fixed thread count instead of the estimate


@dataclass(frozen=True)
class _Sample:
    wall: float  # seconds
    busy: int  # clock ticks that all CPUs spent on anything but idling, since boot
    own: int  # clock ticks this process ran, since it started


def _sample() -> _Sample | None:
    """None where the kernel does not say (anything but Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        # /proc/self/stat: the command name in brackets may hold spaces; utime and stime follow it.
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return _Sample(time.monotonic(), sum(ticks[:8]) - idle, int(own[11]) + int(own[12]))


def allowed_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CpuShare:
    """Call threads() as a job starts and job_done() as it ends: the next job's threads follow what
    other processes used while this one ran (when they compete), not what they did between jobs (a
    take written into the scene, while the worker waited)."""

    def __init__(self) -> None:
        self._last = _sample()
        self._others_during_last_job: float | None = None

    def _others_since_last_look(self) -> float | None:
        """The CPUs' worth of time other processes used since the last look (None if unknown)."""
        now, last = _sample(), self._last
        self._last = now
        if now is None or last is None or now.wall - last.wall < 0.05:
            return None
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        return max(0.0, ((now.busy - last.busy) - (now.own - last.own)) / ticks_per_second / (now.wall - last.wall))

    def threads(self) -> int:
        """Threads for the next job: MEMORYTALKER_THREADS if set, else the allowed CPUs less those
        other processes kept busy during the last job (before the first: since the worker started),
        at least one."""
        explicit = os.environ.get(THREADS_VARIABLE, "").strip()
        if explicit:
            if not explicit.isdigit() or int(explicit) < 1:
                raise ValueError(f"{THREADS_VARIABLE} must be a whole number of threads, 1 or more; got {explicit!r}")
            return int(explicit)
        since_last_look = self._others_since_last_look()
        others = self._others_during_last_job if self._others_during_last_job is not None else since_last_look
        allowed = allowed_cpus()
        return allowed if others is None else max(1, min(allowed, allowed - round(others)))

    def job_done(self) -> None:
        self._others_during_last_job = self._others_since_last_look()
