"""The image manifest (spec/aci.md) and the app it describes (spec/types.md ``App``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jetpack.appc._json import Obj, integer, join, load_json, string
from jetpack.appc.isolators import Isolator, parse_isolators
from jetpack.appc.types import (
    labels_to_json,
    pairs_to_json,
    parse_annotations,
    parse_environment,
    parse_labels,
    validate_absolute_path,
    validate_acidentifier,
    validate_acname,
    validate_hash,
    validate_semver,
)
from jetpack.errors import ValidationError

AC_VERSION = "0.8.11"
EVENT_HANDLERS = ("pre-start", "post-stop")


@dataclass(frozen=True)
class MountPoint:
    name: str
    path: str
    read_only: bool = False

    @classmethod
    def parse(cls, value: Any, path: str) -> MountPoint:
        obj = Obj(value, path)
        return cls(validate_acname(obj.text("name", required=True), obj.at("name")),
                   validate_absolute_path(obj.text("path", required=True), obj.at("path")),
                   obj.flag("readOnly"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path}
        if self.read_only:
            out["readOnly"] = True
        return out


def parse_mountpoint_arg(text: str) -> MountPoint:
    """actool's ``NAME,path=/p[,readOnly=true]`` form."""
    name, _, rest = text.partition(",")
    fields = cli_fields(rest, text, ("path", "readOnly"))
    if "path" not in fields or not fields["path"]:
        raise ValidationError(text, "a mount point needs path=")
    return MountPoint(validate_acname(name, text), fields["path"],
                      cli_bool(fields, "readOnly", text))


def cli_fields(rest: str, text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    fields: dict[str, str] = {}
    if not rest:
        return fields
    for part in rest.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise ValidationError(text, f"unknown or malformed field {part!r} (allowed: "
                                        f"{', '.join(allowed)})")
        fields[key] = value
    return fields


def cli_bool(fields: dict[str, str], key: str, text: str, default: bool = False) -> bool:
    if key not in fields:
        return default
    if fields[key] not in ("true", "false"):
        raise ValidationError(text, f"{key} must be true or false")
    return fields[key] == "true"


@dataclass(frozen=True)
class Port:
    name: str
    protocol: str
    port: int
    count: int = 1
    socket_activated: bool = False

    @classmethod
    def parse(cls, value: Any, path: str) -> Port:
        obj = Obj(value, path)
        name = validate_acname(obj.text("name", required=True), obj.at("name"))
        protocol = obj.text("protocol", required=True)
        if not protocol:
            raise ValidationError(obj.at("protocol"), "must not be empty")
        port = obj.number("port", low=1, high=65535)
        if port is None:
            raise ValidationError(obj.at("port"), "is required")
        count = obj.number("count", low=1, high=65535, default=1)
        assert count is not None
        if port + count > 65536:
            raise ValidationError(obj.at("count"), f"port {port} + count {count} passes 65535")
        return cls(name, protocol, port, count, obj.flag("socketActivated"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "protocol": self.protocol, "port": self.port}
        if self.count != 1:
            out["count"] = self.count
        if self.socket_activated:
            out["socketActivated"] = True
        return out


@dataclass(frozen=True)
class App:
    exec: tuple[str, ...]
    user: str
    group: str
    supplementary_gids: tuple[int, ...] = ()
    event_handlers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    working_directory: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    isolators: tuple[Isolator, ...] = ()
    mount_points: tuple[MountPoint, ...] = ()
    ports: tuple[Port, ...] = ()

    @classmethod
    def parse(cls, value: Any, path: str = "app") -> App:
        obj = Obj(value, path)
        exec_ = obj.array("exec")
        if not exec_:
            raise ValidationError(obj.at("exec"), "must not be empty")
        argv = tuple(string(v, join(obj.at("exec"), i)) for i, v in enumerate(exec_))
        if not argv[0]:
            raise ValidationError(join(obj.at("exec"), 0), "must not be empty")
        user = obj.text("user", required=True)
        group = obj.text("group", required=True)
        if not user:
            raise ValidationError(obj.at("user"), "is required")
        if not group:
            raise ValidationError(obj.at("group"), "is required")
        gids = tuple(integer(v, join(obj.at("supplementaryGIDs"), i), 0, 2**32 - 1)
                     for i, v in enumerate(obj.array("supplementaryGIDs")))
        handlers: dict[str, tuple[str, ...]] = {}
        for i, item in enumerate(obj.array("eventHandlers")):
            hpath = join(obj.at("eventHandlers"), i)
            handler = Obj(item, hpath)
            name = handler.text("name", required=True)
            if name not in EVENT_HANDLERS:
                raise ValidationError(handler.at("name"),
                                      f"must be one of {', '.join(EVENT_HANDLERS)}")
            if name in handlers:
                raise ValidationError(handler.at("name"), f"duplicate event handler {name!r}")
            hexec = handler.array("exec")
            if not hexec:
                raise ValidationError(handler.at("exec"), "must not be empty")
            handlers[name] = tuple(string(v, join(handler.at("exec"), j))
                                   for j, v in enumerate(hexec))
        workdir = obj.text("workingDirectory")
        if workdir and not workdir.startswith("/"):
            raise ValidationError(obj.at("workingDirectory"), "must be an absolute path")
        mount_points = tuple(MountPoint.parse(v, join(obj.at("mountPoints"), i))
                             for i, v in enumerate(obj.array("mountPoints")))
        unique_names([m.name for m in mount_points], obj.at("mountPoints"), "mount point")
        ports = tuple(Port.parse(v, join(obj.at("ports"), i))
                      for i, v in enumerate(obj.array("ports")))
        unique_names([p.name for p in ports], obj.at("ports"), "port")
        return cls(
            exec=argv, user=user, group=group, supplementary_gids=gids,
            event_handlers=handlers, working_directory=workdir,
            environment=parse_environment(obj.raw("environment"), obj.at("environment")),
            isolators=tuple(parse_isolators(obj.raw("isolators"), obj.at("isolators"))),
            mount_points=mount_points, ports=ports,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exec": list(self.exec), "user": self.user, "group": self.group}
        if self.supplementary_gids:
            out["supplementaryGIDs"] = list(self.supplementary_gids)
        if self.event_handlers:
            out["eventHandlers"] = [{"name": k, "exec": list(v)}
                                    for k, v in self.event_handlers.items()]
        if self.working_directory:
            out["workingDirectory"] = self.working_directory
        if self.environment:
            out["environment"] = pairs_to_json(self.environment)
        if self.isolators:
            out["isolators"] = [i.to_dict() for i in self.isolators]
        if self.mount_points:
            out["mountPoints"] = [m.to_dict() for m in self.mount_points]
        if self.ports:
            out["ports"] = [p.to_dict() for p in self.ports]
        return out


def unique_names(names: list[str], path: str, what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ValidationError(path, f"duplicate {what} name {name!r}")
        seen.add(name)


@dataclass(frozen=True)
class Dependency:
    image_name: str
    image_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    size: int | None = None

    @classmethod
    def parse(cls, value: Any, path: str) -> Dependency:
        obj = Obj(value, path)
        name = validate_acidentifier(obj.text("imageName", required=True), obj.at("imageName"))
        image_id = validate_hash(obj.raw("imageID"), obj.at("imageID")) \
            if obj.has("imageID") else None
        return cls(name, image_id, parse_labels(obj.raw("labels"), obj.at("labels")),
                   obj.number("size", low=0, high=2**63 - 1))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"imageName": self.image_name}
        if self.image_id is not None:
            out["imageID"] = self.image_id
        if self.labels:
            out["labels"] = labels_to_json(self.labels)
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class ImageManifest:
    name: str
    ac_version: str = AC_VERSION
    labels: dict[str, str] = field(default_factory=dict)
    app: App | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    dependencies: tuple[Dependency, ...] = ()
    path_whitelist: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: bytes | str) -> ImageManifest:
        return cls.parse(load_json(data))

    @classmethod
    def parse(cls, value: Any) -> ImageManifest:
        obj = Obj(value, "", "a JSON object (an image manifest)")
        kind = obj.text("acKind", required=True)
        if kind != "ImageManifest":
            raise ValidationError("acKind", f"must be ImageManifest, not {kind!r}")
        version = validate_semver(obj.text("acVersion", required=True), "acVersion")
        name = validate_acidentifier(obj.text("name", required=True), "name")
        app = App.parse(obj.raw("app"), "app") if obj.has("app") else None
        whitelist = tuple(string(v, join("pathWhitelist", i))
                          for i, v in enumerate(obj.array("pathWhitelist")))
        return cls(
            name=name, ac_version=version, labels=parse_labels(obj.raw("labels"), "labels"),
            app=app, annotations=parse_annotations(obj.raw("annotations"), "annotations"),
            dependencies=tuple(Dependency.parse(v, join("dependencies", i))
                               for i, v in enumerate(obj.array("dependencies"))),
            path_whitelist=whitelist,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"acKind": "ImageManifest", "acVersion": self.ac_version,
                               "name": self.name}
        if self.labels:
            out["labels"] = labels_to_json(self.labels)
        if self.app is not None:
            out["app"] = self.app.to_dict()
        if self.annotations:
            out["annotations"] = pairs_to_json(self.annotations)
        if self.dependencies:
            out["dependencies"] = [d.to_dict() for d in self.dependencies]
        if self.path_whitelist:
            out["pathWhitelist"] = list(self.path_whitelist)
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)
