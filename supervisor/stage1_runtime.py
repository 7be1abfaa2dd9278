"""``PodRuntime`` over a stage1 isolation driver: a thin adapter whose one job is to map the pod
store's records to the driver's typed specs (and to mount each app's rootfs the spec names).

Everything platform-specific is the driver's (cgroups, /etc files, the network attachment; see
stage1.base); this module never asks which platform it runs on. Prepare stores what running needs
(a stage1 ``AppSpec`` per app, the pod's options), so starting a pod reads no manifest. Log files
live at ``<root>/pods/<uuid>/logs/<app>.log``. An app started with a terminal (``run -t``, the
pod's first app) gets a pty whose relay the control socket attaches to (``terminal``).

The apps' rootfs mounts need no sandbox: ``create_sandbox`` starts them (one worker thread, app
by app) while the driver makes the sandbox, and each app's first ``start_app`` takes its mount
from there; a restart mounts again (``mount_app`` is idempotent). Whoever unmounts the pod
(``destroy_sandbox``, a failed ``create_sandbox``) waits for those mounts first. In the same
thread, right after each mount, the driver readies that app's first start in the planned sandbox
(``prepare_app``: its launch document); a failed ``create_sandbox`` removes, once that thread
ended, what those wrote in the planned sandbox (``destroy_sandbox`` of the planned handle).
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
from jetpack.killpoint import killpoint
from jetpack.stage1.base import (
    AppProcess,
    AppSpec,
    ExitStatus,
    IsolationDriver,
    NetworkPlan,
    SandboxHandle,
    SandboxSpec,
    Stdio,
)
from jetpack.stage1.network.etc import pod_hosts, pod_resolv_conf
from jetpack.stage1.network.ports import as_forwards
from jetpack.store.pods import AppRecord, PodRecord
from jetpack.supervisor.runtime import Sandbox
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
    """The pod's record as the driver's spec (reads the host's resolv.conf: a worker thread)."""
    options = pod.options
    network = None
    if pod.ip is not None:
        forwards = as_forwards((p.protocol, p.host_port, p.pod_port, p.host_ip)
                               for p in options.ports)
        network = NetworkPlan(pod.ip, tuple(forwards))
    etc_files = {} if options.keep_image_etc else {
        "resolv.conf": pod_resolv_conf(config), "hosts": pod_hosts(pod.name, pod.ip)}
    return SandboxSpec(
        pod_uuid=pod.uuid, hostname=pod.name, pod_dir=pod_dir(config, pod.uuid),
        volumes=options.volumes, annotations=options.annotations, network=network,
        limits=options.limits, etc_files=etc_files,
    )


class Stage1Runtime:
    def __init__(self, config: Config, driver: IsolationDriver, rootfs: RootfsProvider,
                 metadata_url: Callable[[PodRecord], str] | None = None) -> None:
        self.config = config
        self.driver = driver
        self.rootfs = rootfs
        self.metadata_url = metadata_url
        self._limiter = trio.CapacityLimiter(2)
        self._terminals: dict[tuple[str, str], PtyRelay] = {}
        self._mounting: dict[str, _Mounting] = {}  # by pod: mounts started by create_sandbox
        # by pod: plan_sandbox's spec and handle, for create_sandbox
        self._plans: dict[str, tuple[SandboxSpec, SandboxHandle]] = {}

    def terminal(self, pod_uuid: str, app: str) -> PtyRelay | None:
        """The terminal of an app started with one (``run -t``), while it runs."""
        return self._terminals.get((pod_uuid, app))

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def plan_sandbox(self, pod: PodRecord) -> Sandbox:
        def plan() -> tuple[SandboxSpec, SandboxHandle]:
            spec = sandbox_spec(self.config, pod)
            return spec, self.driver.plan_sandbox(spec)

        planned: SandboxHandle
        spec, planned = await self._thread(plan)
        self._plans[pod.uuid] = spec, planned  # what create_sandbox makes (and prepares in)
        return planned.to_json()

    async def create_sandbox(self, pod: PodRecord) -> Sandbox:
        plan = self._plans.pop(pod.uuid, None)
        planned = None if plan is None else plan[1]
        mounting = self._mount_soon(pod, planned)
        try:
            if plan is None:
                spec = await self._thread(sandbox_spec, self.config, pod)
            else:
                spec = plan[0]
            handle = await self.driver.create_sandbox(spec)
        except BaseException:
            with trio.CancelScope(shield=True):  # no sandbox recorded: nobody else unmounts
                try:
                    await mounting.done.wait()
                    if mounting.prepared and planned is not None:
                        # what prepare_app wrote after the driver removed the sandbox
                        await self.driver.destroy_sandbox(planned)
                finally:
                    await self._unmount_pod(pod.uuid)
            raise
        return handle.to_json()

    def _mount_soon(self, pod: PodRecord, planned: SandboxHandle | None) -> _Mounting:
        """Mount the apps' rootfs in a worker thread, in the pod's app order, each app's
        start prepared in the ``planned`` sandbox right after its mount; the first mount
        failure ends it (``start_app`` of that app raises it, which fails the start)."""
        mounting = _Mounting()
        self._mounting[pod.uuid] = mounting

        def mount_all() -> dict[str, Path | Exception]:
            made: dict[str, Path | Exception] = {}
            for app in pod.apps:
                try:
                    made[app.name] = rootfs = self.rootfs.mount_app(pod.uuid, app.name)
                except Exception as exc:  # noqa: BLE001  # raised by that app's start_app
                    made[app.name] = exc
                    break
                if planned is not None:
                    try:
                        spec: AppSpec | None = self._app_spec(pod, app, rootfs)
                    except Exception:  # noqa: BLE001  # raised by that app's start_app
                        spec = None
                    if spec is not None:
                        mounting.prepared = True  # first: a prepare may write, then fail
                        self.driver.prepare_app(planned, spec, tty=_wants_tty(pod, app))
            return made

        async def run() -> None:
            try:
                mounting.rootfs = await self._thread(mount_all)
            finally:
                mounting.done.set()

        trio.lowlevel.spawn_system_task(run, name=f"mount {pod.uuid}")
        return mounting

    async def _rootfs(self, pod: PodRecord, app: AppRecord) -> Path:
        """The app's mounted rootfs: the one ``create_sandbox`` started, once."""
        mounting = self._mounting.get(pod.uuid)
        if mounting is not None:
            await mounting.done.wait()
            made = mounting.rootfs.pop(app.name, None)
            if isinstance(made, Exception):
                raise made
            if made is not None:
                return made
        path: Path = await self._thread(self.rootfs.mount_app, pod.uuid, app.name)
        return path

    async def _unmount_pod(self, pod_uuid: str) -> None:
        mounting = self._mounting.pop(pod_uuid, None)
        if mounting is not None:
            await mounting.done.wait()  # else a mount still in flight would stay
        await self._thread(self.rootfs.unmount_pod, pod_uuid)

    def _app_spec(self, pod: PodRecord, app: AppRecord, rootfs: Path) -> AppSpec:
        stored = json.loads(app.spec) if app.spec else {}
        if not stored:
            raise IsolationError(f"pod {pod.name}: app {app.name} has no launch plan "
                                 "(prepared by an older jetpack?)")
        url = self.metadata_url(pod) if self.metadata_url is not None else ""
        stored.update(rootfs=str(rootfs), metadata_url=url,
                      log_path=str(app_log_path(self.config, pod.uuid, app.name)))
        return AppSpec.from_json(stored)

    async def start_app(self, pod: PodRecord, sandbox: Sandbox, app: AppRecord) -> AppProcess:
        rootfs = await self._rootfs(pod, app)
        killpoint("start.rootfs-mounted")
        spec = self._app_spec(pod, app, rootfs)
        stdio = None
        if _wants_tty(pod, app):
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
        return process

    async def wait_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess
                       ) -> ExitStatus:
        if process.watch is None:
            raise IsolationError(f"pod {pod.name}: app {process.app} is not watched")
        handle = SandboxHandle.from_json(sandbox)
        terminal = self._terminals.get((pod.uuid, process.app))
        try:
            async with trio.open_nursery() as nursery:
                if terminal is not None:
                    nursery.start_soon(terminal.pump)
                status = await self.driver.wait(handle, process)
                if terminal is not None:
                    with trio.move_on_after(1):  # the last output, until the pty says EOF
                        await terminal.ended.wait()
                nursery.cancel_scope.cancel()
        finally:
            process.close()
            if terminal is not None:
                self._terminals.pop((pod.uuid, process.app), None)
                terminal.close()
        return status

    async def stop_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess,
                       grace: float) -> None:
        if process.watch is not None:  # else its wait has ended: nothing left to stop
            await self.driver.stop(SandboxHandle.from_json(sandbox), process, grace)

    async def signal_app(self, pod: PodRecord, sandbox: Sandbox, process: AppProcess,
                         signum: int) -> None:
        if process.watch is None:
            raise IsolationError(f"pod {pod.name}: app {process.app} is not watched")
        await self.driver.signal(SandboxHandle.from_json(sandbox), process, signum)

    async def destroy_sandbox(self, pod: PodRecord, sandbox: Sandbox) -> None:
        """An empty ``sandbox`` (its creation was cut before the handle was recorded) is
        removed by the handle the driver would have made."""
        try:
            if sandbox:
                await self.driver.destroy_sandbox(SandboxHandle.from_json(sandbox))
            else:
                spec = await self._thread(sandbox_spec, self.config, pod)
                planned = await self._thread(self.driver.plan_sandbox, spec)
                await self.driver.destroy_sandbox(planned)
        finally:
            with trio.CancelScope(shield=True):
                await self._unmount_pod(pod.uuid)

    async def recover(self, pod: PodRecord, sandbox: Sandbox) -> dict[str, AppProcess] | None:
        if not sandbox:
            return None
        handle = await self.driver.recover(sandbox)
        if handle is None:
            return None
        found: dict[str, AppProcess] = {}
        for app in pod.apps:
            if app.process:
                live = await self.driver.recover_app(handle, app.process)
                if live is not None:
                    found[app.name] = live
        return found


def _wants_tty(pod: PodRecord, app: AppRecord) -> bool:
    """A terminal is the stdio of the pod's first app when it was started with one."""
    return bool(pod.options.tty and pod.apps and pod.apps[0].name == app.name)


class _Mounting:
    """The rootfs mounts ``create_sandbox`` started for a pod: by app, its rootfs or why
    mounting it failed (taken by the app's first ``start_app``); ``done`` once they ended;
    ``prepared`` once the driver was asked to prepare an app's start."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.rootfs: dict[str, Path | Exception] = {}
        self.prepared = False


def open_runtime(config: Config) -> Stage1Runtime:
    """The runtime ``jetpack daemon`` uses: the configured storage and the platform's drivers."""
    import ipaddress

    from jetpack.keys import load_key
    from jetpack.mds.tokens import pod_token
    from jetpack.stage1.drivers import isolation_driver
    from jetpack.storage import open_storage

    driver = isolation_driver(config, setup_host=True)
    host = ipaddress.IPv4Interface(config["jail.network"]).ip
    port = config["mds.port"]
    token_key = load_key(config, "mds.token-key")

    def metadata_url(pod: PodRecord) -> str:
        return f"http://{host}:{port}/{pod_token(token_key, pod.uuid)}"

    return Stage1Runtime(config, driver, open_storage(config), metadata_url)
