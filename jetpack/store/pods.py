"""The pod store: pod and app rows, pod references (UUID, unique prefix, name) and listings.

The supervisor owns lifecycle transitions; it records them through ``PodStore.transition`` so
that each state change and its event commit in one transaction.
"""

from __future__ import annotations

import json
import re
import uuid as uuidlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jetpack.errors import AmbiguousError, ConflictError, NotFoundError, UsageError
from jetpack.locks import file_lock
from jetpack.stage1.base import Limits, PodVolume
from jetpack.state import StateDB, Transaction
from jetpack.state.db import now

POD_STATES = ("prepared", "starting", "running", "stopping", "exited", "failed")
APP_STATES = ("prepared", "running", "exited", "restarting")
_UUID_PREFIX = re.compile(r"^[0-9a-f-]+$")
_POD_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
MIN_PREFIX = 4


@dataclass
class AppRecord:
    name: str
    image_id: str
    state: str = "prepared"
    exit_status: int | None = None
    signal: int | None = None
    pid: int | None = None
    pid_start: str | None = None
    restarts: int = 0
    rootfs: str = ""
    spec: str = ""  # the stage1 AppSpec, JSON, written at prepare
    process: dict[str, Any] = field(default_factory=dict)  # the running process, for adoption

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image_id,
            "state": self.state,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "restarts": self.restarts,
        }


@dataclass(frozen=True)
class PortBinding:
    """A host port forwarded to a pod port (``-p NAME:HOSTPORT``), resolved at prepare."""

    name: str
    app: str  # the app declaring the port ("" for a bare pod port)
    protocol: str
    pod_port: int
    host_port: int
    host_ip: str | None = None


@dataclass(frozen=True)
class PodOptions:
    """What prepare decided for a pod beyond its manifest: the ``pods.options`` column,
    serialized only here. Rows written by older versions load (missing keys: defaults)."""

    restart: str = "never"
    ports: tuple[PortBinding, ...] = ()
    limits: Limits = field(default_factory=Limits)
    volumes: tuple[PodVolume, ...] = ()  # the sandbox's volumes, resolved
    annotations: Mapping[str, str] = field(default_factory=dict)  # the sandbox's
    keep_image_etc: bool = False
    tty: bool = False  # ``run -t``: the first app runs on a pty the CLI attaches to
    isolator_warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "restart": self.restart,
            "ports": [{"name": p.name, "app": p.app, "protocol": p.protocol,
                       "pod_port": p.pod_port, "host_port": p.host_port, "host_ip": p.host_ip}
                      for p in self.ports],
            "limits": self.limits.to_json(),
            "sandbox": {"volumes": [v.to_json() for v in self.volumes],
                        "annotations": dict(self.annotations)},
            "keep_image_etc": self.keep_image_etc,
            "tty": self.tty,
            "isolator_warnings": list(self.isolator_warnings),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodOptions:
        sandbox = data.get("sandbox") or {}
        return cls(
            restart=str(data.get("restart", "never")),
            ports=tuple(PortBinding(name=p.get("name", ""), app=p.get("app", ""),
                                    protocol=p.get("protocol", "tcp"),
                                    pod_port=int(p["pod_port"]), host_port=int(p["host_port"]),
                                    host_ip=p.get("host_ip"))
                        for p in data.get("ports") or ()),
            limits=Limits.from_json(data.get("limits") or {}),
            volumes=tuple(PodVolume(**v) for v in sandbox.get("volumes") or ()),
            annotations=dict(sandbox.get("annotations") or {}),
            keep_image_etc=bool(data.get("keep_image_etc", False)),
            tty=bool(data.get("tty", False)),
            isolator_warnings=tuple(data.get("isolator_warnings") or ()),
        )


@dataclass
class PodRecord:
    uuid: str
    name: str
    state: str
    manifest: str
    options: PodOptions = field(default_factory=PodOptions)
    ip: str | None = None
    created: float = 0.0
    started: float | None = None
    exited: float | None = None
    boot: bool = False
    priority: int = 99
    runtime: dict[str, Any] = field(default_factory=dict)
    apps: list[AppRecord] = field(default_factory=list)

    def app(self, name: str) -> AppRecord:
        for app in self.apps:
            if app.name == name:
                return app
        names = ", ".join(a.name for a in self.apps)
        raise NotFoundError(f"pod {self.name} has no app {name!r} (apps: {names})")

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "ip": self.ip,
            "created": _rfc3339(self.created),
            "started": _rfc3339(self.started),
            "exited": _rfc3339(self.exited),
            "boot": self.boot,
            "priority": self.priority,
            "restart": self.options.restart,
            "apps": [app.to_json_obj() for app in self.apps],
        }


def _rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate_pod_name(name: str) -> str:
    if not _POD_NAME.match(name) or len(name) > 63:
        raise UsageError(
            f"bad pod name {name!r}: lowercase letters, digits and . _ - between them, "
            "at most 63 characters"
        )
    return name


def pod_files_lock(root: Path, *, exclusive: bool = False) -> AbstractContextManager[None]:
    """An flock on ``<root>/pods.lock``: prepare holds it shared from its first clone until
    its row is committed; gc holds it exclusive while it removes pod files that no row names,
    so it never takes a pod being prepared for a leftover."""
    return file_lock(root / "pods.lock", exclusive=exclusive)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


class PodStore:
    """Pod rows in the state database."""

    def __init__(self, state: StateDB) -> None:
        self.state = state

    # --- reading -----------------------------------------------------------------------------

    def all(self) -> list[PodRecord]:
        rows = self.state.query("SELECT * FROM pods ORDER BY created, uuid")
        apps = self._apps_by_pod()
        return [self._record(row, apps.get(row["uuid"], [])) for row in rows]

    def get(self, uuid: str) -> PodRecord:
        rows = self.state.query("SELECT * FROM pods WHERE uuid = ?", (uuid,))
        if not rows:
            raise NotFoundError(f"no pod {uuid}")
        return self._record(rows[0], self._apps_by_pod(uuid).get(uuid, []))

    def resolve(self, ref: str) -> PodRecord:
        """A pod by UUID, unique UUID prefix, or name."""
        ref = ref.strip()
        if not ref:
            raise UsageError("empty pod reference")
        by_name = self.state.query("SELECT uuid FROM pods WHERE name = ?", (ref,))
        if by_name:
            return self.get(by_name[0]["uuid"])
        lowered = ref.lower()
        if _UUID_PREFIX.match(lowered) and len(lowered) >= MIN_PREFIX:
            matches = self.state.query(
                "SELECT uuid, name FROM pods WHERE uuid LIKE ? ORDER BY uuid",
                (lowered.replace("%", "") + "%",),
            )
            if len(matches) == 1:
                return self.get(matches[0]["uuid"])
            if len(matches) > 1:
                raise AmbiguousError(
                    f"pod reference {ref!r} is ambiguous",
                    [f"{m['uuid']} ({m['name']})" for m in matches],
                )
        raise NotFoundError(f"no pod {ref!r}", hint="'jetpack list' shows the pods")

    def _apps_by_pod(self, uuid: str | None = None) -> dict[str, list[AppRecord]]:
        sql = "SELECT * FROM apps"
        params: tuple[str, ...] = ()
        if uuid is not None:
            sql += " WHERE pod_uuid = ?"
            params = (uuid,)
        by_pod: dict[str, list[AppRecord]] = {}
        for row in self.state.query(sql + " ORDER BY rowid", params):
            by_pod.setdefault(row["pod_uuid"], []).append(
                AppRecord(
                    name=row["name"], image_id=row["image_id"], state=row["state"],
                    exit_status=row["exit_status"], signal=row["signal"], pid=row["pid"],
                    pid_start=row["pid_start"], restarts=row["restarts"], rootfs=row["rootfs"],
                    spec=row["spec"], process=json.loads(row["process"]),
                )
            )
        return by_pod

    @staticmethod
    def _record(row: Any, apps: list[AppRecord]) -> PodRecord:
        return PodRecord(
            uuid=row["uuid"], name=row["name"], state=row["state"], manifest=row["manifest"],
            options=PodOptions.from_json(json.loads(row["options"])), ip=row["ip"],
            created=row["created"], started=row["started"], exited=row["exited"],
            boot=bool(row["boot"]), priority=row["priority"],
            runtime=json.loads(row["runtime"]), apps=apps,
        )

    # --- writing -----------------------------------------------------------------------------

    def set_options(self, tx: Transaction, pod: PodRecord, options: PodOptions) -> None:
        """Replace a pod's options (``run -t`` asks for a terminal on a prepared pod)."""
        tx.execute("UPDATE pods SET options = ? WHERE uuid = ?",
                   (json.dumps(options.to_json()), pod.uuid))
        pod.options = options

    def insert(self, tx: Transaction, pod: PodRecord) -> None:
        """Record a newly prepared pod and its apps (with the ``pod.prepared`` event)."""
        taken = tx.execute("SELECT uuid FROM pods WHERE name = ?", (pod.name,)).fetchone()
        if taken is not None:
            raise ConflictError(
                f"a pod named {pod.name!r} already exists ({taken['uuid']})",
                hint="choose another --name, or destroy that pod",
            )
        tx.execute(
            "INSERT INTO pods (uuid, name, state, manifest, options, ip, created, boot, priority)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (pod.uuid, pod.name, "prepared", pod.manifest, json.dumps(pod.options.to_json()),
             pod.ip,
             pod.created or now(), int(pod.boot), pod.priority),
        )
        for app in pod.apps:
            tx.execute(
                "INSERT INTO apps (pod_uuid, name, image_id, state, rootfs, spec)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (pod.uuid, app.name, app.image_id, "prepared", app.rootfs, app.spec),
            )
        tx.event(
            "pod.prepared", pod=pod.uuid, pod_name=pod.name,
            apps=[{"name": a.name, "image": a.image_id} for a in pod.apps],
        )

    def transition(
        self, tx: Transaction, pod: PodRecord, state: str, event: str | None = None,
        **payload: Any,
    ) -> None:
        """Move a pod to ``state`` and append ``event`` (default ``pod.<state>``)."""
        if state not in POD_STATES:
            raise ValueError(f"unknown pod state {state}")
        stamps = {"running": "started", "exited": "exited", "failed": "exited"}
        sets = ["state = ?"]
        params: list[Any] = [state]
        if state in stamps:
            sets.append(f"{stamps[state]} = ?")
            params.append(now())
        tx.execute(f"UPDATE pods SET {', '.join(sets)} WHERE uuid = ?",  # noqa: S608  # fixed column names
                   (*params, pod.uuid))
        pod.state = state
        names = {"running": "pod.started"}
        tx.event(event or names.get(state, f"pod.{state}"), pod=pod.uuid, pod_name=pod.name,
                 **payload)

    def update_app(self, tx: Transaction, pod_uuid: str, app: AppRecord) -> None:
        tx.execute(
            "UPDATE apps SET state = ?, exit_status = ?, signal = ?, pid = ?, pid_start = ?,"
            " restarts = ?, rootfs = ?, process = ? WHERE pod_uuid = ? AND name = ?",
            (app.state, app.exit_status, app.signal, app.pid, app.pid_start, app.restarts,
             app.rootfs, json.dumps(app.process), pod_uuid, app.name),
        )

    def set_runtime(self, tx: Transaction, pod_uuid: str, runtime: dict[str, Any]) -> None:
        tx.execute("UPDATE pods SET runtime = ? WHERE uuid = ?", (json.dumps(runtime), pod_uuid))

    def set_boot(self, tx: Transaction, pod: PodRecord, boot: bool, priority: int | None) -> None:
        """Mark (or unmark) a pod to start with the supervisor, at ``priority`` (lower first)."""
        pod.boot = boot
        if priority is not None:
            pod.priority = priority
        tx.execute("UPDATE pods SET boot = ?, priority = ? WHERE uuid = ?",
                   (int(pod.boot), pod.priority, pod.uuid))
        tx.event("pod.enabled" if boot else "pod.disabled", pod=pod.uuid, pod_name=pod.name,
                 priority=pod.priority)

    def delete(self, tx: Transaction, pod: PodRecord) -> None:
        tx.execute("DELETE FROM pods WHERE uuid = ?", (pod.uuid,))
        tx.event("pod.destroyed", pod=pod.uuid, pod_name=pod.name)
