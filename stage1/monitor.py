"""What both drivers share about a running app: its monitor process, watched by pid + start time.

An app's monitor (pid 1 of its pid namespace on Linux, a host process around jexec on FreeBSD)
reports ``pid N`` and ``ready`` (or ``error ...``) on a pipe, then writes the status file.
Checking a pid's identity reads /proc (Linux) or runs ps(1) (FreeBSD): always in a worker
thread, so ``started`` (synchronous) is for a worker thread too, unless an ``EarlyWatch``
identified and watched the monitor already (Linux: from its pid line, while it builds the
app's rootfs).

A monitor started by this supervisor also sends the status, once written, on the socket its go
came on (``SocketExitNote``): ``wait`` answers from it without waiting for the monitor's own
exit (on Linux that is pid 1's: its address space freed, its pid namespace emptied, 1.5-4 ms
here), and the status file is read only when the note is missing (an adopted app, a monitor
killed). The monitor still exiting is remembered (``_exiting``) until the same app starts again
in that pod (``previous_gone``) or the pod's sandbox goes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from jetpack.errors import IsolationError, JetpackError
from jetpack.stage1.base import (
    AppProcess,
    AppSpec,
    ExitStatus,
    ProcessIdentity,
    ProcessWatch,
    SandboxHandle,
    Stdio,
)
from jetpack.stage1.proc import identify, open_watch, read_status

KILL_CONFIRM_TIMEOUT = 10.0
_NOTE_MAX = 4096  # an ExitStatus's JSON is well under 200 bytes


class SocketExitNote:
    """The supervisor's end of the socket the monitor got its go on and sends its status back
    on: one JSON line (``ExitStatus.to_json``) after the status file is written. Concurrent
    waiters (``wait`` and ``stop``) share one read; a cancelled read keeps what it got."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._lock = trio.Lock()
        self._buffer = b""
        self._done = False
        self._status: ExitStatus | None = None

    async def status(self) -> ExitStatus | None:
        async with self._lock:
            while not self._done:
                self._done = await self._receive()
        return self._status

    async def _receive(self) -> bool:
        """Read what is there; True once the note is complete (or can no longer come)."""
        if self._sock is None:
            return True
        try:
            data = self._sock.recv(_NOTE_MAX)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(self._sock)
            return False
        except OSError:
            return True
        self._buffer += data
        if b"\n" in self._buffer:
            try:
                self._status = ExitStatus.from_json(json.loads(self._buffer.split(b"\n")[0]))
            except (ValueError, KeyError, TypeError):
                self._status = None  # the status file says it, or that there is none
            return True
        return not data or len(self._buffer) > _NOTE_MAX

    def close(self) -> None:
        if self._sock is not None:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
            self._sock = None


async def read_report(fd: int, on_pid: Callable[[int], object] | None = None, *,
                      until_ready: bool = False) -> list[str]:
    """Every line the helper and the app's monitor report, until both have closed the pipe
    (``until_ready``: or up to the monitor's ``ready``, its last line: the app's process it
    forked just before may not have closed its copy of the pipe yet); ``on_pid`` is called
    with the monitor's pid as soon as its ``pid N`` line is in."""
    data = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        while chunk := await stream.receive_some():
            data += chunk
            if on_pid is not None and (pid := _reported_pid(data)) is not None:
                on_pid(pid)
                on_pid = None
            if until_ready and (b"\n" + data).endswith(b"\nready\n"):
                break
    return data.decode(errors="replace").splitlines()


def _reported_pid(data: bytes) -> int | None:
    """The pid of the first complete ``pid N`` line in ``data``, if any."""
    for line in data.split(b"\n")[:-1]:  # the last one may be incomplete
        if line.startswith(b"pid "):
            try:
                return int(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


class EarlyWatch:
    """The monitor identified and its pidfd opened as soon as it reports its pid, while it
    still builds the app's rootfs: once it is ready, only go is left to send. What it found
    counts only for the monitor that then reports ``ready`` under that pid (``started``: its
    checks come first, as without it); anything else is closed, and ``started`` identifies
    the pid itself."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._found: tuple[ProcessIdentity, ProcessWatch] | None = None

    def open(self, pid: int) -> None:
        """Identify ``pid`` and watch it (blocks: a worker thread). A failure leaves nothing:
        ``started`` tries again, and reports what it finds, if the monitor says it is ready."""
        try:
            identity = identify(pid)
            watch = open_watch(identity)
        except IsolationError:
            return
        if watch is not None:
            self._pid, self._found = pid, (identity, watch)

    def has(self, pid: int | None) -> bool:
        return self._found is not None and pid == self._pid

    def take(self, pid: int) -> tuple[ProcessIdentity, ProcessWatch] | None:
        if not self.has(pid):
            return None
        found, self._found = self._found, None
        return found

    def close(self) -> None:
        if self._found is not None:
            self._found[1].close()
            self._found = None


def reported_pid(lines: list[str]) -> int | None:
    """The monitor's pid, from its report's ``pid N`` line."""
    return next((int(line.split()[1]) for line in lines if line.startswith("pid ")), None)


class MonitoredApps:
    """wait/signal/stop/recovery of apps run under a monitor that writes a status file."""

    def __init__(self, limiter: trio.CapacityLimiter | None = None) -> None:
        self.limiter = limiter or trio.CapacityLimiter(4)
        # (pod, app) -> the monitor of an app that ended by its note, still exiting
        self._exiting: dict[tuple[str, str], ProcessWatch] = {}

    async def previous_gone(self, pod_uuid: str, app: str) -> None:
        """Once the monitor of the app's previous run (that ended by its note) has exited,
        before it runs again: one app's monitors never overlap."""
        watch = self._exiting.pop((pod_uuid, app), None)
        if watch is None:
            return
        try:
            with trio.move_on_after(KILL_CONFIRM_TIMEOUT) as late:
                await watch.wait_exited()
            if late.cancelled_caught:  # it sent its note: nothing of the app is left to lose
                await self._thread(watch.send_signal, signal.SIGKILL)
                with trio.fail_after(KILL_CONFIRM_TIMEOUT):
                    await watch.wait_exited()
        finally:
            watch.close()

    def forget_exiting(self, pod_uuid: str) -> None:
        """The pod's sandbox goes (its processes are killed with it): no monitor to wait for."""
        for key in [key for key in self._exiting if key[0] == pod_uuid]:
            self._exiting.pop(key).close()

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def prepare_app(self, planned: SandboxHandle, app: AppSpec, *, tty: bool) -> None:
        """Nothing to ready before the start (IsolationDriver.prepare_app)."""
        del planned, app, tty

    def started(self, app: AppSpec, lines: list[str], status_path: Path,
                 stdio: Stdio | None, log_path: Path, *, early: EarlyWatch | None = None
                 ) -> AppProcess:
        """The app its monitor reported, identified and watched (blocks: see the module),
        unless ``early`` did that already for its pid (``reported_pid``): then it does not
        block."""
        pid = reported_pid(lines)
        errors = [line[len("error "):] for line in lines if line.startswith("error ")]
        if errors or "ready" not in lines or pid is None:
            if pid is not None:
                # The monitor reported a failure and exits by itself; make sure of it
                # (through its pidfd when it was watched early: that process and no other).
                found = early.take(pid) if early is not None else None
                try:
                    if found is not None:
                        found[1].send_signal(signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finally:
                    if found is not None:
                        found[1].close()
            reason = errors[0] if errors else f"the stage1 helper ended early ({lines})"
            raise IsolationError(f"app {app.name}: {reason}")
        found = early.take(pid) if early is not None else None
        if found is not None:
            identity, watch = found
        else:
            identity = identify(pid)
            opened = open_watch(identity)
            if opened is None:
                raise IsolationError(f"app {app.name}: its monitor (pid {pid}) vanished")
            watch = opened
        return AppProcess(app.name, identity, status_path,
                          None if stdio is not None else log_path, watch)

    async def wait(self, handle: SandboxHandle, process: AppProcess) -> ExitStatus:
        if process.note is not None:
            noted = await process.note.status()
            if noted is not None:
                if process.watch is not None:  # its monitor is still on its way out
                    self._exiting[(handle.pod_uuid, process.app)] = process.watch
                    process.watch = None
                return noted
        watch = process.watch or await self._thread(open_watch, process.identity)
        if watch is not None:
            await watch.wait_exited()
            if watch is not process.watch:
                watch.close()
        status = await self._thread(read_status, process.status_path)
        # No status: the monitor itself was killed (SIGKILL after the stop grace).
        return status or ExitStatus(signal=signal.SIGKILL)

    async def signal(self, handle: SandboxHandle, process: AppProcess, signum: int) -> None:
        del handle
        if process.watch is None:
            process.watch = await self._thread(open_watch, process.identity)
        if process.watch is not None:
            # The pid-1 monitor forwards it to the app (SIGKILL ends the monitor and so all).
            # FreeBSD's watch checks the pid's identity (ps) before it signals.
            await self._thread(process.watch.send_signal, signum)

    async def stop(
        self, handle: SandboxHandle, process: AppProcess, grace: float
    ) -> ExitStatus:
        await self.signal(handle, process, signal.SIGTERM)
        with trio.move_on_after(grace):
            return await self.wait(handle, process)
        await self.signal(handle, process, signal.SIGKILL)
        with trio.fail_after(KILL_CONFIRM_TIMEOUT):
            return await self.wait(handle, process)

    async def recover_app(
        self, handle: SandboxHandle, process_json: Mapping[str, Any]
    ) -> AppProcess | None:
        del handle
        process = AppProcess.from_json(process_json)
        process.watch = await self._thread(open_watch, process.identity)
        return process if process.watch is not None else None

    async def last_status(self, process: AppProcess) -> ExitStatus | None:
        try:
            result: ExitStatus | None = await self._thread(read_status, process.status_path)
        except JetpackError:
            return None
        return result
