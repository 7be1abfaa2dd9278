"""The isolation driver interface: the one seam between the supervisor and a platform.

A driver is to jetpack what a task driver is to Nomad: it reports its ``capabilities``, takes
typed specs (``SandboxSpec``: volumes, ``Limits``, a ``NetworkPlan``, the pod's /etc files;
``AppSpec``) and returns typed results (``SandboxHandle``, ``AppProcess``, ``ExitStatus``). Each
driver owns its platform's policy (Linux: cgroups and device policy, the bridge attachment;
FreeBSD: the lo1 alias and pf anchor, rctl) so the caller never branches on a platform.

Records here are plain data that round-trip through JSON (the supervisor stores them in the state
database so that a new supervisor process can adopt running pods); drivers hold no lifecycle state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from jetpack.errors import IsolationError
from jetpack.stage1.network.ports import PortForward
from jetpack.stage2.status import ExitStatus

__all__ = [
    "DEFAULT_PIDS_LIMIT", "AppProcess", "AppSpec", "ExitStatus", "IsolationCapabilities",
    "IsolationDriver", "Limits", "MountSpec", "NetworkAttachment", "NetworkHook", "NetworkPlan",
    "PodVolume", "PortForward", "ProcessIdentity", "ProcessWatch", "SandboxHandle",
    "SandboxSpec", "Stdio",
]

VolumeKind = Literal["host", "empty"]
DEFAULT_PIDS_LIMIT = 1024


@dataclass(frozen=True)
class IsolationCapabilities:
    """What a driver can do; the supervisor and CLI consult this rather than the driver's name."""

    name: str
    pid_namespace_per_app: bool  # stopping an app kills everything it left behind
    enter: bool  # exec/console into a running app
    recover: bool  # a new supervisor can adopt running sandboxes and apps
    network_namespace: bool  # the pod has its own network stack (Linux netns, vnet)
    limits: bool  # the sandbox's ``Limits`` are enforced (cgroups, rctl)
    # ``Limits.block_bps``/``block_iops`` (resource/block-bandwidth, block-iops) are enforced
    block_io_limits: bool = False
    # ``AppSpec.listen`` is honoured: socket-activated ports passed as listening descriptors
    socket_activation: bool = False


@dataclass(frozen=True)
class Limits:
    """What a pod's resource controls enforce; None leaves that resource unlimited."""

    memory_bytes: int | None = None
    cpu_millicores: int | None = None
    pids: int | None = DEFAULT_PIDS_LIMIT
    # appc resource/block-bandwidth and block-iops: one limit each for reads and for writes,
    # bytes (operations) per second; only a driver with ``block_io_limits`` gets them.
    block_bps: int | None = None
    block_iops: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {"memory_bytes": self.memory_bytes, "cpu_millicores": self.cpu_millicores,
                "pids": self.pids, "block_bps": self.block_bps, "block_iops": self.block_iops}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        return cls(memory_bytes=data.get("memory_bytes"),
                   cpu_millicores=data.get("cpu_millicores"),
                   pids=data.get("pids", DEFAULT_PIDS_LIMIT),
                   block_bps=data.get("block_bps"), block_iops=data.get("block_iops"))


@dataclass(frozen=True)
class PodVolume:
    """A pod volume resolved for the driver (from the appc schema's ``Volume``): a host
    directory or a per-pod empty directory."""

    name: str
    kind: VolumeKind
    source: str = ""  # host: absolute host path
    read_only: bool = False
    recursive: bool = True
    mode: int = 0o755  # empty only
    uid: int = 0
    gid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "source": self.source,
                "read_only": self.read_only, "recursive": self.recursive, "mode": self.mode,
                "uid": self.uid, "gid": self.gid}


@dataclass(frozen=True)
class NetworkPlan:
    """The pod's network: its IPv4 address and port forwards. A spec without one gets loopback
    only, and says so (no side channel)."""

    ip4: str
    forwards: tuple[PortForward, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"ip4": self.ip4, "forwards": [list(f) for f in self.forwards]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetworkPlan:
        return cls(str(data["ip4"]), tuple(PortForward(*f) for f in data.get("forwards", ())))


@dataclass(frozen=True)
class MountSpec:
    """One volume mounted at ``path`` (absolute, inside the app's rootfs)."""

    volume: str
    path: str
    read_only: bool = False  # the mount may be read-only even when the volume is not


@dataclass(frozen=True)
class SandboxSpec:
    """A pod's isolation boundary.

    ``pod_dir`` belongs to the pod store: the driver keeps its runtime files in ``pod_dir/run``
    (removed by destroy_sandbox) and empty volumes in ``pod_dir/volumes`` (which outlive the
    sandbox so that a restarted pod keeps their content; they go with the pod).
    """

    pod_uuid: str
    hostname: str
    pod_dir: Path
    volumes: tuple[PodVolume, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    network: NetworkPlan | None = None  # None: loopback only
    limits: Limits | None = None  # None: no resource controls (a driver without ``limits``
    #                               capability ignores them)
    # Files the driver writes over each app's /etc/<name> (resolv.conf, hosts) before it starts:
    # empty keeps the image's own.
    etc_files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AppSpec:
    """One app as stage2 must run it (ace.md "Execution Environment").

    The one spec from prepare to stage1: prepare builds it from the reified manifest and the
    pod store keeps ``to_json()``; the supervisor fills ``rootfs``, ``log_path`` and
    ``metadata_url`` at start; the driver resolves it to stage2's ``ExecPlan``."""

    name: str
    rootfs: Path
    exec: tuple[str, ...]
    user: str = "0"
    group: str = "0"
    supplementary_gids: tuple[int, ...] = ()
    working_directory: str = "/"
    environment: tuple[tuple[str, str], ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    pre_start: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()
    metadata_url: str = ""
    read_only_rootfs: bool = False
    log_path: Path | None = None  # None: the driver's default under pod_dir/run
    log_max_bytes: int = 8 << 20  # the log rotates to ``<log>.1`` past this size
    # What stage1 applies in the app's process before exec (stage1.isolators.IsolatorPlan as
    # JSON: capabilities, seccomp, no_new_privileges).
    isolators: Mapping[str, Any] = field(default_factory=dict)
    # The app's socket-activated ports (aci.md ``socketActivated``): (protocol, port, count),
    # each port of each range a listening socket the app gets as descriptors 3, 4, ...
    listen: tuple[tuple[str, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rootfs": str(self.rootfs),
            "exec": list(self.exec),
            "user": self.user,
            "group": self.group,
            "supplementary_gids": list(self.supplementary_gids),
            "working_directory": self.working_directory,
            "environment": [list(pair) for pair in self.environment],
            "mounts": [[m.volume, m.path, m.read_only] for m in self.mounts],
            "pre_start": [list(h) for h in self.pre_start],
            "post_stop": [list(h) for h in self.post_stop],
            "metadata_url": self.metadata_url,
            "read_only_rootfs": self.read_only_rootfs,
            "log_path": None if self.log_path is None else str(self.log_path),
            "log_max_bytes": self.log_max_bytes,
            "isolators": dict(self.isolators),
            "listen": [list(port) for port in self.listen],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppSpec:
        return cls(
            name=data["name"],
            rootfs=Path(data["rootfs"]),
            exec=tuple(data["exec"]),
            user=data["user"],
            group=data["group"],
            supplementary_gids=tuple(data["supplementary_gids"]),
            working_directory=data["working_directory"],
            environment=tuple((k, v) for k, v in data["environment"]),
            mounts=tuple(MountSpec(v, p, bool(ro)) for v, p, ro in data["mounts"]),
            pre_start=tuple(tuple(h) for h in data["pre_start"]),
            post_stop=tuple(tuple(h) for h in data["post_stop"]),
            metadata_url=data["metadata_url"],
            read_only_rootfs=data["read_only_rootfs"],
            log_path=None if data["log_path"] is None else Path(data["log_path"]),
            log_max_bytes=data["log_max_bytes"],
            isolators=dict(data.get("isolators") or {}),
            listen=tuple((str(p), int(n), int(c)) for p, n, c in data.get("listen") or ()),
        )


@dataclass(frozen=True)
class Stdio:
    """Where a foreground app's stdin/stdout/stderr go (file descriptors the caller owns).

    Without a Stdio the app reads /dev/null and writes to its size-bounded log file.
    """

    stdin: int
    stdout: int
    stderr: int


@dataclass(frozen=True)
class SandboxHandle:
    """A created sandbox, as JSON-able data: ``driver`` names who made it, ``data`` is theirs."""

    driver: str
    pod_uuid: str
    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"driver": self.driver, "pod_uuid": self.pod_uuid, "data": dict(self.data)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxHandle:
        try:
            own = dict(data["data"])
            if "cgroup_dirs" in data and "cgroup_dirs" not in own:
                # Recorded before the Linux driver owned the pod's cgroup (beside the handle).
                own["cgroup_dirs"] = list(data["cgroup_dirs"])
            return cls(str(data["driver"]), str(data["pod_uuid"]), own)
        except (KeyError, TypeError) as exc:
            raise IsolationError(f"malformed sandbox handle: missing {exc}") from None

    def network_plan(self) -> NetworkPlan | None:
        """The network plan the sandbox was made with (older records hold only its address)."""
        if self.data.get("network"):
            return NetworkPlan.from_json(self.data["network"])
        return NetworkPlan(str(self.data["ip4"])) if self.data.get("ip4") else None


@dataclass(frozen=True)
class ProcessIdentity:
    """A pid plus its start time (clock ticks since boot), so a recycled pid is never ours."""

    pid: int
    start_time: int


@dataclass
class AppProcess:
    """A started app: the process whose exit is the app's exit, and where its status lands.

    ``watch`` is a live handle (a pidfd on Linux) that is not serialized; call ``close()`` when
    the supervisor forgets the app.
    """

    app: str
    identity: ProcessIdentity
    status_path: Path
    log_path: Path | None
    watch: ProcessWatch | None = None
    note: ExitNote | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "pid": self.identity.pid,
            "start_time": self.identity.start_time,
            "status_path": str(self.status_path),
            "log_path": None if self.log_path is None else str(self.log_path),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppProcess:
        try:
            return cls(
                app=str(data["app"]),
                identity=ProcessIdentity(int(data["pid"]), int(data["start_time"])),
                status_path=Path(data["status_path"]),
                log_path=None if data.get("log_path") is None else Path(data["log_path"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IsolationError(f"malformed app process record: {exc}") from None

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self.note is not None:
            self.note.close()
            self.note = None


class ExitNote(Protocol):
    """The monitor's own word of the app's end, sent as it ends (after the status file is
    written), before the monitor itself has finished exiting; live, never serialized."""

    async def status(self) -> ExitStatus | None:
        """The status the monitor sent; None when it ended without one (killed)."""
        ...

    def close(self) -> None: ...


class ProcessWatch(Protocol):
    """A live handle on a process that need not be our child (pidfd, kqueue)."""

    async def wait_exited(self) -> None: ...

    def send_signal(self, signum: int) -> None: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NetworkAttachment:
    """What the network layer needs to wire a pod up: its plan, and its netns path (Linux) or
    jail name. ``plan`` is None only on detach of a sandbox recorded without one."""

    pod_uuid: str
    plan: NetworkPlan | None
    netns_path: Path | None = None
    jail_name: str | None = None


class NetworkHook(Protocol):
    """The drivers' network backend (veth/bridge/nftables, lo1 alias/pf): called by their
    create/destroy_sandbox, never by the supervisor.

    ``attach`` runs once the pod's network namespace exists and before any app starts, with the
    spec's plan. ``detach`` must be idempotent: destroy calls it even after a failed attach.
    """

    async def attach(self, attachment: NetworkAttachment) -> None: ...

    async def detach(self, attachment: NetworkAttachment) -> None: ...


class IsolationDriver(Protocol):
    """One pod = one sandbox; apps run in it. Async where it waits; no lifecycle state held."""

    name: str
    capabilities: IsolationCapabilities

    @staticmethod
    def check_limits(limits: Limits) -> None:
        """Refuse ``limits`` this host cannot enforce (no cgroup controller, racct off), cheaply
        and before anything is made: prepare asks it, create_sandbox asks again."""
        ...

    async def create_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        """Make the pod's persistent isolation (namespaces or jail, resource controls, network
        attachment); apps join it later. The handle records what destroy and recover need."""
        ...

    def plan_sandbox(self, spec: SandboxSpec) -> SandboxHandle:
        """The handle ``create_sandbox`` would return, made without creating anything: what
        ``destroy_sandbox`` needs to remove a sandbox whose creation was cut short before its
        handle was recorded (a supervisor killed mid-start)."""
        ...

    def prepare_app(self, planned: SandboxHandle, app: AppSpec, *, tty: bool) -> None:
        """Ready what the app's first ``start_app`` in the ``planned`` sandbox needs (with a
        terminal as its stdio if ``tty``), while ``create_sandbox`` makes it: blocks (a worker
        thread), never raises (the start does the work itself then), and writes only where
        ``destroy_sandbox`` of that handle removes. May do nothing."""
        ...

    async def start_app(
        self, handle: SandboxHandle, app: AppSpec, *, stdio: Stdio | None = None
    ) -> AppProcess:
        """Start one app: returns once it runs (pre-start handlers may still be running)."""
        ...

    async def wait(self, handle: SandboxHandle, process: AppProcess) -> ExitStatus:
        """Wait for the app (and its post-stop handlers) to end; return its exit status."""
        ...

    async def signal(self, handle: SandboxHandle, process: AppProcess, signum: int) -> None:
        """Deliver ``signum`` to the app's main process."""
        ...

    async def stop(
        self, handle: SandboxHandle, process: AppProcess, grace: float
    ) -> ExitStatus:
        """SIGTERM, ``grace`` seconds, then SIGKILL of everything left in the app."""
        ...

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
        """Run ``argv`` inside a running app (``exec``, ``console``) and return its status."""
        ...

    async def destroy_sandbox(self, handle: SandboxHandle) -> None:
        """Kill what is left and remove every process, mount and namespace file; idempotent."""
        ...

    async def recover(self, handle_json: Mapping[str, Any]) -> SandboxHandle | None:
        """Re-adopt a sandbox a previous supervisor recorded; ``None`` if it is gone."""
        ...

    async def recover_app(
        self, handle: SandboxHandle, process_json: Mapping[str, Any]
    ) -> AppProcess | None:
        """Re-adopt a running app; ``None`` if it exited (or its pid now belongs to another)."""
        ...

    async def last_status(self, process: AppProcess) -> ExitStatus | None:
        """The exit status an app left behind (for one that ended while nobody watched)."""
        ...
