"""Preparing a pod: images resolved, apps named and configured, the reified pod manifest,
ports checked, an address allocated, a rootfs clone per app, and one row + event.

The same ``PodOptions`` come from the command line and from a pod manifest file (``-f``).
Anything made on disk before the database insert is destroyed again if the insert fails.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jetpack.config import Config
from jetpack.errors import ConflictError, UsageError
from jetpack.state import StateDB
from jetpack.store.addresses import allocate_address, host_ipv4_addresses
from jetpack.store.pods import AppRecord, PodRecord, PodStore, new_uuid, validate_pod_name
from jetpack.store.restart import RestartPolicy

DEFAULT_USER = "0"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class AppOptions:
    """One app of the pod, as given on the command line or in a pod manifest template."""

    image: str
    name: str | None = None
    exec: list[str] | None = None
    user: str | None = None
    group: str | None = None
    working_directory: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str | None]] = field(default_factory=list)  # (volume, mountPoint)
    image_labels: dict[str, str] = field(default_factory=dict)  # from a template


@dataclass
class PortOption:
    name: str
    host_port: int
    host_ip: str | None = None


@dataclass
class PodOptions:
    apps: list[AppOptions] = field(default_factory=list)
    name: str | None = None
    restart: str = "never"
    ports: list[PortOption] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)  # appc volume objects
    annotations: dict[str, str] = field(default_factory=dict)
    keep_image_etc: bool = False  # keep the image's own /etc/resolv.conf and /etc/hosts


@dataclass(frozen=True)
class ResolvedImage:
    id: str
    name: str
    manifest: Any  # jetpack.appc.ImageManifest
    manifest_json: str


class ImageSource(Protocol):
    """What prepare needs of the image store."""

    def resolve_image(self, ref: str, labels: dict[str, str] | None = None) -> ResolvedImage: ...

    def clone_for_app(self, image_id: str, pod_uuid: str, app: str) -> str: ...

    def destroy_pod_clones(self, pod_uuid: str) -> None: ...


def parse_port(text: str) -> PortOption:
    """``NAME:HOSTPORT`` or ``NAME:HOSTIP:HOSTPORT``."""
    parts = text.split(":")
    try:
        if len(parts) == 2:
            return PortOption(parts[0], _port(parts[1]))
        if len(parts) == 3:
            return PortOption(parts[0], _port(parts[2]), parts[1])
    except ValueError as exc:
        raise UsageError(f"-p {text}: {exc}") from None
    raise UsageError(f"-p {text}: expected NAME:HOSTPORT")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.match(name):
        raise UsageError(f"-e {text}: expected NAME=VALUE with a valid variable name")
    return name, value


def parse_mount(text: str) -> tuple[str, str | None]:
    volume, _, target = text.partition(":")
    if not volume:
        raise UsageError(f"-m {text}: expected VOLUME[:MOUNTPOINT]")
    return volume, target or None


def default_app_name(image_name: str) -> str:
    """rkt's rule: the last path component of the image name (``example.com/envtest`` →
    ``envtest``)."""
    return image_name.rstrip("/").rsplit("/", 1)[-1]


def _used_host_ports(store: PodStore, exclude: str | None = None) -> dict[tuple[str, int], str]:
    used: dict[tuple[str, int], str] = {}
    for pod in store.all():
        if pod.uuid == exclude:
            continue
        for port in pod.options.get("ports", []):
            used[(port.get("protocol", "tcp"), int(port["host_port"]))] = pod.name
    return used


def _effective_app(image: ResolvedImage, options: AppOptions) -> dict[str, Any]:
    manifest = json.loads(image.manifest_json)
    app = dict(manifest.get("app") or {})
    if options.exec is not None:
        app["exec"] = list(options.exec)
    if not app.get("exec"):
        raise UsageError(
            f"image {image.name} has no app to run",
            hint="give one with --exec (a dependency-only image has no app)",
        )
    app.setdefault("user", DEFAULT_USER)
    app.setdefault("group", DEFAULT_USER)
    if options.user is not None:
        app["user"] = options.user
    if options.group is not None:
        app["group"] = options.group
    if options.working_directory is not None:
        app["workingDirectory"] = options.working_directory
    if options.environment:
        env = {e["name"]: e["value"] for e in app.get("environment", [])}
        env.update(options.environment)
        app["environment"] = [{"name": k, "value": v} for k, v in env.items()]
    return app


def build_pod_manifest(
    uuid: str, images: list[ResolvedImage], apps: list[AppOptions], names: list[str],
    options: PodOptions,
) -> dict[str, Any]:
    """The reified pod manifest (appc ``PodManifest``) for the options."""
    runtime_apps = []
    for image, app_options, name in zip(images, apps, names, strict=True):
        app = _effective_app(image, app_options)
        mounts = []
        points = {mp["name"]: mp for mp in app.get("mountPoints", [])}
        for volume, target in app_options.mounts:
            if target is None or not target.startswith("/"):
                point_name = target or volume
                if point_name not in points:
                    raise UsageError(
                        f"app {name}: -m {volume}{':' + target if target else ''}: the image "
                        f"declares no mount point {point_name!r}"
                        + (f" (it has: {', '.join(sorted(points))})" if points else ""),
                        hint="give the path instead: -m VOLUME:/path/in/app",
                    )
                mounts.append({"volume": volume, "path": points[point_name]["path"]})
            else:
                mounts.append({"volume": volume, "path": target})
        entry: dict[str, Any] = {
            "name": name,
            "image": {"name": image.name, "id": image.id,
                      "labels": [{"name": k, "value": v}
                                 for k, v in image.manifest.labels.items()]},
            "app": app,
        }
        if mounts:
            entry["mounts"] = mounts
        runtime_apps.append(entry)
    manifest: dict[str, Any] = {
        "acVersion": "0.8.11",
        "acKind": "PodManifest",
        "apps": runtime_apps,
        "volumes": options.volumes,
        "isolators": [],
        "annotations": [{"name": k, "value": v} for k, v in options.annotations.items()],
        "ports": [],
    }
    for port in options.ports:
        manifest["ports"].append({"name": port.name, "hostPort": port.host_port,
                                  **({"hostIP": port.host_ip} if port.host_ip else {})})
    return manifest


def _resolve_ports(manifest: dict[str, Any], options: PodOptions) -> list[dict[str, Any]]:
    """Each ``-p NAME:HOSTPORT`` matched to the app port declared as NAME."""
    declared: dict[str, tuple[str, dict[str, Any]]] = {}
    for app in manifest["apps"]:
        for port in app["app"].get("ports", []):
            declared.setdefault(port["name"], (app["name"], port))
    resolved = []
    seen: set[tuple[str, int]] = set()
    for option in options.ports:
        if option.name not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise UsageError(f"-p {option.name}:{option.host_port}: no app declares a port "
                             f"named {option.name!r} (declared: {names})")
        app_name, port = declared[option.name]
        protocol = port.get("protocol", "tcp")
        if (protocol, option.host_port) in seen:
            raise UsageError(f"host port {option.host_port}/{protocol} is given twice")
        seen.add((protocol, option.host_port))
        resolved.append({"name": option.name, "app": app_name, "protocol": protocol,
                         "pod_port": int(port["port"]), "host_port": option.host_port,
                         "host_ip": option.host_ip})
    return resolved


def _isolator_plans(manifest: dict[str, Any]
                    ) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Each app's isolator plan (capabilities, seccomp, no_new_privs) as JSON, the pod's
    cgroup/rctl limits, and the warnings for isolators that are not enforced."""
    from jetpack.stage1.apply import plan_to_json
    from jetpack.stage1.isolators import plan_isolators, pod_limits

    pod_isolators = manifest.get("isolators", [])
    plans = []
    warnings: list[str] = []
    for app in manifest["apps"]:
        plan = plan_isolators(app["app"].get("isolators", []), pod_isolators,
                              path=f"apps[{app['name']}].app.isolators")
        plans.append(plan)
        warnings += [f"app {app['name']}: {w}" for w in plan.warnings]
    limits = pod_limits(pod_isolators, plans)
    return ([plan_to_json(p.capabilities, p.seccomp, p.no_new_privileges,
                          ambient=p.ambient_capabilities) for p in plans],
            {"memory_bytes": limits.memory_bytes, "cpu_millicores": limits.cpu_millicores,
             "pids": limits.pids}, sorted(set(warnings)))


def _app_spec(name: str, app: dict[str, Any], mounts: list[dict[str, Any]],
              volumes: dict[str, dict[str, Any]], isolators: dict[str, Any]) -> str:
    """The stage1 ``AppSpec`` JSON (rootfs, log path and metadata URL are filled at start)."""
    handlers = {h["name"]: list(h["exec"]) for h in app.get("eventHandlers", [])}
    mount_specs = []
    for mount in mounts:
        volume = volumes.get(mount["volume"])
        if volume is None:
            raise UsageError(f"app {name}: mount {mount['path']} names volume "
                             f"{mount['volume']!r}, which the pod does not define",
                             hint="define it with -v NAME,kind=empty (or kind=host,source=...)")
        mount_specs.append([mount["volume"], mount["path"], bool(mount.get("readOnly", False))])
    spec = {
        "name": name,
        "rootfs": "",
        "exec": list(app["exec"]),
        "user": str(app.get("user", DEFAULT_USER)),
        "group": str(app.get("group", DEFAULT_USER)),
        "supplementary_gids": list(app.get("supplementaryGIDs", [])),
        "working_directory": app.get("workingDirectory") or "/",
        "environment": [[e["name"], e["value"]] for e in app.get("environment", [])],
        "mounts": mount_specs,
        "pre_start": [handlers["pre-start"]] if "pre-start" in handlers else [],
        "post_stop": [handlers["post-stop"]] if "post-stop" in handlers else [],
        "metadata_url": "",
        "read_only_rootfs": False,
        "log_path": None,
        "log_max_bytes": 8 << 20,
        "isolators": isolators,
        "cgroup_dirs": [],
    }
    return json.dumps(spec)


def _sandbox_volumes(volumes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for v in volumes:
        out.append({
            "name": v["name"], "kind": v["kind"], "source": v.get("source", ""),
            "read_only": bool(v.get("readOnly", False)),
            "recursive": bool(v.get("recursive", True)),
            "mode": int(str(v.get("mode", "0755")), 8), "uid": int(v.get("uid", 0)),
            "gid": int(v.get("gid", 0)),
        })
    return out


def prepare_pod(
    config: Config, state: StateDB, images: ImageSource, options: PodOptions
) -> PodRecord:
    """Prepare a pod from ``options``; returns its record (state ``prepared``)."""
    from jetpack.appc import PodManifest

    if not options.apps:
        raise UsageError("prepare needs at least one image")
    store = PodStore(state)
    if options.name is not None:
        validate_pod_name(options.name)
    resolved = [images.resolve_image(a.image, a.image_labels or None) for a in options.apps]
    names: list[str] = []
    for image, app in zip(resolved, options.apps, strict=True):
        name = app.name or default_app_name(image.name)
        if name in names:
            raise UsageError(f"two apps are named {name!r}",
                             hint="name them apart with --app-name")
        names.append(name)
    uuid = new_uuid()
    pod_name = options.name or f"{names[0]}-{uuid[:8]}"
    manifest = build_pod_manifest(uuid, resolved, options.apps, names, options)
    parsed = PodManifest.from_json(json.dumps(manifest))  # validates everything we built
    manifest_json = parsed.to_json()
    ports = _resolve_ports(manifest, options)
    used = _used_host_ports(store)
    for port in ports:
        holder = used.get((port["protocol"], port["host_port"]))
        if holder is not None:
            raise ConflictError(f"host port {port['host_port']}/{port['protocol']} is already "
                                f"forwarded to pod {holder}")
    volumes = {v["name"]: v for v in options.volumes}
    plans, limits, warnings = _isolator_plans(manifest)
    specs = [
        _app_spec(app["name"], app["app"], app.get("mounts", []), volumes, plan)
        for app, plan in zip(manifest["apps"], plans, strict=True)
    ]
    pod = PodRecord(
        uuid=uuid, name=pod_name, state="prepared", manifest=manifest_json,
        options={"restart": options.restart, "ports": ports, "limits": limits,
                 "isolator_warnings": warnings,
                 "sandbox": {"volumes": _sandbox_volumes(options.volumes),
                             "annotations": dict(options.annotations)},
                 "keep_image_etc": options.keep_image_etc},
        apps=[AppRecord(name, image.id, spec=spec)
              for name, image, spec in zip(names, resolved, specs, strict=True)],
    )
    try:
        for record, image in zip(pod.apps, resolved, strict=True):
            record.rootfs = images.clone_for_app(image.id, uuid, record.name)
        network = config["jail.network"]
        host = host_ipv4_addresses()
        with state.transaction() as tx:
            pod.ip = allocate_address(tx, network, host)
            used = _used_host_ports(store)  # again, inside the write lock
            for port in ports:
                holder = used.get((port["protocol"], port["host_port"]))
                if holder is not None:
                    raise ConflictError(f"host port {port['host_port']} is already forwarded "
                                        f"to pod {holder}")
            store.insert(tx, pod)
    except BaseException:
        images.destroy_pod_clones(uuid)
        raise
    return pod


# --- the command line ----------------------------------------------------------------------

POD_FLAGS = {"--name": 1, "--restart": 1, "-p": 1, "--port": 1, "-v": 1, "--volume": 1,
             "-a": 1, "--annotation": 1, "-f": 1, "--pod-manifest": 1, "--rm": 0, "-t": 0,
             "--interactive": 0, "--keep-etc": 0}
APP_FLAGS = {"--app-name": 1, "-m": 1, "--mount": 1, "--exec": 1, "--user": 1, "--group": 1,
             "-e": 1, "--env": 1, "--working-dir": 1, "-w": 1}


def parse_command_line(argv: Sequence[str]) -> tuple[PodOptions, dict[str, Any]]:
    """Pod options anywhere; app options apply to the image before them. Returns the options
    and the remaining pod-level flags (``--rm``, ``-t``, ``-f``)."""
    from jetpack.appc import parse_volume_arg

    options = PodOptions()
    extra: dict[str, Any] = {"rm": False, "tty": False, "manifest": None}
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        flag, eq, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag in POD_FLAGS or flag in APP_FLAGS:
            arity = POD_FLAGS.get(flag, APP_FLAGS.get(flag, 0))
            if arity and not eq:
                if i + 1 >= len(words):
                    raise UsageError(f"{flag} needs a value")
                value = words[i + 1]
                i += 2
            else:
                value = inline
                i += 1
            if flag in APP_FLAGS and not options.apps:
                raise UsageError(f"{flag} applies to an image: put it after the image")
            app = options.apps[-1] if options.apps else None
            if flag == "--name":
                options.name = value
            elif flag == "--restart":
                options.restart = str(RestartPolicy.parse(value))
            elif flag in ("-p", "--port"):
                options.ports.append(parse_port(value))
            elif flag in ("-v", "--volume"):
                options.volumes.append(parse_volume_arg(value).to_dict())
            elif flag in ("-a", "--annotation"):
                key, sep, val = value.partition("=")
                if not sep or not key:
                    raise UsageError(f"-a {value}: expected KEY=VALUE")
                options.annotations[key] = val
            elif flag in ("-f", "--pod-manifest"):
                extra["manifest"] = value
            elif flag == "--rm":
                extra["rm"] = True
            elif flag in ("-t", "--interactive"):
                extra["tty"] = True
            elif flag == "--keep-etc":
                options.keep_image_etc = True
            elif app is not None:
                _set_app_flag(app, flag, value)
            continue
        if word == "--":
            if not options.apps:
                raise UsageError("-- must follow an image: it starts that app's arguments")
            options.apps[-1].exec = words[i + 1:]
            break
        if word.startswith("-") and word != "-":
            raise UsageError(f"unknown option {word}")
        options.apps.append(AppOptions(image=word))
        i += 1
    return options, extra


def _set_app_flag(app: AppOptions, flag: str, value: str) -> None:
    if flag == "--app-name":
        app.name = value
    elif flag in ("-m", "--mount"):
        app.mounts.append(parse_mount(value))
    elif flag == "--exec":
        try:
            app.exec = shlex.split(value)
        except ValueError as exc:
            raise UsageError(f"--exec {value!r}: {exc}") from None
    elif flag == "--user":
        app.user = value
    elif flag == "--group":
        app.group = value
    elif flag in ("-e", "--env"):
        key, val = parse_env(value)
        app.environment[key] = val
    elif flag in ("-w", "--working-dir"):
        app.working_directory = value


def options_from_manifest(text: str, base: PodOptions) -> PodOptions:
    """A pod manifest (reified, or a template whose apps name images without an ``id``)
    turned into options; command-line pod options given too take precedence."""
    from jetpack.appc import PodManifest

    manifest = PodManifest.from_json(text)
    data = json.loads(manifest.to_json())
    apps = []
    for app in data.get("apps", []):
        image = app["image"]
        labels = {lab["name"]: lab["value"] for lab in image.get("labels", [])}
        option = AppOptions(image=image.get("id") or image["name"], name=app["name"],
                            image_labels=labels if not image.get("id") else {})
        inner = app.get("app")
        if inner:
            option.exec = inner.get("exec")
            option.user = inner.get("user")
            option.group = inner.get("group")
            option.working_directory = inner.get("workingDirectory")
            option.environment = {e["name"]: e["value"] for e in inner.get("environment", [])}
        option.mounts = [(m["volume"], m["path"]) for m in app.get("mounts", [])]
        apps.append(option)
    if base.apps:
        raise UsageError("give images either on the command line or in the pod manifest")
    ports = list(base.ports) or [PortOption(p["name"], int(p["hostPort"]), p.get("hostIP"))
                                 for p in data.get("ports", [])]
    annotations = {a["name"]: a["value"] for a in data.get("annotations", [])}
    annotations.update(base.annotations)
    return PodOptions(apps=apps, name=base.name, restart=base.restart, ports=ports,
                      volumes=data.get("volumes", []) + base.volumes, annotations=annotations,
                      keep_image_etc=base.keep_image_etc)

