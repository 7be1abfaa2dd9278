"""Who a pid is (its start time) and pidfds, without trio so the stage1 helper can use them.

A pid is only ever trusted together with the start time recorded when we started it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot on Linux), ``None`` if it is gone."""
    if sys.platform == "freebsd":  # mypy narrows on sys.platform only
        return _freebsd_start_time(pid)
    else:  # noqa: RET505 - an else block keeps mypy's per-platform runs free of unreachable code
        return _linux_start_time(pid)


def _linux_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None  # exited, not yet reaped by whoever inherited it: gone for us
    return int(fields[19])  # field 22 of proc(5), counted from field 3


def _freebsd_start_time(pid: int) -> int | None:
    out = subprocess.run(
        ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0 or not out.stdout.strip():
        return None
    started = datetime.strptime(out.stdout.strip(), "%a %b %d %H:%M:%S %Y")
    return int(started.timestamp())


def is_running(pid: int, start_time: int) -> bool:
    """True when ``pid`` still names the process that started at ``start_time``."""
    return process_start_time(pid) == start_time


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (Linux); raises ProcessLookupError when it is gone."""
    if sys.platform == "linux":  # mypy narrows on sys.platform only
        return os.pidfd_open(pid)
    else:  # noqa: RET505 - see process_start_time
        raise OSError(errno.ENOSYS, "pidfds exist on Linux only")


def pidfd_send_signal(pidfd: int, signum: int) -> None:
    """Signal the process behind ``pidfd``; a process already gone is no error."""
    if sys.platform == "linux":
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            pass
    else:
        raise OSError(errno.ENOSYS, "pidfds exist on Linux only")
