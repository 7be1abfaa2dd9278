"""Preparing a pod: images resolved, apps named and configured, the reified pod manifest,
ports checked, an address allocated, a rootfs clone per app, and one row + event.

A ``PrepareRequest`` comes from the command line (parsed in jetpack/cli/prepare.py) or from a
pod manifest file (``-f``, ``options_from_manifest``); the pod's record keeps a typed
``PodOptions`` and each app's stage1 ``AppSpec``.
Every field of a pod manifest is either honoured (and shown in the reified manifest) or refused
with an error naming it: nothing it asks for is dropped silently.
Anything made on disk before the database insert is destroyed again if the insert fails.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jetpack.config import Config
from jetpack.errors import ConflictError, UsageError, ValidationError
from jetpack.killpoint import killpoint
from jetpack.stage1.base import Limits, PodVolume
from jetpack.state import StateDB
from jetpack.store.addresses import allocate_address, host_ipv4_addresses
from jetpack.store.pods import (
    AppRecord,
    PodOptions,
    PodRecord,
    PodStore,
    PortBinding,
    new_uuid,
    pod_files_lock,
    validate_pod_name,
)

DEFAULT_USER = "0"


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
    # (volume, mount point name or path, read-only)
    mounts: list[tuple[str, str | None, bool]] = field(default_factory=list)
    image_labels: dict[str, str] = field(default_factory=dict)  # from a template
    # From a pod manifest: its app's other fields (isolators, mountPoints, ports,
    # eventHandlers, supplementaryGIDs) replace the image's; where they came from, for errors.
    app_fields: dict[str, Any] = field(default_factory=dict)
    read_only_rootfs: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    manifest_path: str | None = None  # ``apps[0]`` when the app came from a pod manifest


@dataclass
class PortOption:
    name: str
    host_port: int
    host_ip: str | None = None
    pod_port: dict[str, Any] | None = None  # appc ``podPort``: forward to a port no app declares


@dataclass
class PrepareRequest:
    apps: list[AppOptions] = field(default_factory=list)
    name: str | None = None
    restart: str = "never"
    ports: list[PortOption] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)  # appc volume objects
    annotations: dict[str, str] = field(default_factory=dict)
    keep_image_etc: bool = False  # keep the image's own /etc/resolv.conf and /etc/hosts
    isolators: list[dict[str, Any]] = field(default_factory=list)  # pod-level, from -f
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)


    @classmethod
    def from_json(cls, obj: Any) -> PrepareRequest:
        """The request ``jetpack run`` sends the supervisor (``cli.prepare.parse_words``: the
        command line as plain JSON); anything of the wrong shape is a ``UsageError``."""
        pod = _object(obj, "the run request")
        request = cls(
            name=_optional_str(pod.get("name"), "name"),
            restart=_str(pod.get("restart", "never"), "restart"),
            ports=[PortOption(_str(p.get("name"), "port name"), _int(p.get("host_port")),
                              _optional_str(p.get("host_ip"), "port host_ip"))
                   for p in (_object(x, "a port") for x in _list(pod.get("ports"), "ports"))],
            volumes=[_object(v, "a volume") for v in _list(pod.get("volumes"), "volumes")],
            annotations=_strings(pod.get("annotations"), "annotations"),
            keep_image_etc=pod.get("keep_image_etc", False) is True,
        )
        from jetpack.store.restart import RestartPolicy

        request.restart = str(RestartPolicy.parse(request.restart))
        for entry in _list(pod.get("apps"), "apps"):
            app = _object(entry, "an app")
            exec_ = app.get("exec")
            request.apps.append(AppOptions(
                image=_str(app.get("image"), "image"),
                name=_optional_str(app.get("name"), "app name"),
                exec=None if exec_ is None else [_str(w, "exec") for w in _list(exec_, "exec")],
                user=_optional_str(app.get("user"), "user"),
                group=_optional_str(app.get("group"), "group"),
                working_directory=_optional_str(app.get("working_directory"),
                                                "working_directory"),
                environment=_strings(app.get("environment"), "environment"),
                mounts=[(_str(m[0], "mount"), _optional_str(m[1], "mount"), m[2] is True)
                        for m in (_list(x, "a mount") for x in _list(app.get("mounts"),
                                                                     "mounts"))
                        if len(m) == 3 or _bad("a mount is [volume, target, read-only]")],
            ))
        return request


def _bad(what: str) -> bool:
    raise UsageError(f"run request: {what}")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _bad(f"{what} must be an object")
    return value  # type: ignore[no-any-return]  # checked just above


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        _bad(f"{what} must be a list")
    return value  # type: ignore[no-any-return]  # checked just above


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        _bad(f"{what} must be a string")
    return value  # type: ignore[no-any-return]  # checked just above


def _optional_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        _bad("a port number must be an integer")
    return value  # type: ignore[no-any-return]  # checked just above


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    return {_str(k, what): _str(v, what) for k, v in _object(value, what).items()}


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


def default_app_name(image_name: str) -> str:
    """rkt's rule: the last path component of the image name (``example.com/envtest`` →
    ``envtest``)."""
    return image_name.rstrip("/").rsplit("/", 1)[-1]


def _used_host_ports(store: PodStore, exclude: str | None = None) -> dict[tuple[str, int], str]:
    used: dict[tuple[str, int], str] = {}
    for pod in store.all():
        if pod.uuid == exclude:
            continue
        for port in pod.options.ports:
            used[(port.protocol, port.host_port)] = pod.name
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
    app.update(options.app_fields)
    return app


def build_pod_manifest(
    uuid: str, images: list[ResolvedImage], apps: list[AppOptions], names: list[str],
    options: PrepareRequest,
) -> tuple[dict[str, Any], list[str]]:
    """The reified pod manifest (appc ``PodManifest``) for the options, and the warnings for
    the empty volumes it had to make for mount points nothing fulfils."""
    runtime_apps = []
    volumes = list(options.volumes)
    warnings: list[str] = []
    for image, app_options, name in zip(images, apps, names, strict=True):
        app = _effective_app(image, app_options)
        mounts = []
        points = {mp["name"]: mp for mp in app.get("mountPoints", [])}
        by_path = {mp["path"]: mp for mp in points.values()}
        for volume, target, read_only in app_options.mounts:
            if target is None or not target.startswith("/"):
                point_name = target or volume
                if point_name not in points:
                    raise UsageError(
                        f"app {name}: -m {volume}{':' + target if target else ''}: the image "
                        f"declares no mount point {point_name!r}"
                        + (f" (it has: {', '.join(sorted(points))})" if points else ""),
                        hint="give the path instead: -m VOLUME:/path/in/app",
                    )
                point = points[point_name]
            else:
                point = by_path.get(target, {"path": target})
            # a mount point the image declares read-only stays read-only
            mount = {"volume": volume, "path": point["path"]}
            if read_only or point.get("readOnly"):
                mount["readOnly"] = True
            mounts.append(mount)
        entry: dict[str, Any] = {
            "name": name,
            "image": {"name": image.name, "id": image.id,
                      "labels": [{"name": k, "value": v}
                                 for k, v in image.manifest.labels.items()]},
            "app": app,
        }
        mounts += _implicit_mounts(name, app, mounts, volumes, warnings)
        if app_options.read_only_rootfs:
            entry["readOnlyRootFS"] = True
        if mounts:
            entry["mounts"] = mounts
        if app_options.annotations:
            entry["annotations"] = [{"name": k, "value": v}
                                    for k, v in app_options.annotations.items()]
        runtime_apps.append(entry)
    manifest: dict[str, Any] = {
        "acVersion": "0.8.11",
        "acKind": "PodManifest",
        "apps": runtime_apps,
        "volumes": volumes,
        "isolators": options.isolators,
        "annotations": [{"name": k, "value": v} for k, v in options.annotations.items()],
        "ports": [],
    }
    if options.user_annotations:
        manifest["userAnnotations"] = dict(options.user_annotations)
    if options.user_labels:
        manifest["userLabels"] = dict(options.user_labels)
    for port in options.ports:
        manifest["ports"].append({"name": port.name, "hostPort": port.host_port,
                                  **({"hostIP": port.host_ip} if port.host_ip else {}),
                                  **({"podPort": port.pod_port} if port.pod_port else {})})
    return manifest, warnings


def _implicit_mounts(app_name: str, app: dict[str, Any], mounts: list[dict[str, Any]],
                     volumes: list[dict[str, Any]], warnings: list[str]) -> list[dict[str, Any]]:
    """A mount for each of the app's mount points that no explicit mount fulfils, as rkt makes
    them (ace.md: the executor maps an appropriate volume to each mount point): the pod volume
    of the mount point's name, else an implicit empty volume of that name, added to
    ``volumes`` (shared by every app whose mount point has that name) with a warning."""
    taken = {posixpath.normpath(m["path"]) for m in mounts}
    made = []
    for point in app.get("mountPoints", []):
        if posixpath.normpath(point["path"]) in taken:
            continue
        if not any(v["name"] == point["name"] for v in volumes):
            volumes.append({"name": point["name"], "kind": "empty", "mode": "0755",
                            "uid": 0, "gid": 0})
            warnings.append(f"app {app_name}: no volume named {point['name']!r} for mount "
                            f"point {point['path']}; using an implicit empty volume (removed "
                            "with the pod)")
        mount = {"volume": point["name"], "path": point["path"]}
        if point.get("readOnly"):
            mount["readOnly"] = True
        made.append(mount)
        taken.add(posixpath.normpath(point["path"]))
    return made


def _check_port_names(manifest: dict[str, Any]) -> None:
    """pods.md: port names MUST be unique among the apps of a pod (a pod-level port names one)."""
    owner: dict[str, str] = {}
    for i, app in enumerate(manifest["apps"]):
        for j, port in enumerate(app["app"].get("ports", [])):
            other = owner.setdefault(port["name"], app["name"])
            if other != app["name"]:
                raise ValidationError(
                    f"apps[{i}].app.ports[{j}].name",
                    f"apps {other} and {app['name']} both declare a port named "
                    f"{port['name']!r}; port names must be unique in a pod (rename one in a pod "
                    "manifest given with prepare -f: an app's ports there replace the image's)")


def _resolve_ports(manifest: dict[str, Any], options: PrepareRequest) -> list[dict[str, Any]]:
    """Each ``-p NAME:HOSTPORT`` matched to the app port declared as NAME."""
    declared: dict[str, tuple[str, dict[str, Any]]] = {}
    for app in manifest["apps"]:
        for port in app["app"].get("ports", []):
            declared.setdefault(port["name"], (app["name"], port))
    resolved = []
    seen: set[tuple[str, int]] = set()
    for option in options.ports:
        if option.pod_port is not None:
            app_name, port = "", option.pod_port
        elif option.name not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise UsageError(f"-p {option.name}:{option.host_port}: no app declares a port "
                             f"named {option.name!r} (declared: {names})")
        else:
            app_name, port = declared[option.name]
        protocol = port.get("protocol", "tcp")
        what = f"port {option.name} ({protocol} {port['port']})"
        if protocol not in ("tcp", "udp"):
            raise UsageError(f"{what}: only tcp and udp ports can be forwarded")
        if int(port.get("count", 1)) != 1:
            raise UsageError(f"{what}: a range of {port['count']} ports cannot be forwarded; "
                             "forward single ports")
        if not 0 < option.host_port < 65536:
            raise UsageError(f"{what}: host port {option.host_port} is not 1-65535")
        if (protocol, option.host_port) in seen:
            raise UsageError(f"host port {option.host_port}/{protocol} is given twice")
        seen.add((protocol, option.host_port))
        resolved.append({"name": option.name, "app": app_name, "protocol": protocol,
                         "pod_port": int(port["port"]), "host_port": option.host_port,
                         "host_ip": option.host_ip})
    return resolved


# Validated and planned, but applied by no stage1 driver yet.
_NOT_APPLIED = ("os/unix/sysctl",)


def _isolator_problems(isolators: list[dict[str, Any]], path: str, block_io: bool
                       ) -> list[tuple[str, str]]:
    from jetpack.stage1.isolators import isolator_problems

    problems = [(where, why.removesuffix("; ignored").removesuffix(" ignored"))
                for where, why in isolator_problems(isolators, path, block_io=block_io)]
    problems += [(f"{path}[{i}]", f"isolator {iso['name']} is not applied by jetpack yet")
                 for i, iso in enumerate(isolators) if iso.get("name") in _NOT_APPLIED]
    return problems


def _isolator_plans(manifest: dict[str, Any], apps: list[AppOptions], *, block_io: bool = False
                    ) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """Each app's isolator plan (capabilities, seccomp, no_new_privs) as JSON, the pod's
    cgroup/rctl limits, and the warnings for an image's isolators that are not enforced.
    An isolator a pod manifest asks for and jetpack would not enforce is refused instead."""
    from jetpack.stage1.apply import plan_to_json
    from jetpack.stage1.isolators import plan_isolators, pod_limits

    pod_isolators = manifest.get("isolators", [])
    refused = _isolator_problems(pod_isolators, "isolators", block_io)
    warnings: list[str] = []
    for app, options in zip(manifest["apps"], apps, strict=True):
        app_isolators = app["app"].get("isolators", [])
        if options.manifest_path is not None and "isolators" in options.app_fields:
            refused += _isolator_problems(app_isolators, f"{options.manifest_path}.app.isolators",
                                          block_io)
        else:
            warnings += [f"app {app['name']}: isolator {iso['name']} is not applied by "
                         "jetpack yet; ignored"
                         for iso in app_isolators if iso.get("name") in _NOT_APPLIED]
    if refused:
        raise ValidationError(*refused[0])
    plans = []
    for app in manifest["apps"]:
        plan = plan_isolators(app["app"].get("isolators", []), pod_isolators,
                              path=f"apps[{app['name']}].app.isolators", block_io=block_io)
        plans.append(plan)
        warnings += [f"app {app['name']}: {w}" for w in plan.warnings]
    limits = pod_limits(pod_isolators, plans, block_io=block_io)
    # Limits are enforced on the pod's cgroup only: one app's limit with an unlimited sibling
    # limits nothing.
    for resource, total in (("resource/memory", limits.memory_bytes),
                            ("resource/cpu", limits.cpu_millicores)):
        if total is not None:
            continue
        for app, options in zip(manifest["apps"], apps, strict=True):
            names = [iso.get("name") for iso in app["app"].get("isolators", [])]
            if resource not in names:
                continue
            why = (f"isolator {resource} cannot be enforced for one app of a pod whose "
                   "other apps have none (limits apply to the whole pod)")
            if options.manifest_path is not None and "isolators" in options.app_fields:
                raise ValidationError(
                    f"{options.manifest_path}.app.isolators[{names.index(resource)}]",
                    why + "; give every app a limit or set it at the pod level")
            warnings.append(f"app {app['name']}: {why}; ignored")
    return ([plan_to_json(p.capabilities, p.seccomp, p.no_new_privileges,
                          ambient=p.ambient_capabilities) for p in plans],
            limits.to_json(), sorted(set(warnings)))


def _app_spec(entry: dict[str, Any], volumes: dict[str, dict[str, Any]],
              isolators: dict[str, Any]) -> str:
    """The stage1 ``AppSpec`` for one app of the reified manifest, as the JSON the pod store
    keeps (rootfs, log path and metadata URL are filled at start)."""
    from jetpack.stage1.base import AppSpec, MountSpec

    name, app, mounts = entry["name"], entry["app"], entry.get("mounts", [])
    handlers = {h["name"]: tuple(h["exec"]) for h in app.get("eventHandlers", [])}
    mount_specs = []
    for mount in mounts:
        volume = volumes.get(mount["volume"])
        if volume is None:
            raise UsageError(f"app {name}: mount {mount['path']} names volume "
                             f"{mount['volume']!r}, which the pod does not define",
                             hint="define it with -v NAME,kind=empty (or kind=host,source=...)")
        mount_specs.append(MountSpec(mount["volume"], mount["path"],
                                     bool(mount.get("readOnly", False))))
    spec = AppSpec(
        name=name,
        rootfs=Path(),
        exec=tuple(app["exec"]),
        user=str(app.get("user", DEFAULT_USER)),
        group=str(app.get("group", DEFAULT_USER)),
        supplementary_gids=tuple(app.get("supplementaryGIDs", [])),
        working_directory=app.get("workingDirectory") or "/",
        environment=tuple((e["name"], e["value"]) for e in app.get("environment", [])),
        mounts=tuple(mount_specs),
        pre_start=(handlers["pre-start"],) if "pre-start" in handlers else (),
        post_stop=(handlers["post-stop"],) if "post-stop" in handlers else (),
        read_only_rootfs=bool(entry.get("readOnlyRootFS", False)),
        isolators=isolators,
        listen=tuple((p.get("protocol", "tcp"), int(p["port"]), int(p.get("count", 1)))
                     for p in app.get("ports", []) if p.get("socketActivated")),
    )
    return json.dumps(spec.to_json())


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
    config: Config, state: StateDB, images: ImageSource, options: PrepareRequest
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
    manifest, volume_warnings = build_pod_manifest(uuid, resolved, options.apps, names, options)
    parsed = PodManifest.from_json(json.dumps(manifest))  # validates everything we built
    manifest_json = parsed.to_json()
    _check_port_names(manifest)
    ports = _resolve_ports(manifest, options)
    used = _used_host_ports(store)
    for port in ports:
        holder = used.get((port["protocol"], port["host_port"]))
        if holder is not None:
            raise ConflictError(f"host port {port['host_port']}/{port['protocol']} is already "
                                f"forwarded to pod {holder}")
    volumes = {v["name"]: v for v in manifest["volumes"]}
    from jetpack.stage1.drivers import check_limits, driver_capabilities

    capabilities = driver_capabilities(config)
    _check_socket_activation(manifest, options.apps, capabilities.socket_activation,
                             capabilities.name)
    plans, limits, warnings = _isolator_plans(manifest, options.apps,
                                              block_io=capabilities.block_io_limits)
    # refused here, before anything is made, when this host cannot enforce them (racct off)
    check_limits(config, Limits.from_json(limits))
    specs = [_app_spec(app, volumes, plan)
             for app, plan in zip(manifest["apps"], plans, strict=True)]
    pod = PodRecord(
        uuid=uuid, name=pod_name, state="prepared", manifest=manifest_json,
        options=PodOptions(
            restart=options.restart,
            ports=tuple(PortBinding(**p) for p in ports),
            limits=Limits.from_json(limits),
            volumes=tuple(PodVolume(**v) for v in _sandbox_volumes(manifest["volumes"])),
            annotations=dict(options.annotations),
            keep_image_etc=options.keep_image_etc,
            # every warning prepare has for the user, the implicit volumes' too
            isolator_warnings=tuple(volume_warnings + warnings)),
        apps=[AppRecord(name, image.id, spec=spec)
              for name, image, spec in zip(names, resolved, specs, strict=True)],
    )
    with pod_files_lock(config.root):
        _make_pod(config, state, images, pod, resolved=resolved, ports=ports)
    return pod


def _make_pod(config: Config, state: StateDB, images: ImageSource, pod: PodRecord, *,
              resolved: list[ResolvedImage], ports: list[dict[str, Any]]) -> None:
    """The pod's clones, then its row; a failure removes the clones again (a kill leaves
    them to gc, which finds no row naming them)."""
    store, uuid = PodStore(state), pod.uuid
    try:
        for record, image in zip(pod.apps, resolved, strict=True):
            record.rootfs = images.clone_for_app(image.id, uuid, record.name)
        killpoint("prepare.cloned")
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
        killpoint("prepare.recorded")
    except BaseException:
        images.destroy_pod_clones(uuid)
        raise


# Fields of a pod manifest's app that replace the image's (exec, user, group,
# workingDirectory and environment go through the same options as the command line's).
_APP_FIELDS = ("supplementaryGIDs", "eventHandlers", "isolators", "mountPoints", "ports")


def options_from_manifest(text: str, base: PrepareRequest) -> PrepareRequest:
    """A pod manifest (reified, or a template whose apps name images without an ``id``)
    turned into options; command-line pod options given too take precedence.

    A field given in the manifest's ``app`` replaces the image's (the environment is merged,
    the manifest's values winning). What jetpack cannot honour is refused, naming the field."""
    from jetpack.appc import PodManifest

    manifest = PodManifest.from_json(text)
    data = json.loads(manifest.to_json())
    if base.apps:
        raise UsageError("give images either on the command line or in the pod manifest")
    volumes = list(data.get("volumes", []))
    apps = []
    for index, app in enumerate(data.get("apps", [])):
        where = f"apps[{index}]"
        image = app["image"]
        labels = {lab["name"]: lab["value"] for lab in image.get("labels", [])}
        option = AppOptions(image=image.get("id") or image["name"], name=app["name"],
                            image_labels=labels if not image.get("id") else {},
                            manifest_path=where)
        inner = app.get("app")
        if inner:
            option.exec = inner.get("exec")
            option.user = inner.get("user")
            option.group = inner.get("group")
            option.working_directory = inner.get("workingDirectory")
            option.environment = {e["name"]: e["value"] for e in inner.get("environment", [])}
            option.app_fields = {k: inner[k] for k in _APP_FIELDS if k in inner}
        option.read_only_rootfs = bool(app.get("readOnlyRootFS", False))
        option.annotations = {a["name"]: a["value"] for a in app.get("annotations", [])}
        for i, mount in enumerate(app.get("mounts", [])):
            option.mounts.append((mount["volume"], mount["path"],
                                  bool(mount.get("readOnly", False))))
            if "appVolume" in mount:  # an inline volume is a pod volume of that name
                if any(v["name"] == mount["volume"] for v in volumes):
                    raise ValidationError(f"{where}.mounts[{i}].appVolume",
                                          f"volume {mount['volume']!r} is defined twice")
                volumes.append(mount["appVolume"])
        apps.append(option)
    ports = list(base.ports)
    if not ports:
        for i, p in enumerate(data.get("ports", [])):
            if "podPort" in p:
                _refuse_socket_activation(p["podPort"], f"ports[{i}].podPort")
            ports.append(PortOption(p["name"], int(p["hostPort"]), p.get("hostIP"),
                                    p.get("podPort")))
    annotations = {a["name"]: a["value"] for a in data.get("annotations", [])}
    annotations.update(base.annotations)
    return PrepareRequest(apps=apps, name=base.name, restart=base.restart, ports=ports,
                      volumes=volumes + base.volumes, annotations=annotations,
                      keep_image_etc=base.keep_image_etc,
                      isolators=list(data.get("isolators", [])),
                      user_annotations=dict(data.get("userAnnotations", {})),
                      user_labels=dict(data.get("userLabels", {})))


def _refuse_socket_activation(port: dict[str, Any], where: str) -> None:
    """A pod-level ``podPort`` belongs to no app: there is no app to pass its socket to."""
    if port.get("socketActivated"):
        raise ValidationError(f"{where}.socketActivated",
                              "a pod-level port belongs to no app to socket-activate; declare "
                              "it in the app's ports")


def _check_socket_activation(manifest: dict[str, Any], apps: list[AppOptions], supported: bool,
                             driver: str) -> None:
    """aci.md: the ACE MUST pass the listening sockets of a ``socketActivated`` port; where it
    cannot (a driver without the capability, a protocol other than tcp/udp), it refuses."""
    for app, options in zip(manifest["apps"], apps, strict=True):
        for i, port in enumerate(app["app"].get("ports", [])):
            if not port.get("socketActivated"):
                continue
            where = (f"{options.manifest_path}.app.ports[{i}]" if options.manifest_path
                     and "ports" in options.app_fields else f"app {app['name']}: port "
                     f"{port['name']}")
            if not supported:
                raise ValidationError(f"{where}.socketActivated", "socket activation is not "
                                      f"supported by the {driver} isolation driver")
            if port.get("protocol", "tcp") not in ("tcp", "udp"):
                raise ValidationError(f"{where}.protocol", "only tcp and udp ports can be "
                                      "socket-activated")
