"""What the supervisor needs from the machinery below it: start a pod's sandbox and its apps,
wait for them, stop them, tear down, and find them again after a supervisor restart.

``PodRuntime`` is the seam; ``jetpack.supervisor.stage1_runtime`` implements it with the
storage driver and a stage1 isolation driver; ``jetpack.testing.fake_runtime.FakeRuntime`` is
the scriptable fake the supervisor's tests and benchmarks run on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from jetpack.store.pods import AppRecord, PodRecord


@dataclass(frozen=True)
class ExitStatus:
    """How an app process ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    @property
    def failed(self) -> bool:
        return self.code != 0

    def payload(self) -> dict[str, int]:
        if self.signal is not None:
            return {"signal": self.signal}
        return {"exit_status": self.code if self.code is not None else -1}


@dataclass
class AppProcess:
    """A running app as the runtime reports it; ``state`` is the runtime's own (JSON-able)."""

    app: str
    pid: int
    start_time: str  # /proc/PID/stat starttime (or the platform's): pid + this is unique
    state: dict[str, Any] = field(default_factory=dict)


class PodRuntime(Protocol):
    async def create_sandbox(self, pod: PodRecord) -> dict[str, Any]:
        """Make the pod's persistent isolation (namespaces / jail, network, volumes); returns
        its JSON-able state, recorded in the database for a later supervisor to adopt."""
        ...

    async def start_app(
        self, pod: PodRecord, sandbox: dict[str, Any], app: AppRecord
    ) -> AppProcess:
        """Start one app (pre-start handlers included) in the sandbox."""
        ...

    async def wait_app(self, pod: PodRecord, process: AppProcess) -> ExitStatus:
        """Wait for the app to exit (post-stop handlers included); works for adopted apps."""
        ...

    async def stop_app(self, pod: PodRecord, process: AppProcess, grace: float) -> None:
        """SIGTERM, ``grace`` seconds, then SIGKILL of all that is left in the app."""
        ...

    async def signal_app(self, pod: PodRecord, process: AppProcess, signum: int) -> None: ...

    async def destroy_sandbox(self, pod: PodRecord, sandbox: dict[str, Any]) -> None:
        """Tear the sandbox down; leaves no process, mount, namespace, veth or rule."""
        ...

    async def recover(
        self, pod: PodRecord, sandbox: dict[str, Any]
    ) -> dict[str, AppProcess] | None:
        """The apps of a pod a previous supervisor started that still run (by name), or
        None when the sandbox itself is gone."""
        ...
