"""What the supervisor needs from the machinery below it: start a pod's sandbox and its apps,
wait for them, stop them, tear down, and find them again after a supervisor restart.

``PodRuntime`` is the supervisor's view of the isolation driver seam, in terms of its own
records: ``jetpack.supervisor.stage1_runtime`` maps those records to a stage1 driver's typed
specs; ``jetpack.testing.fake_runtime.FakeRuntime`` is the scriptable fake the supervisor's tests
and benchmarks run on. Both speak the driver's vocabulary: ``AppProcess`` and ``ExitStatus``.
"""

from __future__ import annotations

from typing import Any, Protocol

from jetpack.stage1.base import AppProcess, ExitStatus
from jetpack.store.pods import AppRecord, PodRecord

__all__ = ["AppProcess", "ExitStatus", "PodRuntime", "Sandbox"]

Sandbox = dict[str, Any]  # the sandbox handle as JSON, recorded with the pod (``pod.runtime``)


class PodRuntime(Protocol):
    async def plan_sandbox(self, pod: PodRecord) -> Sandbox:
        """The state ``create_sandbox`` will return for the pod, made of nothing: the
        supervisor records it with the pod's ``starting``, so that whoever finds a start cut
        short knows what to remove."""
        ...

    async def create_sandbox(self, pod: PodRecord) -> Sandbox:
        """Make the pod's persistent isolation (namespaces / jail, network, volumes); returns
        its JSON-able state, recorded in the database for a later supervisor to adopt (when
        it differs from the one ``plan_sandbox`` gave)."""
        ...

    async def start_app(self, pod: PodRecord, sandbox: Sandbox, app: AppRecord) -> AppProcess:
        """Start one app (pre-start handlers included) in the sandbox."""
        ...

    async def wait_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess
                       ) -> ExitStatus:
        """Wait for the app to exit (post-stop handlers included); works for adopted apps.
        The process is forgotten (``close()``d) once this returns."""
        ...

    async def stop_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess,
                       grace: float) -> None:
        """SIGTERM, ``grace`` seconds, then SIGKILL of all that is left in the app."""
        ...

    async def signal_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess,
                         signum: int) -> None: ...

    async def destroy_sandbox(self, pod: PodRecord, sandbox: Sandbox) -> None:
        """Tear the sandbox down; leaves no process, mount, namespace, veth or rule. An empty
        ``sandbox``: whatever a creation cut short may have made (nothing recorded it)."""
        ...

    async def recover(self, pod: PodRecord, sandbox: Sandbox) -> dict[str, AppProcess] | None:
        """The apps of a pod a previous supervisor started that still run (by name), or
        None when the sandbox itself is gone."""
        ...
