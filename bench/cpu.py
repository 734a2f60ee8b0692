"""Where the machine's CPU went during a measurement: cores used by Locust, the app servers,
NGINX, the Docker engine, the controller and everything else (bench helper, Linux only).

A thread reads every process's cumulative CPU time (``/proc/PID/stat``: utime + stime) every
``interval`` seconds. A process seen at the first sample counts from that sample; one born later
counts from zero; one that exits counts up to its last sample (so a short-lived process, such as
an app server replaced mid-rollout, is seen to within one interval). Groups are told apart by
the command line.

    with cpu_split() as split:
        ...  # the measurement
    split.cores()  # {"locust": 1.1, "apps": 0.6, ...}: average cores over the window
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = ("locust", "apps", "nginx", "docker", "controller", "other")


def group_of(cmdline: str) -> str:
    """The group a process's command line (NUL-separated arguments joined by spaces) belongs to."""
    if "-m locust" in cmdline or "/locust " in cmdline:
        return "locust"
    if "appserver." in cmdline:
        return "apps"
    if cmdline.startswith("nginx"):
        return "nginx"
    first = os.path.basename(cmdline.split(" ", 1)[0])
    if first in ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc", "docker-proxy",
                 "docker-init"):
        return "docker"
    if "-m sandbox" in cmdline:
        return "controller"
    return "other"


def _cpu_seconds(pid: str) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Split:
    """CPU seconds per process, grouped; filled by :func:`cpu_split`."""

    start: dict[str, float] = field(default_factory=dict)  # pid -> CPU s at the first sample
    last: dict[str, float] = field(default_factory=dict)  # pid -> CPU s at the latest sample
    group: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def sample(self, first: bool = False) -> None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            used = _cpu_seconds(pid)
            if used is None:
                continue
            if pid not in self.group:
                self.group[pid] = group_of(_cmdline(pid))
                self.start[pid] = used if first else 0.0
            self.last[pid] = used

    def seconds(self) -> dict[str, float]:
        out = dict.fromkeys(GROUPS, 0.0)
        for pid, used in self.last.items():
            out[self.group[pid]] += max(0.0, used - self.start[pid])
        return out

    def cores(self) -> dict[str, float]:
        """Average cores each group used over the window (CPU seconds / wall seconds)."""
        wall = self.wall_s or 1.0
        return {g: round(s / wall, 2) for g, s in self.seconds().items()}


@contextmanager
def sampling(sample: Callable[[], None], interval: float) -> Iterator[None]:
    """Call ``sample`` in a background thread every ``interval`` seconds (0: back to back) until
    the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            sample()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=120)


@contextmanager
def cpu_split(interval: float = 0.5) -> Iterator[Split]:
    split = Split()
    split.sample(first=True)
    t0 = time.monotonic()
    try:
        with sampling(split.sample, interval):
            yield split
    finally:
        split.sample()
        split.wall_s = time.monotonic() - t0


def describe(cores: dict[str, float]) -> str:
    """``locust 1.10, apps 0.60, ...`` (cores, the busiest first), with the total."""
    busy = sorted(((c, g) for g, c in cores.items() if c >= 0.01), reverse=True)
    return ", ".join(f"{g} {c:.2f}" for c, g in busy) + f" (total {sum(cores.values()):.2f})"
