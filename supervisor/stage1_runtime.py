"""``PodRuntime`` over the real machinery: the storage driver mounts each app's rootfs clone,
the stage1 isolation driver runs the sandbox and apps, the network layer wires the pod up.

Prepare stores everything needed to run (a stage1 ``AppSpec`` per app, the sandbox's volumes),
so starting a pod reads no manifest. Log files live at ``<root>/pods/<uuid>/logs/<app>.log``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from jetpack.config import Config
from jetpack.errors import IsolationError
from jetpack.stage1.base import AppProcess as Stage1Process
from jetpack.stage1.base import (
    AppSpec,
    IsolationDriver,
    SandboxHandle,
    SandboxSpec,
    Stdio,
    Volume,
)
from jetpack.stage2.paths import write_file_in_root
from jetpack.store.pods import AppRecord, PodRecord
from jetpack.supervisor.runtime import AppProcess, ExitStatus
from jetpack.supervisor.terminal import PtyRelay


class RootfsProvider(Protocol):
    """Where each app's rootfs comes from (the storage driver's clones)."""

    def mount_app(self, pod_uuid: str, app: str) -> Path:
        """Make the app's rootfs clone available (mount an overlay, a ZFS clone); idempotent."""
        ...

    def unmount_pod(self, pod_uuid: str) -> None:
        """Undo ``mount_app`` for every app of the pod; idempotent."""
        ...


def pod_dir(config: Config, pod_uuid: str) -> Path:
    return config.root / "pods" / pod_uuid


def app_log_path(config: Config, pod_uuid: str, app: str) -> Path:
    return pod_dir(config, pod_uuid) / "logs" / f"{app}.log"


def sandbox_spec(config: Config, pod: PodRecord) -> SandboxSpec:
    plan = pod.options.get("sandbox", {})
    volumes = tuple(Volume(**v) for v in plan.get("volumes", []))
    return SandboxSpec(
        pod_uuid=pod.uuid, hostname=pod.name, pod_dir=pod_dir(config, pod.uuid),
        volumes=volumes, annotations=dict(plan.get("annotations", {})), ip4=pod.ip,
    )


class PodNetworkPlan(Protocol):
    def expect(self, pod_uuid: str, ip: str | None,
               forwards: list[tuple[str, int, int, str | None]]) -> None: ...


class Stage1Runtime:
    def __init__(self, config: Config, driver: IsolationDriver, rootfs: RootfsProvider,
                 network: PodNetworkPlan | None = None,
                 metadata_url: Callable[[PodRecord], str] | None = None) -> None:
        self.config = config
        self.driver = driver
        self.rootfs = rootfs
        self.network = network
        self.metadata_url = metadata_url
        self._limiter = trio.CapacityLimiter(2)
        self._live: dict[tuple[str, int], Stage1Process] = {}
        self._terminals: dict[tuple[str, str], PtyRelay] = {}

    def terminal(self, pod_uuid: str, app: str) -> PtyRelay | None:
        """The terminal of an app started with one (``run -t``), while it runs."""
        return self._terminals.get((pod_uuid, app))

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _expect_network(self, pod: PodRecord) -> None:
        if self.network is not None:
            forwards = [(p["protocol"], int(p["host_port"]), int(p["pod_port"]), p.get("host_ip"))
                        for p in pod.options.get("ports", [])]
            self.network.expect(pod.uuid, pod.ip, forwards)

    async def create_sandbox(self, pod: PodRecord) -> dict[str, Any]:
        self._expect_network(pod)
        cgroup_dirs = await self._thread(self._create_cgroup, pod)
        try:
            handle = await self.driver.create_sandbox(sandbox_spec(self.config, pod))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._thread(self._remove_cgroup, pod)
            raise
        return {**handle.to_json(), "cgroup_dirs": cgroup_dirs}

    def _create_cgroup(self, pod: PodRecord) -> list[str]:
        """The pod's cgroup with its limits (Linux); apps join it before they start."""
        if self.driver.name != "linux":
            return []
        from jetpack.stage1.cgroups import Limits, PodCgroup

        raw = pod.options.get("limits") or {}
        limits = Limits(memory_bytes=raw.get("memory_bytes"),
                        cpu_millicores=raw.get("cpu_millicores"),
                        pids=raw.get("pids", Limits().pids))
        cgroup = PodCgroup.for_pod(pod.uuid)
        cgroup.create(limits)
        return [str(d) for d in cgroup.directories()]

    def _remove_cgroup(self, pod: PodRecord) -> None:
        if self.driver.name != "linux":
            return
        from jetpack.stage1.cgroups import PodCgroup

        PodCgroup.for_pod(pod.uuid).remove()

    def _app_spec(self, pod: PodRecord, app: AppRecord, rootfs: Path,
                  cgroup_dirs: list[str]) -> AppSpec:
        stored = json.loads(app.spec) if app.spec else {}
        if not stored:
            raise IsolationError(f"pod {pod.name}: app {app.name} has no launch plan "
                                 "(prepared by an older jetpack?)")
        url = self.metadata_url(pod) if self.metadata_url is not None else ""
        stored.update(rootfs=str(rootfs), metadata_url=url,
                      log_path=str(app_log_path(self.config, pod.uuid, app.name)),
                      cgroup_dirs=cgroup_dirs)
        return AppSpec.from_json(stored)

    async def start_app(self, pod: PodRecord, sandbox: dict[str, Any], app: AppRecord
                        ) -> AppProcess:
        rootfs = await self._thread(self.rootfs.mount_app, pod.uuid, app.name)
        if not pod.options.get("keep_image_etc"):
            await self._thread(self._write_etc, pod, rootfs)
        spec = self._app_spec(pod, app, rootfs, list(sandbox.get("cgroup_dirs", [])))
        stdio = None
        wants_tty = bool(pod.options.get("tty")) and pod.apps and pod.apps[0].name == app.name
        if wants_tty:
            master, slave = os.openpty()
            stdio = Stdio(slave, slave, slave)
        try:
            process = await self.driver.start_app(SandboxHandle.from_json(sandbox), spec,
                                                  stdio=stdio)
        except BaseException:
            if stdio is not None:
                os.close(master)
            raise
        finally:
            if stdio is not None:
                os.close(slave)
        if stdio is not None:
            self._terminals[(pod.uuid, app.name)] = PtyRelay(master)
        self._live[(pod.uuid, process.identity.pid)] = process
        return AppProcess(app.name, process.identity.pid, str(process.identity.start_time),
                          state={"sandbox": sandbox, "process": process.to_json()})

    def _write_etc(self, pod: PodRecord, rootfs: Path) -> None:
        """The pod's /etc/resolv.conf and /etc/hosts in the app's rootfs (its own clone).

        /etc is resolved inside the rootfs (an image's ``etc -> /somewhere`` leads to the
        rootfs's own /somewhere, never the host's) and each file is renamed over whatever is
        there, a symlink included, never written through it."""
        from jetpack.stage1.network.etc import pod_hosts, pod_resolv_conf

        for name, text in (("resolv.conf", pod_resolv_conf(self.config)),
                           ("hosts", pod_hosts(pod.name, pod.ip))):
            try:
                write_file_in_root(rootfs, f"/etc/{name}", text.encode())
            except OSError as exc:
                raise IsolationError(f"pod {pod.name}: cannot write /etc/{name} in {rootfs}: "
                                     f"{exc.strerror}") from None

    def _process(self, pod: PodRecord, process: AppProcess) -> Stage1Process:
        live = self._live.get((pod.uuid, process.pid))
        if live is None:
            raise IsolationError(f"pod {pod.name}: app {process.app} is not watched")
        return live

    async def wait_app(self, pod: PodRecord, process: AppProcess) -> ExitStatus:
        live = self._process(pod, process)
        handle = SandboxHandle.from_json(process.state["sandbox"])
        terminal = self._terminals.get((pod.uuid, process.app))
        try:
            async with trio.open_nursery() as nursery:
                if terminal is not None:
                    nursery.start_soon(terminal.pump)
                status = await self.driver.wait(handle, live)
                if terminal is not None:
                    with trio.move_on_after(1):  # the last output, until the pty says EOF
                        await terminal.ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._live.pop((pod.uuid, process.pid), None)
            live.close()
            if terminal is not None:
                self._terminals.pop((pod.uuid, process.app), None)
                terminal.close()
        return ExitStatus(code=status.code, signal=status.signal)

    async def stop_app(self, pod: PodRecord, process: AppProcess, grace: float) -> None:
        live = self._live.get((pod.uuid, process.pid))
        if live is not None:
            handle = SandboxHandle.from_json(process.state["sandbox"])
            await self.driver.stop(handle, live, grace)

    async def signal_app(self, pod: PodRecord, process: AppProcess, signum: int) -> None:
        live = self._process(pod, process)
        await self.driver.signal(SandboxHandle.from_json(process.state["sandbox"]), live, signum)

    async def destroy_sandbox(self, pod: PodRecord, sandbox: dict[str, Any]) -> None:
        self._expect_network(pod)
        try:
            if sandbox:
                await self.driver.destroy_sandbox(SandboxHandle.from_json(sandbox))
        finally:
            with trio.CancelScope(shield=True):
                await self._thread(self._remove_cgroup, pod)
                await self._thread(self.rootfs.unmount_pod, pod.uuid)

    async def recover(self, pod: PodRecord, sandbox: dict[str, Any]
                      ) -> dict[str, AppProcess] | None:
        if not sandbox:
            return None
        self._expect_network(pod)
        handle = await self.driver.recover(sandbox)
        if handle is None:
            return None
        found: dict[str, AppProcess] = {}
        for app in pod.apps:
            record = app.process
            if not record:
                continue
            live = await self.driver.recover_app(handle, record)
            if live is None:
                continue
            self._live[(pod.uuid, live.identity.pid)] = live
            found[app.name] = AppProcess(app.name, live.identity.pid,
                                         str(live.identity.start_time),
                                         state={"sandbox": handle.to_json(),
                                                "process": live.to_json()})
        return found


def open_runtime(config: Config) -> Stage1Runtime:
    """The runtime ``jetpack daemon`` uses: the configured storage, isolation and network."""
    import ipaddress

    from jetpack.keys import load_key
    from jetpack.mds.identity import pod_token
    from jetpack.stage1.drivers import isolation_driver
    from jetpack.stage1.network.hook import pod_network
    from jetpack.storage import open_storage

    network = pod_network(config)
    network.setup_host()
    driver = isolation_driver(config, network=network)
    host = ipaddress.IPv4Interface(config["jail.network"]).ip
    port = config["mds.port"]
    token_key = load_key(config, "mds.token-key")

    def metadata_url(pod: PodRecord) -> str:
        return f"http://{host}:{port}/{pod_token(token_key, pod.uuid)}"

    return Stage1Runtime(config, driver, open_storage(config), network, metadata_url)
