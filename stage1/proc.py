"""Process identity and watching for processes that need not be our children.

A pid alone is never trusted: it is paired with the process's start time, and watched through a
pidfd (Linux) or a kqueue (FreeBSD), so that a recycled pid is never taken for an app of ours.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from jetpack.errors import IsolationError
from jetpack.stage1.base import ExitStatus, ProcessIdentity, ProcessWatch
from jetpack.stage1.identity import (
    is_running,
    pidfd_open,
    pidfd_send_signal,
    process_start_time,
)


def identify(pid: int) -> ProcessIdentity:
    start = process_start_time(pid)
    if start is None:
        raise IsolationError(f"process {pid} exited before it could be watched")
    return ProcessIdentity(pid, start)


class PidfdWatch:
    """A pidfd: readable once the process exits; signals go to that process and no other."""

    def __init__(self, pidfd: int) -> None:
        self._pidfd: int | None = pidfd

    @property
    def fd(self) -> int:
        if self._pidfd is None:
            raise IsolationError("process watch used after close")
        return self._pidfd

    async def wait_exited(self) -> None:
        # Each waiter polls its own duplicate so that wait() and stop() may overlap.
        fd = os.dup(self.fd)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    def send_signal(self, signum: int) -> None:
        pidfd_send_signal(self.fd, signum)

    def alive(self) -> bool:
        import select

        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class KqueueWatch:
    """FreeBSD: EVFILT_PROC/NOTE_EXIT on the pid, checked against its start time once opened."""

    def __init__(self, identity: ProcessIdentity) -> None:
        self.identity = identity

    async def wait_exited(self) -> None:
        if sys.platform == "freebsd":  # mypy narrows on sys.platform only
            import select

            event = select.kevent(
                self.identity.pid, filter=select.KQ_FILTER_PROC, flags=select.KQ_EV_ADD,
                fflags=select.KQ_NOTE_EXIT,
            )
            try:
                with trio.lowlevel.monitor_kevent(
                    self.identity.pid, select.KQ_FILTER_PROC
                ) as queue:
                    trio.lowlevel.current_kqueue().control([event], 0)
                    await queue.receive()
            except OSError:
                return  # ESRCH: it already exited
        else:  # pragma: no cover - KqueueWatch is only made on FreeBSD
            raise IsolationError("kqueue process watch is FreeBSD-only")

    def send_signal(self, signum: int) -> None:
        if is_running(self.identity.pid, self.identity.start_time):
            try:
                os.kill(self.identity.pid, signum)
            except ProcessLookupError:
                pass

    def alive(self) -> bool:
        return is_running(self.identity.pid, self.identity.start_time)

    def close(self) -> None:
        pass


def open_watch(identity: ProcessIdentity) -> ProcessWatch | None:
    """A watch on ``identity``, or ``None`` when that process is gone (or its pid was reused)."""
    if sys.platform == "freebsd":  # mypy narrows on sys.platform only
        return KqueueWatch(identity) if is_running(identity.pid, identity.start_time) else None
    else:  # noqa: RET505 - an else block keeps mypy's per-platform runs free of unreachable code
        return _open_pidfd_watch(identity)


def _open_pidfd_watch(identity: ProcessIdentity) -> PidfdWatch | None:
    try:
        pidfd = pidfd_open(identity.pid)
    except ProcessLookupError:
        return None
    except OSError as exc:
        raise IsolationError(f"cannot watch process {identity.pid}: {exc.strerror}") from None
    # Checked after opening: from here on the pidfd pins the process we verified.
    if process_start_time(identity.pid) != identity.start_time:
        os.close(pidfd)
        return None
    return PidfdWatch(pidfd)


def read_status(path: Path) -> ExitStatus | None:
    """The status an app's monitor wrote at its end; ``None`` when none was written."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IsolationError(f"cannot read app status {path}: {exc.strerror}") from None
    if not text.strip():
        return None
    try:
        return ExitStatus.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError):
        raise IsolationError(f"{path}: malformed app status {text[:80]!r}") from None
