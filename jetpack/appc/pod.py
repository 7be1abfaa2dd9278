"""The pod manifest (spec/pods.md): apps with their images, volumes, mounts, ports, isolators.

A reified manifest names every image by ``id``; a template may name them by name and labels
only (``RuntimeImage.id`` is then None) — ``prepare`` resolves those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from jetpack.appc._json import Obj, join, load_json, string, type_name
from jetpack.appc.image import AC_VERSION, App, Port, cli_bool, cli_fields, unique_names
from jetpack.appc.isolators import Isolator, parse_isolators
from jetpack.appc.types import (
    labels_to_json,
    pairs_to_json,
    parse_annotations,
    parse_labels,
    validate_acidentifier,
    validate_acname,
    validate_hash,
    validate_semver,
)
from jetpack.errors import ValidationError

VolumeKind = Literal["host", "empty"]


@dataclass(frozen=True)
class Volume:
    name: str
    kind: VolumeKind
    source: str = ""
    read_only: bool = False
    recursive: bool | None = None
    mode: str | None = None  # empty only; octal text such as "0755"
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def parse(cls, value: Any, path: str) -> Volume:
        obj = Obj(value, path)
        name = validate_acname(obj.text("name", required=True), obj.at("name"))
        kind = obj.text("kind", required=True)
        recursive = obj.flag("recursive") if obj.has("recursive") else None
        mode = obj.text("mode") if obj.has("mode") else None
        volume = cls(name, _kind(kind, obj.at("kind")), obj.text("source"),
                     obj.flag("readOnly"), recursive, mode,
                     obj.number("uid", low=0, high=2**32 - 1),
                     obj.number("gid", low=0, high=2**32 - 1))
        volume.check(path)
        if volume.kind == "empty":
            # the defaults to_dict writes out, so that parse → to_json → parse gives back the
            # same value (fuzzing found a volume without mode that did not)
            volume = replace(volume, mode="0755" if volume.mode is None else volume.mode,
                             uid=0 if volume.uid is None else volume.uid,
                             gid=0 if volume.gid is None else volume.gid)
        return volume

    def check(self, path: str) -> None:
        if self.kind == "host":
            if not self.source.startswith("/"):
                raise ValidationError(join(path, "source"), "a host volume needs an absolute "
                                                            "source path")
            for key in ("mode", "uid", "gid"):
                if getattr(self, key) is not None:
                    raise ValidationError(join(path, key), "is only for empty volumes")
        else:
            if self.source:
                raise ValidationError(join(path, "source"), "an empty volume has no source")
            if self.mode is not None and (not self.mode or any(c not in "01234567"
                                                               for c in self.mode)):
                raise ValidationError(join(path, "mode"), f"{self.mode!r} is not an octal mode")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "host":
            out["source"] = self.source
        if self.read_only:
            out["readOnly"] = True
        if self.recursive is not None:
            out["recursive"] = self.recursive
        if self.kind == "empty":
            out["mode"] = self.mode if self.mode is not None else "0755"
            out["uid"] = self.uid if self.uid is not None else 0
            out["gid"] = self.gid if self.gid is not None else 0
        return out


def _string_map(value: Any, path: str) -> dict[str, str]:
    """``userAnnotations``/``userLabels``: a JSON object of strings (free-form, unlike the
    name/value lists of ``annotations``)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(path, f"must be an object of strings, not {type_name(value)}")
    return {str(k): string(v, join(path, str(k))) for k, v in value.items()}


def _kind(kind: str, path: str) -> VolumeKind:
    if kind == "host":
        return "host"
    if kind == "empty":
        return "empty"
    raise ValidationError(path, f"must be host or empty, not {kind!r}")


def parse_volume_arg(text: str) -> Volume:
    """The ``NAME,kind=host,source=/p,readOnly=true,recursive=false`` or
    ``NAME,kind=empty,mode=0755,uid=0,gid=0`` form (rkt's ``--volume``)."""
    name, _, rest = text.partition(",")
    fields = cli_fields(rest, text, ("kind", "source", "readOnly", "recursive", "mode", "uid",
                                     "gid"))
    try:
        validate_acname(name, text)
    except ValidationError:
        raise ValidationError(text, f"volume name {name!r} is not an AC name") from None
    kind = _kind(fields.get("kind", ""), text)

    def number(key: str) -> int | None:
        if key not in fields:
            return None
        if not fields[key].isdigit():
            raise ValidationError(text, f"{key} must be a number")
        return int(fields[key])

    recursive = cli_bool(fields, "recursive", text) if "recursive" in fields else None
    volume = Volume(name, kind, fields.get("source", ""), cli_bool(fields, "readOnly", text),
                    recursive, fields.get("mode"), number("uid"), number("gid"))
    try:
        volume.check("")
    except ValidationError as exc:
        raise ValidationError(text, exc.rule) from None
    return volume


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool = False
    app_volume: Volume | None = None  # an inline volume declaration (``appVolume``)

    @classmethod
    def parse(cls, value: Any, path: str) -> Mount:
        obj = Obj(value, path)
        volume = validate_acname(obj.text("volume", required=True), obj.at("volume"))
        inline = Volume.parse(obj.raw("appVolume"), obj.at("appVolume")) \
            if obj.has("appVolume") else None
        if inline is not None and inline.name != volume:
            raise ValidationError(join(obj.at("appVolume"), "name"),
                                  f"must be the mount's volume {volume!r}")
        return cls(volume, obj.text("path", required=True), obj.flag("readOnly"), inline)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"volume": self.volume, "path": self.path}
        if self.read_only:
            out["readOnly"] = True
        if self.app_volume is not None:
            out["appVolume"] = self.app_volume.to_dict()
        return out


@dataclass(frozen=True)
class RuntimeImage:
    name: str | None = None
    id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, path: str) -> RuntimeImage:
        obj = Obj(value, path)
        name = validate_acidentifier(obj.raw("name"), obj.at("name")) \
            if obj.has("name") else None
        image_id = validate_hash(obj.raw("id"), obj.at("id")) if obj.has("id") else None
        if name is None and image_id is None:
            raise ValidationError(path, "needs a name or an id")
        return cls(name, image_id, parse_labels(obj.raw("labels"), obj.at("labels")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.name is not None:
            out["name"] = self.name
        if self.id is not None:
            out["id"] = self.id
        if self.labels:
            out["labels"] = labels_to_json(self.labels)
        return out


@dataclass(frozen=True)
class RuntimeApp:
    name: str
    image: RuntimeImage
    app: App | None = None
    read_only_rootfs: bool = False
    mounts: tuple[Mount, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any, path: str) -> RuntimeApp:
        obj = Obj(value, path)
        if not obj.has("image"):
            raise ValidationError(obj.at("image"), "is required")
        return cls(
            name=validate_acname(obj.text("name", required=True), obj.at("name")),
            image=RuntimeImage.parse(obj.raw("image"), obj.at("image")),
            app=App.parse(obj.raw("app"), obj.at("app")) if obj.has("app") else None,
            read_only_rootfs=obj.flag("readOnlyRootFS"),
            mounts=tuple(Mount.parse(v, join(obj.at("mounts"), i))
                         for i, v in enumerate(obj.array("mounts"))),
            annotations=parse_annotations(obj.raw("annotations"), obj.at("annotations")),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "image": self.image.to_dict()}
        if self.app is not None:
            out["app"] = self.app.to_dict()
        if self.read_only_rootfs:
            out["readOnlyRootFS"] = True
        if self.mounts:
            out["mounts"] = [m.to_dict() for m in self.mounts]
        if self.annotations:
            out["annotations"] = pairs_to_json(self.annotations)
        return out


@dataclass(frozen=True)
class ExposedPort:
    name: str
    host_port: int
    host_ip: str | None = None
    pod_port: Port | None = None

    @classmethod
    def parse(cls, value: Any, path: str) -> ExposedPort:
        obj = Obj(value, path)
        host_port = obj.number("hostPort", low=0, high=65535)
        if host_port is None:
            raise ValidationError(obj.at("hostPort"), "is required")
        host_ip = obj.text("hostIP") if obj.has("hostIP") else None
        if host_ip is not None:
            import ipaddress

            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                raise ValidationError(obj.at("hostIP"), f"{host_ip!r} is not an IP address"
                                      ) from None
        pod_port = Port.parse(obj.raw("podPort"), obj.at("podPort")) \
            if obj.has("podPort") else None
        return cls(validate_acname(obj.text("name", required=True), obj.at("name")), host_port,
                   host_ip, pod_port)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "hostPort": self.host_port}
        if self.host_ip is not None:
            out["hostIP"] = self.host_ip
        if self.pod_port is not None:
            out["podPort"] = self.pod_port.to_dict()
        return out


@dataclass(frozen=True)
class PodManifest:
    apps: tuple[RuntimeApp, ...] = ()
    ac_version: str = AC_VERSION
    volumes: tuple[Volume, ...] = ()
    isolators: tuple[Isolator, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    ports: tuple[ExposedPort, ...] = ()
    user_annotations: dict[str, str] = field(default_factory=dict)
    user_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes | str) -> PodManifest:
        return cls.parse(load_json(data))

    @classmethod
    def parse(cls, value: Any) -> PodManifest:
        obj = Obj(value, "", "a JSON object (a pod manifest)")
        kind = obj.text("acKind", required=True)
        if kind != "PodManifest":
            raise ValidationError("acKind", f"must be PodManifest, not {kind!r}")
        version = validate_semver(obj.text("acVersion", required=True), "acVersion")
        apps = tuple(RuntimeApp.parse(v, join("apps", i)) for i, v in enumerate(obj.array("apps")))
        unique_names([a.name for a in apps], "apps", "app")
        volumes = tuple(Volume.parse(v, join("volumes", i))
                        for i, v in enumerate(obj.array("volumes")))
        unique_names([v.name for v in volumes], "volumes", "volume")
        ports = tuple(ExposedPort.parse(v, join("ports", i))
                      for i, v in enumerate(obj.array("ports")))
        return cls(apps=apps, ac_version=version, volumes=volumes,
                   isolators=tuple(parse_isolators(obj.raw("isolators"), "isolators")),
                   annotations=parse_annotations(obj.raw("annotations"), "annotations"),
                   ports=ports,
                   user_annotations=_string_map(obj.raw("userAnnotations"), "userAnnotations"),
                   user_labels=_string_map(obj.raw("userLabels"), "userLabels"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "acVersion": self.ac_version,
            "acKind": "PodManifest",
            "apps": [a.to_dict() for a in self.apps],
            "volumes": [v.to_dict() for v in self.volumes],
            "isolators": [i.to_dict() for i in self.isolators],
            "annotations": pairs_to_json(self.annotations),
            "ports": [p.to_dict() for p in self.ports],
        }
        if self.user_annotations:
            out["userAnnotations"] = dict(self.user_annotations)
        if self.user_labels:
            out["userLabels"] = dict(self.user_labels)
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

