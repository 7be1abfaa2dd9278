"""The FreeBSD isolation driver: one persistent jail per pod, one child jail per app.

The pod jail holds the hostname, address and lifetime (``persist``, like the Linux driver's pinned
namespaces); each app's child jail (``POD.APP``) has the app's own rootfs as its path and inherits
the pod's hostname and address. Each jail is described by a jail.conf of its own and made and
removed with ``jail -f CONF -c|-r NAME``, so that jail(8) also undoes its ``mount.devfs``. Apps
run under a host-side monitor (jail_monitor) whose helper enters the app jail with jail_attach(2)
and sets appc's credentials itself (jail_attach.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

import jetpack
from jetpack.config import Config
from jetpack.errors import IsolationError, JetpackError, NotFoundError
from jetpack.stage1 import rctl
from jetpack.stage1.base import (
    AppProcess,
    AppSpec,
    ExitStatus,
    Limits,
    NetworkAttachment,
    NetworkHook,
    PodVolume,
    SandboxHandle,
    SandboxSpec,
    Stdio,
)
from jetpack.stage1.driver_info import JAIL_CAPABILITIES, check_jail_limits
from jetpack.stage1.jail_attach import BOOTSTRAP as ATTACH_BOOTSTRAP
from jetpack.stage1.jail_attach import check_attach, default_attach
from jetpack.stage1.monitor import KILL_CONFIRM_TIMEOUT, MonitoredApps, read_report
from jetpack.stage1.network.etc import write_etc_files
from jetpack.stage1.volumes import check_host_volume, prepare_empty_volume
from jetpack.stage2.paths import make_in_root, open_root, resolve_in_root
from jetpack.stage2.plan import plan_app

ANNOTATION_PREFIX = "jetpack/jail.conf/"
# What every pod jail gets unless config (jail.param.*) or annotations say otherwise.
DEFAULT_PARAMS = {"devfs_ruleset": "4", "securelevel": "2", "enforce_statfs": "2",
                  "children.max": "64"}
# Parameters that shape only the pod jail (app jails get no children of their own).
POD_ONLY_PARAMS = ("children.max",)
# How long umount retries a mount that is busy while a removed jail is still dying.
UMOUNT_RETRY_SECONDS = 10.0
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
    """Isolation with FreeBSD jails, driven through jail(8), jls(8), mount(8) and nullfs."""

    name = "jail"
    capabilities = JAIL_CAPABILITIES

    def __init__(self, *, name_prefix: str = "jetpack/", params: Mapping[str, str] | None = None,
                 network: NetworkHook | None = None, python: str = sys.executable,
                 limiter: trio.CapacityLimiter | None = None,
                 attach: Mapping[str, str] | None = None) -> None:
        self.name_prefix = name_prefix
        self.params = dict(params or {})
        self.network = network
        self.python = python
        super().__init__(limiter)
        # How the helper enters a jail: jail_attach(2) on FreeBSD, the stand-ins' in tests.
        self.attach = dict(attach or default_attach())

    @classmethod
    def from_config(cls, config: Config, *, network: NetworkHook | None = None) -> JailDriver:
        return cls(name_prefix=config["jail.namePrefix"], params=config.prefixed("jail.param."),
                   network=network)

    @staticmethod
    def check_limits(limits: Limits) -> None:
        """Refuse ``limits`` when this host's kernel cannot enforce them (racct off): the
        check prepare makes too (stage1.driver_info)."""
        check_jail_limits(limits)

    @property
    def helper(self) -> list[str]:
        """The helper that enters an app jail; its request comes as the last argument."""
        return [self.python, "-I", "-S", "-c", ATTACH_BOOTSTRAP, _PACKAGE_ROOT]

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

    def plan_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        name = f"{self.name_prefix}{spec.pod_uuid}"
        run_dir = spec.pod_dir / "run"
        root = run_dir / "root"
        volumes_dir = spec.pod_dir / "volumes"
        params = jail_params(DEFAULT_PARAMS, self.params, spec.annotations)
        ip4 = None if spec.network is None else spec.network.ip4
        data: dict[str, Any] = {
            "name": name, "run_dir": str(run_dir), "root": str(root),
            "volumes_dir": str(volumes_dir), "hostname": spec.hostname, "ip4": ip4,
            "network": None if spec.network is None else spec.network.to_json(),
            "etc_files": dict(spec.etc_files),
            "volumes": [_volume_json(v) for v in spec.volumes], "params": params,
            "limits": None if spec.limits is None else spec.limits.to_json(),
        }
        return SandboxHandle(self.name, spec.pod_uuid, data)

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        handle = self.plan_sandbox(spec)
        data = handle.data
        name, params, ip4 = data["name"], data["params"], data["ip4"]
        run_dir, root = Path(data["run_dir"]), Path(data["root"])
        if spec.limits is not None:
            # refused before anything is made when the kernel cannot enforce them
            await self._thread(self.check_limits, spec.limits)
        await self._thread(_prepare_dirs, spec, run_dir, root, Path(data["volumes_dir"]))
        try:
            if self.network is not None and spec.network is not None:
                # the pod's lo1 alias and pf anchor
                await self.network.attach(self._attachment(handle))
            conf = run_dir / "jail.conf"
            pod_params = {"path": str(root), "host.hostname": spec.hostname,
                          "persist": "true", "mount.devfs": "true",
                          **({"ip4.addr": ip4} if ip4 else {"ip4": "disable"}), **params}
            await self._thread(conf.write_text, jail_conf(name, pod_params))
            await self._tool("jail", "-f", str(conf), "-c", name)
            jid = await self._jid(name)
            if jid is None:
                raise IsolationError(f"jail {name} was created but jls does not list it")
            if spec.limits is not None:
                # on the pod jail: the rules reach its app jails (stage1/rctl.py)
                await self._thread(rctl.apply_limits, name, spec.limits)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                try:
                    await self.destroy_sandbox(handle)
                except JetpackError as cleanup:
                    # The first error is the one the user must see; the cleanup's goes along.
                    exc.add_note(f"and cleaning up failed too: {cleanup}")
            raise
        return SandboxHandle(self.name, spec.pod_uuid, {**data, "jid": jid, "ip4": ip4})

    def _attachment(self, handle: SandboxHandle) -> NetworkAttachment:
        return NetworkAttachment(handle.pod_uuid, handle.network_plan(),
                                 jail_name=handle.data["name"])

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        """Every step runs even when one before it failed (a host without pf must still lose
        the pod's alias and run dir); the first failure is raised at the end."""
        data = handle.data
        run_dir = Path(data["run_dir"])
        apps_dir = run_dir / "apps"
        errors: list[JetpackError] = []

        async def step(fn: Any, *args: Any) -> None:
            try:
                await fn(*args)
            except JetpackError as exc:
                errors.append(exc)

        app_names = await self._thread(lambda: sorted(p.name for p in apps_dir.iterdir())
                                       if apps_dir.is_dir() else [])
        for app in app_names:
            await step(self._remove_app_jail, handle, app)
        await step(self._remove_jail, data["name"], run_dir / "jail.conf")
        if data.get("limits") is not None:
            await step(self._thread, rctl.remove_limits, data["name"])
        await step(self._unmount_under, Path(data["root"]), True)
        if self.network is not None:
            await step(self.network.detach, self._attachment(handle))
        if not errors:
            await self._thread(shutil.rmtree, str(run_dir), True)
        if errors:
            for later in errors[1:]:
                errors[0].add_note(f"also: {later}")
            raise errors[0]

    async def _remove_jail(self, name: str, conf: Path) -> None:
        """``jail -f CONF -r NAME``: kills the jail's processes and, as the jail is in CONF,
        unmounts its devfs too (a jail made on the command line would keep it mounted)."""
        if await self._jid(name) is None:
            return
        if await self._thread(conf.is_file):
            await self._tool("jail", "-f", str(conf), "-r", name)
        else:
            await self._tool("jail", "-r", name)

    async def _remove_app_jail(self, handle: SandboxHandle, app: str) -> None:
        child = f"{handle.data['name']}.{app}"
        app_dir = Path(handle.data["run_dir"]) / "apps" / app
        await self._remove_jail(child, app_dir / "jail.conf")  # kills every process left in it
        mounts_file = app_dir / "mounts.json"
        mounted: list[str] = await self._thread(_read_mounts, mounts_file)
        for target in reversed(list(mounted)):
            await self._umount(target)
            mounted.remove(target)
            await self._thread(_write_mounts, mounts_file, mounted)
        rootfs = await self._thread(_read_rootfs, app_dir)
        if rootfs is not None:
            await self._unmount_under(rootfs, False)

    async def _umount(self, target: str) -> None:
        """umount, retried while the mount is busy: a removed jail is dying until its last
        process is gone, and its mounts stay busy until then."""
        with trio.move_on_after(UMOUNT_RETRY_SECONDS):
            while True:
                try:
                    await self._tool("umount", target)
                except IsolationError as exc:
                    if "busy" not in str(exc).lower():
                        raise
                    await trio.sleep(0.1)
                else:
                    return
        await self._tool("umount", target)

    async def _unmount_under(self, path: Path, including: bool) -> None:
        """Unmount what ``mount -p`` lists below ``path`` (and at it when ``including``),
        deepest first, each stacked mount once per line: leftovers of a jail that jail(8) did
        not clean (one made on the command line by an older jetpack, a crash mid-way)."""
        listing = await self._tool("mount", "-p")
        base = str(path)
        found = [point for point in _mount_points(listing)
                 if point.startswith(base + "/") or (including and point == base)]
        for point in sorted(found, key=len, reverse=True):
            await self._umount(point)

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
        check_attach(self.attach)
        data = handle.data
        child = f"{data['name']}.{app.name}"
        app_dir = Path(data["run_dir"]) / "apps" / app.name
        plan = await self._thread(lambda: plan_app(
            app_name=app.name, rootfs=app.rootfs, argv=app.exec, user=app.user,
            group=app.group, supplementary_gids=app.supplementary_gids,
            working_directory=app.working_directory, environment=app.environment,
            metadata_url=app.metadata_url, pre_start=app.pre_start, post_stop=app.post_stop,
        ))
        await self._thread(_prepare_app_dir, app_dir, app.rootfs)
        await self._thread(lambda: write_etc_files(
            app.rootfs, dict(data.get("etc_files") or {}), app=app.name))
        await self._mount_volumes(handle, app, app_dir / "mounts.json")
        jid = await self._jid(child)
        if jid is None:
            conf = app_dir / "jail.conf"
            await self._thread(conf.write_text, jail_conf(child, self._app_params(data, app)))
            await self._tool("jail", "-f", str(conf), "-c", child)
            jid = await self._jid(child)
            if jid is None:
                raise IsolationError(f"jail {child} was created but jls does not list it")
        log_path = app.log_path or app_dir / "log"
        # the pod store's logs dir (<pod>/logs) is made by whoever starts the first app
        await self._thread(lambda: log_path.parent.mkdir(parents=True, exist_ok=True))
        launch = {
            "plan": plan.to_json(), "jail": child, "jid": jid, "attach": self.attach,
            "helper": self.helper,
            "status_path": str(app_dir / "status"), "log_dir": str(log_path.parent),
            "log_name": log_path.name, "log_max_bytes": app.log_max_bytes,
            "stdio": None if stdio is None else {"stdin": 0, "stdout": 1, "stderr": 2},
        }
        launch_path = app_dir / "launch.json"
        await self._thread(launch_path.write_text, json.dumps(launch))
        return await self._spawn_monitor(app, launch_path, app_dir / "status", log_path, stdio)

    def _app_params(self, data: Mapping[str, Any], app: AppSpec) -> dict[str, str]:
        """The app jail: the pod's parameters (jail.param.*, jetpack/jail.conf/* annotations:
        the allow.* bits, sysv*, securelevel... apply where the apps run), its own rootfs as
        path, the pod's hostname and address inherited."""
        params = {k: v for k, v in data["params"].items() if k not in POD_ONLY_PARAMS}
        return {"path": str(app.rootfs), "host": "inherit", "ip4": "inherit",
                "persist": "true", "mount.devfs": "true", **params}

    async def stop(
        self, handle: SandboxHandle, process: AppProcess, grace: float
    ) -> ExitStatus:
        """SIGTERM to the app (its monitor forwards it), ``grace`` seconds; then the monitor is
        killed and the app jail removed, which kills every process in it wherever it was
        reparented. Either way the app jail goes (what the app left running goes with it) and
        is made anew by the next start_app."""
        await self.signal(handle, process, signal.SIGTERM)
        status: ExitStatus | None = None
        with trio.move_on_after(grace):
            status = await self.wait(handle, process)
        if status is None:
            await self.signal(handle, process, signal.SIGKILL)
            await self._remove_app_jail(handle, process.app)
            with trio.fail_after(KILL_CONFIRM_TIMEOUT):
                status = await self.wait(handle, process)
        await self._remove_app_jail(handle, process.app)
        child = f"{handle.data['name']}.{process.app}"
        if await self._jid(child) is not None:
            raise IsolationError(f"app {process.app}: jail {child} is still there after jail -r")
        return status

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
        """``argv`` in the app's jail through the same helper as the app: appc's credentials
        for ``user``/``group`` (numeric or from the rootfs's /etc/passwd, /etc/group), the
        app's exact environment, no login class."""
        del process, tty
        check_attach(self.attach)
        plan = await self._thread(lambda: plan_app(
            app_name=app.name, rootfs=app.rootfs, argv=argv, user=user or app.user,
            group=group or app.group, supplementary_gids=app.supplementary_gids,
            working_directory=app.working_directory, environment=app.environment,
            metadata_url=app.metadata_url,
        ))
        child = f"{handle.data['name']}.{app.name}"
        jid = await self._jid(child)
        if jid is None:
            raise IsolationError(f"app {app.name} is not running (no jail {child})")
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        try:
            body = json.dumps({"attach": self.attach, "jid": jid, "argv": list(plan.argv),
                               "plan": plan.to_json(), "error_fd": error_w})
            result = await trio.run_process(
                [*self.helper, body], check=False, pass_fds=(error_w,),
                stdin=None if stdio is None else stdio.stdin,
                stdout=None if stdio is None else stdio.stdout,
                stderr=None if stdio is None else stdio.stderr,
            )
            os.close(error_w)
            error_w = -1
            report = os.read(error_r, 256).decode()
        finally:
            os.close(error_r)
            if error_w >= 0:
                os.close(error_w)
        if report:
            code, _, step = report.partition(":")
            reason = os.strerror(int(code)) if code.isdigit() else report
            raise IsolationError(f"app {app.name}: cannot run {plan.argv[0]} ({step}): {reason}")
        if result.returncode < 0:
            return ExitStatus(signal=-result.returncode)
        return ExitStatus(code=result.returncode)


def jail_conf(name: str, params: Mapping[str, str]) -> str:
    """One jail's jail.conf(5) block; every value quoted (jail names hold "/")."""

    def quote(text: str) -> str:
        # jail.conf(5) expands $variables in double-quoted strings: a "$" is refused.
        if any(c in text for c in "\n\r\0$"):
            raise IsolationError(f"jail {name}: parameter value {text!r} holds a line break "
                                 "or a \"$\", which jail.conf cannot carry")
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{quote(name)} {{"]
    for key, value in params.items():
        if value == "true" and key in BOOLEAN_PARAMS:
            lines.append(f"\t{key};")
        else:
            lines.append(f"\t{key} = {quote(value)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def jail_processes(data: Mapping[str, Any], apps: Sequence[str]) -> list[dict[str, Any]]:
    """``jetpack ps`` on FreeBSD: every process in each app's jail (``ps -J JID``)."""
    import subprocess

    rows: list[dict[str, Any]] = []
    for app in apps:
        found = subprocess.run(["jls", "-j", f"{data['name']}.{app}", "jid"],
                               capture_output=True, text=True, check=False)
        if found.returncode != 0 or not found.stdout.strip().isdigit():
            continue
        listing = subprocess.run(["ps", "-J", found.stdout.strip(), "-o", "pid=", "-o",
                                  "command="], capture_output=True, text=True, check=False)
        for line in listing.stdout.splitlines():
            pid, _, command = line.strip().partition(" ")
            if pid.isdigit():
                rows.append({"pid": int(pid), "app": app, "command": command.strip()})
    return rows


BOOLEAN_PARAMS = ("persist", "mount.devfs")


def _prepare_dirs(spec: SandboxSpec, run_dir: Path, root: Path, volumes_dir: Path) -> None:
    try:
        # jail(8) mounts the devfs of mount.devfs on <path>/dev, which must exist.
        (root / "dev").mkdir(parents=True, exist_ok=True)
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


def _prepare_app_dir(app_dir: Path, rootfs: Path) -> None:
    """The app's run dir, with its rootfs noted for destroy, and ``/dev`` in the rootfs (made
    inside it, no symlink followed out) for the app jail's devfs."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "rootfs").write_text(str(rootfs))
    _mount_point(rootfs, "/dev")


def _read_rootfs(app_dir: Path) -> Path | None:
    try:
        return Path((app_dir / "rootfs").read_text())
    except FileNotFoundError:
        return None


def _mount_points(listing: str) -> list[str]:
    """The mount points of ``mount -p`` (fstab(5) lines; blanks in paths are \\040)."""
    points = []
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            points.append(fields[1].replace("\\040", " "))
    return points


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
