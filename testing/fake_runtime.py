"""The fake runtime that ships with the product: a scriptable in-memory ``PodRuntime`` whose
apps run for N seconds and exit with code K, ignore SIGTERM, or fail to start, and whose
sandboxes can fail, with a ``JetpackError`` or any exception (a host surprise, a bug). The
supervisor's tests drive it under trio's virtual clock; the benchmarks run a daemon on it.

The fake's state (its "machine") outlives any one PodManager, so a test can drop a supervisor
and let a new one adopt what still "runs", as after ``kill -9`` of the daemon.
"""

from __future__ import annotations

import itertools
import signal
from dataclasses import dataclass, field
from pathlib import Path

import trio

from jetpack.errors import IsolationError
from jetpack.stage1.base import AppProcess, ExitStatus, ProcessIdentity
from jetpack.store.pods import AppRecord, PodRecord
from jetpack.supervisor.runtime import Sandbox


@dataclass
class Behaviour:
    """One run of an app: exit with ``code`` after ``runs_for`` seconds (None: until stopped).

    ``fails_to_start``: True makes ``start_app`` raise ``IsolationError``; an exception makes
    it raise that one. ``lost_with``: ``wait_app`` raises this when the run ends, as a runtime
    that lost track of its app would.
    """

    runs_for: float | None = None
    code: int = 0
    ignores_sigterm: bool = False
    fails_to_start: bool | Exception = False
    lost_with: Exception | None = None


@dataclass
class FakeProcess:
    pod: str
    app: str
    pid: int
    behaviour: Behaviour
    exited: trio.Event = field(default_factory=trio.Event)
    status: ExitStatus | None = None

    def end(self, status: ExitStatus) -> None:
        if self.status is None:
            self.status = status
            self.exited.set()


class FakeRuntime:
    """``script[app name]`` lists behaviours for successive runs; the last one repeats.

    ``fail_sandbox``: True makes ``create_sandbox`` raise ``IsolationError``; an exception
    makes it raise that one. ``teardown_for``: how long ``destroy_sandbox`` takes.
    """

    def __init__(self, script: dict[str, list[Behaviour]] | None = None) -> None:
        self.script = script or {}
        self.runs: dict[str, int] = {}
        self.processes: dict[int, FakeProcess] = {}
        self.sandboxes: set[str] = set()
        self.log: list[tuple[float, str, str]] = []  # (time, what, app or pod)
        self._pids = itertools.count(1000)
        self.fail_sandbox: bool | Exception = False
        self.teardown_for = 0.0  # seconds destroy_sandbox takes

    def _behaviour(self, app: str) -> Behaviour:
        plan = self.script.get(app, [Behaviour()])
        run = self.runs.get(app, 0)
        self.runs[app] = run + 1
        return plan[min(run, len(plan) - 1)]

    def running(self, pod: str | None = None) -> list[FakeProcess]:
        return [p for p in self.processes.values()
                if p.status is None and (pod is None or p.pod == pod)]

    async def _lifetime(self, process: FakeProcess) -> None:
        if process.behaviour.runs_for is None:
            return
        with trio.move_on_after(process.behaviour.runs_for):
            await process.exited.wait()
        process.end(ExitStatus(code=process.behaviour.code))

    # --- PodRuntime ---------------------------------------------------------------------------

    async def plan_sandbox(self, pod: PodRecord) -> Sandbox:
        await trio.lowlevel.checkpoint()
        return {"fake": pod.uuid}

    async def create_sandbox(self, pod: PodRecord) -> Sandbox:
        await trio.lowlevel.checkpoint()
        if isinstance(self.fail_sandbox, Exception):
            raise self.fail_sandbox
        if self.fail_sandbox:
            raise IsolationError("fake sandbox refused")
        self.sandboxes.add(pod.uuid)
        self.log.append((trio.current_time(), "sandbox", pod.uuid))
        return {"fake": pod.uuid}

    async def start_app(self, pod: PodRecord, sandbox: Sandbox, app: AppRecord) -> AppProcess:
        await trio.lowlevel.checkpoint()
        behaviour = self._behaviour(app.name)
        if isinstance(behaviour.fails_to_start, Exception):
            raise behaviour.fails_to_start
        if behaviour.fails_to_start:
            raise IsolationError(f"fake app {app.name} refused to start")
        process = FakeProcess(pod.uuid, app.name, next(self._pids), behaviour)
        self.processes[process.pid] = process
        self.log.append((trio.current_time(), "start", app.name))
        trio.lowlevel.spawn_system_task(self._lifetime, process)
        return _process(app.name, process.pid)

    async def wait_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess
                       ) -> ExitStatus:
        fake = self.processes[process.identity.pid]
        await fake.exited.wait()
        assert fake.status is not None
        self.log.append((trio.current_time(), "exit", process.app))
        if fake.behaviour.lost_with is not None:
            raise fake.behaviour.lost_with
        return fake.status

    async def stop_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess,
                       grace: float) -> None:
        fake = self.processes[process.identity.pid]
        if not fake.behaviour.ignores_sigterm:
            fake.end(ExitStatus(signal=signal.SIGTERM))
        else:
            with trio.move_on_after(grace):
                await fake.exited.wait()
            fake.end(ExitStatus(signal=signal.SIGKILL))
        await fake.exited.wait()

    async def signal_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess,
                         signum: int) -> None:
        await trio.lowlevel.checkpoint()
        fake = self.processes[process.identity.pid]
        if signum != signal.SIGTERM or not fake.behaviour.ignores_sigterm:
            fake.end(ExitStatus(signal=signum))

    async def destroy_sandbox(self, pod: PodRecord, sandbox: Sandbox) -> None:
        await trio.sleep(self.teardown_for)
        if self.running(pod.uuid):
            raise IsolationError("fake sandbox destroyed with apps running")
        self.sandboxes.discard(pod.uuid)
        self.log.append((trio.current_time(), "destroy", pod.uuid))

    async def recover(self, pod: PodRecord, sandbox: Sandbox) -> dict[str, AppProcess] | None:
        await trio.lowlevel.checkpoint()
        if pod.uuid not in self.sandboxes:
            return None
        return {p.app: _process(p.app, p.pid) for p in self.running(pod.uuid)}


def _process(app: str, pid: int) -> AppProcess:
    """A fake app's process record, as a driver would report it (no status file, no watch)."""
    return AppProcess(app, ProcessIdentity(pid, pid), Path(f"/fake/{pid}/status"), None)
