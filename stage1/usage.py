"""What a pod's sandbox uses right now (resident memory, CPU time), read the way the driver that
made it can: the pod's cgroup on Linux, ``rctl -u`` on the pod jail on FreeBSD. The metrics
(supervisor/metrics.py) ask through ``drivers.pod_usage``; synchronous, run in a worker thread.

Linux, per hierarchy the pod's cgroup is in (``cgroup_dirs`` of its handle):
- memory: ``memory.current`` (v2) or ``memory.usage_in_bytes`` (v1), both in bytes and both
  counting the page cache the pod's files occupy, as the memory limit does;
- CPU: ``cpu.stat``'s ``usage_usec`` (v2: every cgroup2 directory has it, also on a hybrid host
  whose cpu controller is v1) or ``cpuacct.usage`` (v1, nanoseconds; present where cpuacct is
  mounted with cpu, the usual ``cpu,cpuacct`` hierarchy).

FreeBSD: ``rctl -u jail:NAME`` prints the jail's racct one ``resource=amount`` a line (rctl(8),
``-u``: "Display resource usage information for the specified subject"); ``memoryuse`` is the
resident set size in bytes and ``cputime`` CPU time in whole seconds (rctl(8), RESOURCES). The
pod jail's racct includes its app jails' (kern_racct.c charges every ancestor prison).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PodUsage:
    """A sandbox's usage; a value the platform does not report is None."""

    memory_bytes: int | None = None
    cpu_seconds: float | None = None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _usage_usec(path: Path) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(" ")
        if key == "usage_usec" and value.strip().isdigit():
            return int(value)
    return None


def cgroup_usage(cgroup_dirs: list[str]) -> PodUsage:
    """Memory and CPU of the pod's cgroup, from whichever hierarchy reports each."""
    memory: int | None = None
    cpu: float | None = None
    for directory in map(Path, cgroup_dirs):
        if memory is None:
            memory = _read_int(directory / "memory.current")
        if memory is None:
            memory = _read_int(directory / "memory.usage_in_bytes")
        if cpu is None:
            usec = _usage_usec(directory / "cpu.stat")
            cpu = usec / 1e6 if usec is not None else None
        if cpu is None:
            nsec = _read_int(directory / "cpuacct.usage")
            cpu = nsec / 1e9 if nsec is not None else None
    return PodUsage(memory, cpu)


def parse_rctl_usage(text: str) -> dict[str, int]:
    """``rctl -u`` output (``resource=amount`` lines, plain numbers without ``-h``)."""
    usage = {}
    for line in text.splitlines():
        resource, sep, amount = line.strip().partition("=")
        if sep and amount.isdigit():
            usage[resource] = int(amount)
    return usage


def jail_usage(data: Mapping[str, Any]) -> PodUsage | None:
    """The pod jail's racct through ``rctl -u``; None when rctl cannot tell (racct off, no
    such jail): a scrape leaves the pod's usage out rather than failing."""
    from jetpack.errors import IsolationError
    from jetpack.stage1.rctl import jail_usage as rctl_usage

    try:
        usage = rctl_usage(str(data["name"]))
    except (IsolationError, KeyError):
        return None
    memory = usage.get("memoryuse")
    cpu = usage.get("cputime")
    return PodUsage(memory, float(cpu) if cpu is not None else None)
