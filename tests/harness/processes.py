"""Helpers for tests that start processes; the servers themselves start through
services/dev/servers.py, shared with `bridge dev`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from services.dev.servers import free_port, unprivileged_user

__all__ = ["cpu_seconds", "cpu_times", "free_port", "peak_rss_mb", "remove", "unprivileged_user"]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time the process used so far, in seconds. (Their sum is exact; the
    split between them is sampled at clock ticks, so it is close over a run of seconds.)"""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far, in seconds."""
    return sum(cpu_times(pid))


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB; read while it still runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM line")
