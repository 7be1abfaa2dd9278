"""The Linux isolation driver: pod-level uts/ipc/net namespaces, one mount+pid namespace per app.

The pod's namespaces are pinned by bind mounts under ``pod_dir/run/ns`` (no holder process to
die or be mistaken for another), made by a short-lived thread of the driver's own (unshare(2)
of these is per thread); each app is built and run by the linux_init helper, whose pid-1
monitor writes the app's status file. App helpers are forked by the driver's fork server
(forkserver.py: no interpreter start each); ``enter`` starts its helper itself, in the
caller's process group. The driver keeps no pod state between calls.

Linux policy lives here: the pod's cgroup (limits and device policy, stage1.cgroups), made by
create_sandbox and removed by destroy_sandbox; the pod's /etc files, written into each app's
rootfs before it starts; the bridge attachment (the network hook) with the spec's plan.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

import jetpack
from jetpack.errors import IsolationError, NotFoundError
from jetpack.killpoint import killpoint
from jetpack.stage1 import linux_sys as sysc
from jetpack.stage1.base import (
    AppProcess,
    AppSpec,
    ExitStatus,
    Limits,
    NetworkAttachment,
    NetworkHook,
    SandboxHandle,
    SandboxSpec,
    Stdio,
)
from jetpack.stage1.cgroups import PodCgroup, warm_moves
from jetpack.stage1.driver_info import LINUX_CAPABILITIES, check_linux_limits
from jetpack.stage1.forkserver_client import ForkServer
from jetpack.stage1.identity import pidfd_open, pidfd_send_signal
from jetpack.stage1.monitor import (
    EarlyWatch,
    MonitoredApps,
    SocketExitNote,
    read_report,
    reported_pid,
)
from jetpack.stage1.network.etc import write_etc_files
from jetpack.stage1.own_thread import in_own_thread
from jetpack.stage1.stdio_relay import PipeRelay, relay_terminal
from jetpack.stage1.volumes import check_host_volume, prepare_empty_volume
from jetpack.stage2.plan import ExecPlan, plan_app

POD_NAMESPACES = ("uts", "ipc", "net")
_KILL_CONFIRM_TIMEOUT = 10.0

# The enter helper runs in a fresh, isolated interpreter (-I -S: no site, no user paths, fast
# start) that imports jetpack from exactly where this process did.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from jetpack.stage1.linux_init import main; sys.exit(main(sys.argv[2:]))"
)
_PACKAGE_ROOT = str(Path(jetpack.__file__).resolve().parent.parent)


def helper_argv(python: str, *args: str) -> list[str]:
    return [python, "-I", "-S", "-c", _BOOTSTRAP, _PACKAGE_ROOT, *args]


class LinuxDriver(MonitoredApps):
    """Isolation with Linux namespaces; see the module docstring for the layout."""

    name = "linux"
    capabilities = LINUX_CAPABILITIES

    def __init__(self, *, network: NetworkHook | None = None, python: str = sys.executable,
                 limiter: trio.CapacityLimiter | None = None) -> None:
        self.network = network
        self.python = python
        super().__init__(limiter)
        self.forks = ForkServer(python)
        self._attaching: dict[str, _Attaching] = {}  # pods whose network is being attached
        self._prepared: dict[str, dict[str, _Prepared]] = {}  # by pod, by app: prepare_app's

    @staticmethod
    def check_limits(limits: Limits) -> None:
        """Nothing to ask before prepare: the pod's cgroup refuses a missing controller at
        create_sandbox, before it makes anything (stage1.driver_info: prepare asks the same)."""
        check_linux_limits(limits)

    # --- sandbox ---------------------------------------------------------------------------------

    def plan_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        run_dir = spec.pod_dir / "run"
        volumes_dir = spec.pod_dir / "volumes"
        data: dict[str, Any] = {
            "run_dir": str(run_dir),
            "volumes_dir": str(volumes_dir),
            "hostname": spec.hostname,
            "namespaces": {kind: str(run_dir / "ns" / kind) for kind in POD_NAMESPACES},
            "volumes": [v.to_json() for v in spec.volumes],
            "ip4": None if spec.network is None else spec.network.ip4,
            "network": None if spec.network is None else spec.network.to_json(),
            "etc_files": dict(spec.etc_files),
            "cgroup_dirs": [],
        }
        if spec.limits is not None:  # what _create_cgroup records (removing is idempotent)
            data["cgroup_dirs"] = [str(d) for d in PodCgroup.for_pod(spec.pod_uuid).directories()]
        return SandboxHandle(self.name, spec.pod_uuid, data)

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        made: list[SandboxHandle] = []  # once its directories are: destroyed if the rest fails

        def make() -> SandboxHandle:  # one worker-thread hop for the directories and the rest
            planned = self.plan_sandbox(spec)
            self._prepare_dirs(spec, Path(planned.data["run_dir"]),
                               Path(planned.data["volumes_dir"]))
            data = {**planned.data, "cgroup_dirs": []}  # recorded as each is made
            handle = SandboxHandle(self.name, spec.pod_uuid, data)  # (_create_cgroup)
            made.append(handle)
            killpoint("start.sandbox-dirs")
            _make_sandbox(spec, Path(data["run_dir"]), data)
            return handle

        try:
            handle: SandboxHandle = await self._thread(make)
            if self.network is not None and spec.network is not None:
                self._attach_soon(handle)
        except BaseException:
            if made:
                with trio.CancelScope(shield=True):
                    await self.destroy_sandbox(made[0])
            raise
        return handle

    def _attach_soon(self, handle: SandboxHandle) -> None:
        """Attach the pod's network while its first app is being built: that app runs only
        once it is done (``_network_ready``, before the app's go), and the sandbox's teardown
        waits for it. A failure fails that app's start (so the pod's)."""
        pending = _Attaching()
        self._attaching[handle.pod_uuid] = pending

        async def attach() -> None:
            try:
                assert self.network is not None
                await self.network.attach(self._attachment(handle))
                killpoint("start.network")
            except Exception as exc:  # noqa: BLE001  # a system task: raised by _network_ready
                pending.error = exc
            finally:
                pending.done.set()

        trio.lowlevel.spawn_system_task(attach, name=f"attach {handle.pod_uuid}")

    async def _network_ready(self, pod_uuid: str) -> None:
        pending = self._attaching.get(pod_uuid)
        if pending is None:
            return
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        self._attaching.pop(pod_uuid, None)

    @staticmethod
    def _prepare_dirs(spec: SandboxSpec, run_dir: Path, volumes_dir: Path) -> None:
        try:
            (run_dir / "apps").mkdir(parents=True, exist_ok=True)
            for volume in spec.volumes:
                if volume.kind == "host":
                    check_host_volume(volume)
                else:
                    prepare_empty_volume(volumes_dir, volume)
        except OSError as exc:
            raise IsolationError(f"pod {spec.pod_uuid}: cannot prepare {exc.filename}: "
                                 f"{exc.strerror}") from None

    def _attachment(self, handle: SandboxHandle) -> NetworkAttachment:
        return NetworkAttachment(handle.pod_uuid, handle.network_plan(),
                                 netns_path=Path(handle.data["namespaces"]["net"]))

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        """The network goes while (in one worker thread) what is left of the pod is killed,
        its namespaces unmounted and its cgroup removed: a veth whose namespace went first is
        gone already, which detach takes as done."""
        self.forget_exiting(handle.pod_uuid)  # killed with the rest of the pod, if still there
        self._prepared.pop(handle.pod_uuid, None)  # their files go with the run dir
        pending = self._attaching.pop(handle.pod_uuid, None)
        if pending is not None:
            await pending.done.wait()  # then detach finds what it made
        failures: list[Exception] = []

        async def step(work: Callable[[], Awaitable[object]]) -> None:
            try:
                await work()
            except Exception as exc:  # noqa: BLE001  # raised below, as itself (no group)
                failures.append(exc)

        network = self.network
        async with trio.open_nursery() as nursery:
            if network is not None:
                nursery.start_soon(step, partial(self._detach, network, handle))
            nursery.start_soon(step, partial(self._thread, self._remove_pod, handle))
        if failures:
            raise failures[0]

    async def _detach(self, network: NetworkHook, handle: SandboxHandle) -> None:
        await network.detach(self._attachment(handle))
        killpoint("stop.network-detached")

    @classmethod
    def _remove_pod(cls, handle: SandboxHandle) -> None:
        """Processes, namespaces, then the cgroup: a step that fails does not keep the next
        from running (a cgroup skipped because a namespace file would not go was left empty
        in every hierarchy, with nothing to remove it); the first failure is raised after."""
        try:
            cls._kill_leftovers(handle)
            killpoint("stop.processes-killed")
            cls._remove_namespaces(handle)
            killpoint("stop.namespaces-removed")
        finally:
            if handle.data.get("cgroup_dirs"):
                PodCgroup.for_pod(handle.pod_uuid).remove()

    @staticmethod
    def _kill_leftovers(handle: SandboxHandle) -> None:
        """SIGKILL every process still in the pod's network namespace (an app's pid-1 monitor
        dying takes its whole pid namespace with it), then wait until none is left."""
        net = Path(handle.data["namespaces"]["net"])
        try:
            inode = net.stat().st_ino if os.path.ismount(net) else None
        except FileNotFoundError:
            inode = None
        if inode is None:
            return
        for _ in range(int(_KILL_CONFIRM_TIMEOUT / 0.01)):
            members = processes_in_netns(inode)
            if not members:
                return
            for pid in members:
                try:
                    fd = pidfd_open(pid)
                except ProcessLookupError:
                    continue
                try:
                    pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
            # A killed pid-1 takes its namespace down asynchronously; look again shortly.
            time.sleep(0.01)
        raise IsolationError(f"pod {handle.pod_uuid}: processes survive SIGKILL: {members}")

    @staticmethod
    def _remove_namespaces(handle: SandboxHandle) -> None:
        run_dir = Path(handle.data["run_dir"])
        for path in handle.data["namespaces"].values():
            if os.path.ismount(path):
                try:
                    sysc.umount2(path, sysc.MNT_DETACH)
                except OSError as exc:
                    raise IsolationError(f"cannot unmount namespace file {path}: {exc}") from None
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.exists():
            raise IsolationError(f"cannot remove {run_dir}")

    async def recover(self, handle_json: Mapping[str, Any]) -> SandboxHandle | None:
        handle = SandboxHandle.from_json(handle_json)
        if handle.driver != self.name:
            raise IsolationError(f"pod {handle.pod_uuid} was made by the {handle.driver} driver")
        paths = list(handle.data["namespaces"].values())
        mounted = await self._thread(lambda: all(os.path.ismount(p) for p in paths))
        return handle if mounted else None

    # --- apps ------------------------------------------------------------------------------------

    def prepare_app(self, planned: SandboxHandle, app: AppSpec, *, tty: bool) -> None:
        """Write the app's launch document for its first start, in a worker thread while
        create_sandbox makes the sandbox (the document needs only the planned handle's paths):
        start_app takes it when its handle, spec and stdio are these. A failure here keeps
        nothing: the start writes the document itself and reports what fails, as always."""
        try:
            document = self._launch_document(planned, app, tty)
        except Exception:  # noqa: BLE001  # raised again by the start that writes it itself
            return
        self._prepared.setdefault(planned.pod_uuid, {})[app.name] = _Prepared(
            planned, app, tty, document)

    def _launch_document(
        self, handle: SandboxHandle, app: AppSpec, tty: bool
    ) -> tuple[dict[str, Any], Path, Path]:
        run_dir = Path(handle.data["run_dir"])
        app_dir = run_dir / "apps" / app.name
        app_dir.mkdir(parents=True, exist_ok=True)
        write_etc_files(app.rootfs, dict(handle.data.get("etc_files") or {}), app=app.name)
        plan = plan_app(
            app_name=app.name, rootfs=app.rootfs, argv=app.exec, user=app.user,
            group=app.group, supplementary_gids=app.supplementary_gids,
            working_directory=app.working_directory, environment=app.environment,
            metadata_url=app.metadata_url, pre_start=app.pre_start, post_stop=app.post_stop,
            listen=app.listen,
        )
        log_path = app.log_path or app_dir / "log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        status_path = app_dir / "status"
        # The app's own spec, as prepare stored it, plus what this start resolved: stage2's plan
        # (credentials, environment), the pod's namespaces, the volumes' host sources, where the
        # status and log go.
        launch = {
            "app": app.to_json(),
            "plan": plan.to_json(),
            "namespaces": dict(handle.data["namespaces"]),
            "mounts": self._mounts(handle, app),
            "status_path": str(status_path),
            "log_dir": str(log_path.parent),
            "log_name": log_path.name,
            "cgroup_dirs": list(handle.data.get("cgroup_dirs") or ()),
            "stdio": {"stdin": 0, "stdout": 1, "stderr": 2} if tty else None,
        }
        (app_dir / "launch.json").write_text(json.dumps(launch))
        return launch, app_dir / "launch.json", log_path

    @staticmethod
    def _mounts(handle: SandboxHandle, app: AppSpec) -> list[dict[str, Any]]:
        volumes = {v["name"]: v for v in handle.data["volumes"]}
        mounts = []
        for mount in app.mounts:
            volume = volumes.get(mount.volume)
            if volume is None:
                raise NotFoundError(f"app {app.name}: mount {mount.path} names volume "
                                    f"{mount.volume!r}, which the pod does not have")
            source = volume["source"] if volume["kind"] == "host" else str(
                Path(handle.data["volumes_dir"]) / volume["name"])
            mounts.append({
                "volume": volume["name"], "kind": volume["kind"], "source": source,
                "target": mount.path,
                "read_only": bool(volume["read_only"] or mount.read_only),
                "recursive": bool(volume["recursive"]),
            })
        return mounts

    async def start_app(
        self, handle: SandboxHandle, app: AppSpec, *, stdio: Stdio | None = None
    ) -> AppProcess:
        await self.previous_gone(handle.pod_uuid, app.name)
        if handle.data.get("cgroup_dirs"):
            # The monitor's move into the pod's cgroups waits for an RCU grace period unless
            # another move just paid for one (cgroups.warm_moves): start one now, in a thread
            # we do not wait for, so that it runs while the helper is made.
            trio.lowlevel.start_thread_soon(warm_moves, _ignore_outcome)
        prepared = self._prepared.get(handle.pod_uuid, {}).pop(app.name, None)
        if prepared is not None and prepared.fits(handle, app, tty=stdio is not None):
            launch, launch_path, log_path = prepared.document  # a first start (prepare_app)
        else:
            try:
                launch, launch_path, log_path = await self._thread(
                    self._launch_document, handle, app, stdio is not None)
            except OSError as exc:
                raise IsolationError(f"app {app.name}: cannot prepare its launch: "
                                     f"{exc}") from None
        report_r, report_w = os.pipe()
        # go goes to the monitor on this socket, and its exit note comes back on it
        go_ours, go_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        go_r, go_w = go_theirs.detach(), go_ours.detach()
        log_fd = None
        early = EarlyWatch()
        try:
            if stdio is None:
                # The helper's own stderr (a crash before the monitor runs) lands in the log.
                log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                stdin, stdout, stderr = os.open(os.devnull, os.O_RDONLY), log_fd, log_fd
            else:
                stdin, stdout, stderr = stdio.stdin, stdio.stdout, stdio.stderr
            try:
                # In a session of its own (the fork server's rule): never the supervisor's
                # process group, with a terminal (run -t) too. The pipes become its fds 3 and 4.
                helper = await self.forks.request(
                    ["app", str(launch_path), "3", "4"], stdin=stdin, stdout=stdout,
                    stderr=stderr, pass_fds=(report_w, go_r))
            finally:
                if stdio is None:
                    os.close(stdin)
            os.close(report_w)
            report_w = -1
            os.close(go_r)
            go_r = -1
            try:
                # The report, read as soon as the request is sent (its pid line says the
                # monitor's pid: no need to wait for the server's), ends at the monitor's
                # 'ready' (the app's process it forked just before may still hold the pipe)
                # or at the pipe's end: a failure, or no helper made (the server's answer
                # says why). The monitor is identified and watched as soon as it reports its
                # pid, while it builds the app's rootfs.
                reading, report_r = report_r, -1  # read_report closes it
                async with trio.open_nursery() as nursery:
                    lines = await read_report(reading, on_pid=lambda pid: nursery.start_soon(
                        self._thread, early.open, pid), until_ready=True)
                await helper.wait()  # it forked the monitor and exited: the monitor is no
                # child of ours nor of the server's (adoption after a supervisor's kill -9)
            finally:
                helper.close()
            # the app runs with its network: the monitor waits for go (and gives up if the
            # pipe closes without it, as when this raises)
            await self._network_ready(handle.pod_uuid)
            process: AppProcess
            if early.has(reported_pid(lines)):  # nothing left that blocks
                process = self.started(app, lines, Path(launch["status_path"]), stdio,
                                       log_path, early=early)
            else:  # identify() and the pidfd read /proc: never on the loop thread
                process = await self._thread(self.started, app, lines,
                                             Path(launch["status_path"]), stdio, log_path)
            os.write(go_w, b"g")  # the monitor may run the app: we watch it now
            process.note = SocketExitNote(socket.socket(fileno=go_w))
            go_w = -1
            return process
        finally:
            early.close()  # what started() did not take (a failure): nothing to watch
            for fd in (report_r, report_w, go_r, go_w, log_fd):
                if fd is not None and fd >= 0:
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
        plan = await self._thread(lambda: plan_app(
            app_name=app.name, rootfs=app.rootfs, argv=argv, user=user or app.user,
            group=group or app.group, supplementary_gids=app.supplementary_gids,
            working_directory=app.working_directory, environment=app.environment,
            metadata_url=app.metadata_url,
        ))
        app_dir = Path(handle.data["run_dir"]) / "apps" / app.name
        enter_path = app_dir / f"enter-{os.urandom(6).hex()}.json"
        await self._thread(_write_enter, enter_path, plan, process, app,
                           list(handle.data.get("cgroup_dirs") or ()))
        caller = stdio or Stdio(0, 1, 2)
        try:
            if tty:
                code = await self._enter_with_terminal(enter_path, caller)
            else:
                code = await self._enter_with_pipes(enter_path, caller)
        finally:
            enter_path.unlink(missing_ok=True)
        if code < 0:
            return ExitStatus(signal=-code)
        return ExitStatus(code=code)

    async def _enter_with_pipes(self, enter_path: Path, caller: Stdio) -> int:
        """The command's stdio is the caller's, its terminals replaced by relayed pipes."""
        relay = PipeRelay(caller)
        try:
            async with trio.open_nursery() as nursery:
                helper = await trio.lowlevel.open_process(
                    helper_argv(self.python, "enter", str(enter_path)),
                    stdin=relay.pod.stdin, stdout=relay.pod.stdout, stderr=relay.pod.stderr)
                relay.spawned()
                nursery.start_soon(relay.copy)
                code = await helper.wait()
                nursery.cancel_scope.cancel()
        finally:
            relay.finish()
        return code

    async def _enter_with_terminal(self, enter_path: Path, caller: Stdio) -> int:
        """The command runs on a new pty of the pod's own devpts (the helper sends its master
        back), relayed to the caller's stdio; the helper itself gets no terminal either."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        relay = PipeRelay(Stdio(null, null, caller.stderr))  # for the helper's own errors
        master = -1
        try:
            with ours:
                with theirs:
                    helper = await trio.lowlevel.open_process(
                        helper_argv(self.python, "enter", str(enter_path), str(theirs.fileno())),
                        pass_fds=(theirs.fileno(),), stdin=null, stdout=null,
                        stderr=relay.pod.stderr)
                os.close(null)
                null = -1
                relay.spawned()
                fds = await trio.to_thread.run_sync(_receive_fd, ours)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay.copy)
                ended = trio.Event()
                async with trio.open_nursery() as terminal:
                    if fds:
                        master = fds[0]
                        terminal.start_soon(relay_terminal, master, caller, ended)
                    code = await helper.wait()
                    ended.set()  # relay_terminal copies out what is left, then returns
                nursery.cancel_scope.cancel()
        finally:
            relay.finish()
            for fd in (master, null):
                if fd >= 0:
                    os.close(fd)
        return code


class _Attaching:
    """A pod's network attach in flight (LinuxDriver._attach_soon)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: Exception | None = None


class _Prepared:
    """A launch document prepare_app wrote, with what it was written for."""

    def __init__(self, handle: SandboxHandle, app: AppSpec, tty: bool,
                 document: tuple[dict[str, Any], Path, Path]) -> None:
        self.handle, self.app, self.tty, self.document = handle, app, tty, document

    def fits(self, handle: SandboxHandle, app: AppSpec, *, tty: bool) -> bool:
        return (tty == self.tty and app == self.app
                and handle.to_json() == self.handle.to_json())


def _make_sandbox(spec: SandboxSpec, run_dir: Path, data: dict[str, Any]) -> None:
    """The pod's cgroup (with limits), then its namespaces, made by a thread of our own (no
    helper process): unshare(2) of uts/ipc/net and the bind mounts that pin them apply to the
    calling thread only, and this one ends with the work, so no thread of ours (trio's
    workers are reused) ever runs in a pod's namespaces."""
    if spec.limits is not None:
        _create_cgroup(spec.pod_uuid, spec.limits, data)
        # The grace period the monitor's move into these cgroups would wait for (see
        # cgroups.warm_moves) starts now, while the namespaces are made and the app's helper
        # spawns: not earlier, as the move holds cgroup_mutex, which the mkdirs above need.
        trio.lowlevel.start_thread_soon(warm_moves, _ignore_outcome)  # any thread may call it
        killpoint("start.cgroup")
    from jetpack.stage1.linux_init import create_sandbox

    try:
        in_own_thread(lambda: create_sandbox(run_dir, spec.hostname),
                      f"jetpack sandbox {spec.pod_uuid}")
    except (OSError, IsolationError) as exc:
        raise IsolationError(f"pod {spec.pod_uuid}: cannot create its namespaces: "
                             f"{exc}") from None
    killpoint("start.namespaces")


def _create_cgroup(pod_uuid: str, limits: Limits, data: dict[str, Any]) -> None:
    """The pod's cgroup with its limits and device policy; apps (and exec'd commands) join
    it. Its directories are recorded first, so that a half-made one is removed too."""
    cgroup = PodCgroup.for_pod(pod_uuid)
    data["cgroup_dirs"] = [str(d) for d in cgroup.directories()]
    cgroup.create(limits)


def _ignore_outcome(outcome: object) -> None:
    del outcome  # warm_moves ignores its errors itself


def _receive_fd(sock: socket.socket) -> list[int]:
    """The pty master the enter helper sends (none when it failed before)."""
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    return fds


def _write_enter(path: Path, plan: ExecPlan, process: AppProcess, app: AppSpec,
                 cgroup_dirs: list[str]) -> None:
    """What the enter helper needs: the command's plan, the app's process to join, and the
    app's confinement (isolator plan, the pod's cgroups) that the command gets too."""
    path.write_text(json.dumps({"plan": plan.to_json(), "pid": process.identity.pid,
                                "start_time": process.identity.start_time,
                                "isolators": dict(app.isolators),
                                "cgroup_dirs": cgroup_dirs}))


def processes_in_netns(inode: int) -> list[int]:
    """Pids whose network namespace is the one with ``inode``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino == inode:
                found.append(int(entry.name))
        except OSError:
            continue
    return found
