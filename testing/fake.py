"""A scriptable fake isolation driver, part of the product: the supervisor's tests drive it.

Each app follows a FakeScript (fail on start, run for N seconds, exit with code K, ignore
SIGTERM); time is trio's clock, so tests run under ``autojump_clock`` with exact times.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from jetpack.errors import IsolationError
from jetpack.stage1.base import (
    AppProcess,
    AppSpec,
    ExitStatus,
    IsolationCapabilities,
    ProcessIdentity,
    SandboxHandle,
    SandboxSpec,
    Stdio,
)


@dataclass(frozen=True)
class FakeScript:
    """How one fake app behaves."""

    fail_on_start: str | None = None  # raise IsolationError(this) from start_app
    run_for: float = float("inf")  # seconds until it exits by itself
    exit_code: int = 0
    ignore_sigterm: bool = False  # only SIGKILL ends it (tests the stop grace)
    enter_exit_code: int = 0


@dataclass
class _FakeApp:
    script: FakeScript
    ends_at: float
    ended: trio.Event = field(default_factory=trio.Event)
    status: ExitStatus | None = None

    def end(self, status: ExitStatus) -> None:
        if self.status is None:
            self.status = status
            self.ended.set()


class FakeDriver:
    """Implements IsolationDriver in memory. ``calls`` records every call for assertions;
    ``scripts`` maps app names to their behaviour (``default`` for the rest)."""

    name = "fake"
    capabilities = IsolationCapabilities(
        name="fake", pid_namespace_per_app=True, enter=True, recover=True,
        network_namespace=False,
    )

    def __init__(self, scripts: Mapping[str, FakeScript] | None = None,
                 default: FakeScript | None = None) -> None:
        self.scripts: dict[str, FakeScript] = dict(scripts or {})
        self.default = default or FakeScript(run_for=0.0)
        self.calls: list[tuple[str, ...]] = []
        self.sandboxes: dict[str, SandboxHandle] = {}
        self._apps: dict[int, _FakeApp] = {}
        self._pids = itertools.count(1000)

    def script(self, app: str, script: FakeScript) -> None:
        self.scripts[app] = script

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        self.calls.append(("create_sandbox", spec.pod_uuid))
        await trio.lowlevel.checkpoint()
        handle = SandboxHandle(self.name, spec.pod_uuid,
                               {"hostname": spec.hostname, "pod_dir": str(spec.pod_dir)})
        self.sandboxes[spec.pod_uuid] = handle
        return handle

    async def start_app(
        self, handle: SandboxHandle, app: AppSpec, *, stdio: Stdio | None = None
    ) -> AppProcess:
        del stdio
        self.calls.append(("start_app", handle.pod_uuid, app.name))
        await trio.lowlevel.checkpoint()
        if handle.pod_uuid not in self.sandboxes:
            raise IsolationError(f"pod {handle.pod_uuid}: no sandbox")
        script = self.scripts.get(app.name, self.default)
        if script.fail_on_start is not None:
            raise IsolationError(script.fail_on_start)
        pid = next(self._pids)
        self._apps[pid] = _FakeApp(script, trio.current_time() + script.run_for)
        return AppProcess(app.name, ProcessIdentity(pid, 0),
                          Path(f"/nonexistent/fake/{pid}/status"), None)

    def _app(self, process: AppProcess) -> _FakeApp:
        try:
            return self._apps[process.identity.pid]
        except KeyError:
            raise IsolationError(f"app {process.app}: not a process of this fake") from None

    async def wait(self, handle: SandboxHandle, process: AppProcess) -> ExitStatus:
        del handle
        app = self._app(process)
        with trio.move_on_at(app.ends_at):
            await app.ended.wait()
        app.end(ExitStatus(code=app.script.exit_code))
        assert app.status is not None
        return app.status

    async def signal(self, handle: SandboxHandle, process: AppProcess, signum: int) -> None:
        del handle
        self.calls.append(("signal", process.app, str(signum)))
        await trio.lowlevel.checkpoint()
        app = self._app(process)
        if signum == signal.SIGKILL or not (signum == signal.SIGTERM
                                            and app.script.ignore_sigterm):
            app.end(ExitStatus(signal=signum))

    async def stop(
        self, handle: SandboxHandle, process: AppProcess, grace: float
    ) -> ExitStatus:
        await self.signal(handle, process, signal.SIGTERM)
        with trio.move_on_after(grace):
            return await self.wait(handle, process)
        await self.signal(handle, process, signal.SIGKILL)
        return await self.wait(handle, process)

    async def enter(
        self,
        handle: SandboxHandle,
        process: AppProcess,
        app: AppSpec,
        argv: Sequence[str],
        *,
        user: str | None = None,
        group: str | None = None,
        tty: bool = False,
        stdio: Stdio | None = None,
    ) -> ExitStatus:
        del handle, user, group, tty, stdio
        self.calls.append(("enter", app.name, *argv))
        await trio.lowlevel.checkpoint()
        fake = self._app(process)
        if fake.status is not None:
            raise IsolationError(f"app {app.name} is not running")
        return ExitStatus(code=fake.script.enter_exit_code)

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        self.calls.append(("destroy_sandbox", handle.pod_uuid))
        await trio.lowlevel.checkpoint()
        self.sandboxes.pop(handle.pod_uuid, None)

    async def recover(self, handle_json: Mapping[str, Any]) -> SandboxHandle | None:
        await trio.lowlevel.checkpoint()
        handle = SandboxHandle.from_json(handle_json)
        return self.sandboxes.get(handle.pod_uuid)

    async def recover_app(
        self, handle: SandboxHandle, process_json: Mapping[str, Any]
    ) -> AppProcess | None:
        del handle
        await trio.lowlevel.checkpoint()
        process = AppProcess.from_json(process_json)
        app = self._apps.get(process.identity.pid)
        if app is None or app.status is not None or trio.current_time() >= app.ends_at:
            return None
        return process

    async def last_status(self, process: AppProcess) -> ExitStatus | None:
        await trio.lowlevel.checkpoint()
        app = self._apps.get(process.identity.pid)
        return None if app is None else app.status
