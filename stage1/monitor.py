"""What both drivers share about a running app: its monitor process, watched by pid + start time.

An app's monitor (pid 1 of its pid namespace on Linux, a host process around jexec on FreeBSD)
reports ``pid N`` and ``ready`` (or ``error ...``) on a pipe, then writes the status file.
Checking a pid's identity reads /proc (Linux) or runs ps(1) (FreeBSD): always in a worker
thread, so ``started`` (synchronous) is for a worker thread too.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from jetpack.errors import IsolationError, JetpackError
from jetpack.stage1.base import AppProcess, AppSpec, ExitStatus, SandboxHandle, Stdio
from jetpack.stage1.proc import identify, open_watch, read_status

KILL_CONFIRM_TIMEOUT = 10.0


async def read_report(fd: int) -> list[str]:
    """Every line the helper and the app's monitor report, until both have closed the pipe."""
    chunks = []
    async with trio.lowlevel.FdStream(fd) as stream:
        while data := await stream.receive_some():
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace").splitlines()


class MonitoredApps:
    """wait/signal/stop/recovery of apps run under a monitor that writes a status file."""

    limiter: trio.CapacityLimiter

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def prepare_app(self, planned: SandboxHandle, app: AppSpec, *, tty: bool) -> None:
        """Nothing to ready before the start (IsolationDriver.prepare_app)."""
        del planned, app, tty

    def started(self, app: AppSpec, lines: list[str], status_path: Path,
                 stdio: Stdio | None, log_path: Path) -> AppProcess:
        """The app its monitor reported, identified and watched (blocks: see the module)."""
        pid = next((int(line.split()[1]) for line in lines if line.startswith("pid ")), None)
        errors = [line[len("error "):] for line in lines if line.startswith("error ")]
        if errors or "ready" not in lines or pid is None:
            if pid is not None:
                # The monitor reported a failure and exits by itself; make sure of it.
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reason = errors[0] if errors else f"the stage1 helper ended early ({lines})"
            raise IsolationError(f"app {app.name}: {reason}")
        identity = identify(pid)
        watch = open_watch(identity)
        if watch is None:
            raise IsolationError(f"app {app.name}: its monitor (pid {pid}) vanished")
        return AppProcess(app.name, identity, status_path,
                          None if stdio is not None else log_path, watch)

    async def wait(self, handle: SandboxHandle, process: AppProcess) -> ExitStatus:
        del handle
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
