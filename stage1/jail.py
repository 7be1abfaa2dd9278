"""The FreeBSD isolation driver: one persistent jail per pod, one child jail per app.

The pod jail holds the hostname, address and lifetime (``persist``, like the Linux driver's pinned
namespaces); each app's child jail (``POD.APP``) has the app's own rootfs as its path and inherits
the pod's hostname and address. Apps run under a host-side monitor (jail_monitor) that runs jexec.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

import jetpack
from jetpack.config import Config
from jetpack.errors import IsolationError, NotFoundError
from jetpack.stage1.base import (
    AppProcess,
    AppSpec,
    ExitStatus,
    IsolationCapabilities,
    NetworkAttachment,
    NetworkHook,
    PodVolume,
    SandboxHandle,
    SandboxSpec,
    Stdio,
)
from jetpack.stage1.monitor import MonitoredApps, read_report
from jetpack.stage1.network.etc import write_etc_files
from jetpack.stage1.volumes import check_host_volume, prepare_empty_volume
from jetpack.stage2.credentials import user_name
from jetpack.stage2.paths import make_in_root, open_root, resolve_in_root
from jetpack.stage2.plan import plan_app

ANNOTATION_PREFIX = "jetpack/jail.conf/"
# What every pod jail gets unless config (jail.param.*) or annotations say otherwise.
DEFAULT_PARAMS = {"devfs_ruleset": "4", "securelevel": "2", "enforce_statfs": "2",
                  "children.max": "64"}
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from jetpack.stage1.jail_monitor import main; sys.exit(main(sys.argv[2:]))"
)
_PACKAGE_ROOT = str(Path(jetpack.__file__).resolve().parent.parent)


def jail_params(defaults: Mapping[str, str], configured: Mapping[str, str],
                annotations: Mapping[str, str]) -> dict[str, str]:
    """Built-in defaults < ``jail.param.*`` config < ``jetpack/jail.conf/<param>`` annotations."""
    params = {**defaults, **configured}
    for key, value in annotations.items():
        if key.startswith(ANNOTATION_PREFIX):
            params[key[len(ANNOTATION_PREFIX):]] = value
    for name in params:
        if not name or "=" in name or any(c.isspace() for c in name):
            raise IsolationError(f"jail parameter {name!r} is not a parameter name")
    return params


class JailDriver(MonitoredApps):
    """Isolation with FreeBSD jails, driven through jail(8), jexec(8), jls(8) and nullfs."""

    name = "jail"
    capabilities = IsolationCapabilities(
        name="jail", pid_namespace_per_app=False, enter=True, recover=True,
        network_namespace=False, limits=False,  # rctl(8): to be wired here
    )

    def __init__(self, *, name_prefix: str = "jetpack/", params: Mapping[str, str] | None = None,
                 network: NetworkHook | None = None, python: str = sys.executable,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        self.name_prefix = name_prefix
        self.params = dict(params or {})
        self.network = network
        self.python = python
        self.limiter = limiter or trio.CapacityLimiter(4)
        # Resolved now: jexec runs with the app's environment, whose PATH is the app's own.
        self.jexec = shutil.which("jexec") or "/usr/sbin/jexec"

    @classmethod
    def from_config(cls, config: Config, *, network: NetworkHook | None = None) -> JailDriver:
        return cls(name_prefix=config["jail.namePrefix"], params=config.prefixed("jail.param."),
                   network=network)

    async def _tool(self, *argv: str, check: bool = True) -> str:
        result = await trio.run_process(list(argv), capture_stdout=True, capture_stderr=True,
                                        check=False)
        if check and result.returncode != 0:
            raise IsolationError(f"{' '.join(argv)}: "
                                 f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout.decode(errors="replace") if result.returncode == 0 else ""

    async def _jid(self, name: str) -> int | None:
        out = await self._tool("jls", "-j", name, "jid", check=False)
        return int(out.strip()) if out.strip().isdigit() else None

    # --- sandbox ---------------------------------------------------------------------------------

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        name = f"{self.name_prefix}{spec.pod_uuid}"
        run_dir = spec.pod_dir / "run"
        root = run_dir / "root"
        volumes_dir = spec.pod_dir / "volumes"
        params = jail_params(DEFAULT_PARAMS, self.params, spec.annotations)
        await self._thread(_prepare_dirs, spec, run_dir, root, volumes_dir)
        ip4 = None if spec.network is None else spec.network.ip4
        data: dict[str, Any] = {
            "name": name, "run_dir": str(run_dir), "root": str(root),
            "volumes_dir": str(volumes_dir), "hostname": spec.hostname, "ip4": ip4,
            "network": None if spec.network is None else spec.network.to_json(),
            "etc_files": dict(spec.etc_files),
            "volumes": [_volume_json(v) for v in spec.volumes], "params": params,
        }
        handle = SandboxHandle(self.name, spec.pod_uuid, data)
        try:
            if self.network is not None and spec.network is not None:
                # the pod's lo1 alias and pf anchor
                await self.network.attach(self._attachment(handle))
            argv = ["jail", "-c", f"name={name}", f"path={root}",
                    f"host.hostname={spec.hostname}", "persist", "mount.devfs"]
            argv.append(f"ip4.addr={ip4}" if ip4 else "ip4=disable")
            argv += [f"{k}={v}" for k, v in sorted(params.items())]
            await self._tool(*argv)
            jid = await self._jid(name)
            if jid is None:
                raise IsolationError(f"jail {name} was created but jls does not list it")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.destroy_sandbox(handle)
            raise
        return SandboxHandle(self.name, spec.pod_uuid, {**data, "jid": jid, "ip4": ip4})

    def _attachment(self, handle: SandboxHandle) -> NetworkAttachment:
        return NetworkAttachment(handle.pod_uuid, handle.network_plan(),
                                 jail_name=handle.data["name"])

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        data = handle.data
        apps_dir = Path(data["run_dir"]) / "apps"
        app_names = await self._thread(lambda: sorted(p.name for p in apps_dir.iterdir())
                                       if apps_dir.is_dir() else [])
        for app in app_names:
            await self._remove_app_jail(handle, app)
        if await self._jid(data["name"]) is not None:
            await self._tool("jail", "-r", data["name"])
        if self.network is not None:
            await self.network.detach(self._attachment(handle))
        await self._thread(shutil.rmtree, data["run_dir"], True)

    async def _remove_app_jail(self, handle: SandboxHandle, app: str) -> None:
        child = f"{handle.data['name']}.{app}"
        if await self._jid(child) is not None:
            await self._tool("jail", "-r", child)  # kills every process left in it
        mounts_file = Path(handle.data["run_dir"]) / "apps" / app / "mounts.json"
        mounted: list[str] = await self._thread(_read_mounts, mounts_file)
        for target in reversed(mounted):
            await self._tool("umount", target)
            mounted.remove(target)
            await self._thread(_write_mounts, mounts_file, mounted)

    async def recover(self, handle_json: Mapping[str, Any]) -> SandboxHandle | None:
        handle = SandboxHandle.from_json(handle_json)
        if handle.driver != self.name:
            raise IsolationError(f"pod {handle.pod_uuid} was made by the {handle.driver} driver")
        jid = await self._jid(handle.data["name"])
        return handle if jid is not None and jid == handle.data.get("jid") else None

    # --- apps ------------------------------------------------------------------------------------

    async def start_app(
        self, handle: SandboxHandle, app: AppSpec, *, stdio: Stdio | None = None
    ) -> AppProcess:
        data = handle.data
        child = f"{data['name']}.{app.name}"
        app_dir = Path(data["run_dir"]) / "apps" / app.name
        plan = await self._thread(lambda: plan_app(
            app_name=app.name, rootfs=app.rootfs, argv=app.exec, user=app.user,
            group=app.group, supplementary_gids=app.supplementary_gids,
            working_directory=app.working_directory, environment=app.environment,
            metadata_url=app.metadata_url, pre_start=app.pre_start, post_stop=app.post_stop,
        ))
        user = await self._thread(user_name, app.rootfs, plan.credentials.uid)
        if user is None:
            raise IsolationError(
                f"app {app.name}: uid {plan.credentials.uid} has no /etc/passwd entry in the "
                "app's rootfs, and jexec -U runs only as a named user")
        await self._thread(lambda: app_dir.mkdir(parents=True, exist_ok=True))
        await self._thread(lambda: write_etc_files(
            app.rootfs, dict(data.get("etc_files") or {}), app=app.name))
        await self._mount_volumes(handle, app, app_dir / "mounts.json")
        if await self._jid(child) is None:
            await self._tool(
                "jail", "-c", f"name={child}", f"path={app.rootfs}", "host=inherit",
                "ip4=inherit", "persist", "mount.devfs",
                f"devfs_ruleset={data['params'].get('devfs_ruleset', '4')}",
                f"securelevel={data['params'].get('securelevel', '2')}",
            )
        log_path = app.log_path or app_dir / "log"
        launch = {
            "plan": plan.to_json(), "jail": child, "user": user, "jexec": self.jexec,
            "status_path": str(app_dir / "status"), "log_dir": str(log_path.parent),
            "log_name": log_path.name, "log_max_bytes": app.log_max_bytes,
            "stdio": None if stdio is None else {"stdin": 0, "stdout": 1, "stderr": 2},
        }
        launch_path = app_dir / "launch.json"
        await self._thread(launch_path.write_text, json.dumps(launch))
        return await self._spawn_monitor(app, launch_path, app_dir / "status", log_path, stdio)

    async def _mount_volumes(self, handle: SandboxHandle, app: AppSpec, record: Path) -> None:
        volumes = {v["name"]: v for v in handle.data["volumes"]}
        mounted: list[str] = await self._thread(_read_mounts, record)
        for mount in app.mounts:
            volume = volumes.get(mount.volume)
            if volume is None:
                raise NotFoundError(f"app {app.name}: mount {mount.path} names volume "
                                    f"{mount.volume!r}, which the pod does not have")
            source = volume["source"] if volume["kind"] == "host" else str(
                Path(handle.data["volumes_dir"]) / volume["name"])
            target = str(await self._thread(_mount_point, app.rootfs, mount.path))
            if target in mounted:
                continue  # a restarted app: still mounted from its previous run
            read_only = volume["read_only"] or mount.read_only
            await self._tool("mount_nullfs", "-o", "ro" if read_only else "rw", source, target)
            mounted.append(target)
            await self._thread(_write_mounts, record, mounted)

    async def _spawn_monitor(self, app: AppSpec, launch_path: Path, status_path: Path,
                             log_path: Path, stdio: Stdio | None) -> AppProcess:
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        try:
            if stdio is None:
                stdin = os.open(os.devnull, os.O_RDONLY)
                out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                fds = (stdin, out, out)
            else:
                fds = (stdio.stdin, stdio.stdout, stdio.stderr)
            try:
                helper = await trio.lowlevel.open_process(
                    [self.python, "-I", "-S", "-c", _BOOTSTRAP, _PACKAGE_ROOT,
                     str(launch_path), str(report_w), str(go_r)],
                    pass_fds=(report_w, go_r), stdin=fds[0], stdout=fds[1], stderr=fds[2],
                    start_new_session=stdio is None,
                )
            finally:
                if stdio is None:
                    os.close(fds[0])
                    os.close(fds[1])
            os.close(report_w)
            report_w = -1
            os.close(go_r)
            go_r = -1
            lines = await read_report(report_r)
            report_r = -1
            await helper.wait()
            # identify(): ps(1), never on the loop thread
            process: AppProcess = await self._thread(self.started, app, lines, status_path,
                                                     stdio, log_path)
            os.write(go_w, b"g")
            return process
        finally:
            for fd in (report_r, report_w, go_r, go_w):
                if fd >= 0:
                    os.close(fd)

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
        del process, tty
        plan = await self._thread(lambda: plan_app(
            app_name=app.name, rootfs=app.rootfs, argv=argv, user=user or app.user,
            group=group or app.group, supplementary_gids=app.supplementary_gids,
            working_directory=app.working_directory, environment=app.environment,
            metadata_url=app.metadata_url,
        ))
        name = await self._thread(user_name, app.rootfs, plan.credentials.uid)
        if name is None:
            raise IsolationError(f"uid {plan.credentials.uid} has no /etc/passwd entry in "
                                 f"app {app.name}'s rootfs")
        result = await trio.run_process(
            [self.jexec, "-d", plan.working_directory, "-U", name,
             f"{handle.data['name']}.{app.name}", *plan.argv],
            env=dict(plan.environment), check=False,
            stdin=None if stdio is None else stdio.stdin,
            stdout=None if stdio is None else stdio.stdout,
            stderr=None if stdio is None else stdio.stderr,
        )
        if result.returncode < 0:
            return ExitStatus(signal=-result.returncode)
        return ExitStatus(code=result.returncode)


def _prepare_dirs(spec: SandboxSpec, run_dir: Path, root: Path, volumes_dir: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        (run_dir / "apps").mkdir(exist_ok=True)
        for volume in spec.volumes:
            if volume.kind == "host":
                check_host_volume(volume)
            else:
                prepare_empty_volume(volumes_dir, volume)
    except OSError as exc:
        raise IsolationError(f"pod {spec.pod_uuid}: cannot prepare {exc.filename}: "
                             f"{exc.strerror}") from None


def _mount_point(rootfs: Path, path: str) -> Path:
    # Made through descriptors inside the rootfs (no symlink followed out); nmount(2) takes
    # only a path, resolved the same way just before.
    root = open_root(rootfs)
    try:
        os.close(make_in_root(root, path, "dir"))
    finally:
        os.close(root)
    return resolve_in_root(rootfs, path)


def _read_mounts(record: Path) -> list[str]:
    try:
        return list(json.loads(record.read_text()))
    except FileNotFoundError:
        return []


def _write_mounts(record: Path, mounted: list[str]) -> None:
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(mounted))
    tmp.replace(record)  # the record never lies about what is mounted, even half-written


def _volume_json(volume: PodVolume) -> dict[str, Any]:
    return {"name": volume.name, "kind": volume.kind, "source": volume.source,
            "read_only": volume.read_only, "recursive": volume.recursive}
