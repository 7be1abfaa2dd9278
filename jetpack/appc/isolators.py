"""Isolators: every standard appc isolator with its value shape, others kept opaque.

``Isolator.value`` holds the validated value in its JSON form (so serialization is exact);
``Isolator.known`` says whether jetpack knows the name (the runtime warns about the rest).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jetpack.appc._json import Obj, integer, join, string, type_name
from jetpack.appc.types import Quantity, validate_acidentifier
from jetpack.errors import ValidationError

RESOURCE_REQUEST_LIMIT = ("resource/cpu", "resource/memory")
RESOURCE_DEFAULT_LIMIT = ("resource/block-bandwidth", "resource/block-iops",
                          "resource/network-bandwidth")


def _resource(value: Any, path: str, *, with_default: bool) -> dict[str, Any]:
    obj = Obj(value, path)
    out: dict[str, Any] = {}
    if with_default:
        if obj.has("request"):
            raise ValidationError(obj.at("request"), "is not allowed for this isolator")
        if obj.raw("default") is not True:
            raise ValidationError(obj.at("default"), "must be true")
        out["default"] = True
    elif obj.has("default"):
        raise ValidationError(obj.at("default"), "is not allowed for this isolator")
    for key in ("request", "limit"):
        if obj.has(key):
            text = string(obj.raw(key), obj.at(key))
            Quantity(text, obj.at(key))
            out[key] = text
    if not with_default and not out:
        raise ValidationError(path, "needs a request or a limit")
    if with_default and "limit" not in out:
        raise ValidationError(obj.at("limit"), "is required")
    return out


def _string_set(value: Any, path: str, *, errno: bool) -> dict[str, Any]:
    obj = Obj(value, path)
    items = obj.raw("set")
    if not isinstance(items, list):
        raise ValidationError(obj.at("set"), f"must be a list, not {type_name(items)}")
    if not items:
        raise ValidationError(obj.at("set"), "must not be empty")
    out: dict[str, Any] = {"set": [string(v, join(obj.at("set"), i))
                                   for i, v in enumerate(items)]}
    if errno and obj.has("errno"):
        code = obj.text("errno")
        if code and not code.isupper():
            raise ValidationError(obj.at("errno"), "must be an upper-case errno name")
        out["errno"] = code
    return out


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(path, f"must be true or false, not {type_name(value)}")
    return value


def _selinux(value: Any, path: str) -> dict[str, str]:
    obj = Obj(value, path)
    out = {}
    for key in ("user", "role", "type", "level"):
        text = obj.text(key, required=True)
        if not text:
            raise ValidationError(obj.at(key), "must not be empty")
        if key != "level" and ":" in text:
            raise ValidationError(obj.at(key), "must not contain ':'")
        out[key] = text
    return out


def _apparmor(value: Any, path: str) -> dict[str, str]:
    obj = Obj(value, path)
    profile = obj.text("profile", required=True)
    if not profile:
        raise ValidationError(obj.at("profile"), "must not be empty")
    return {"profile": profile}


def _sysctl(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError(path, f"must be an object of strings, not {type_name(value)}")
    return {str(k): string(v, join(path, str(k))) for k, v in value.items()}


VALUE_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    **{name: (lambda v, p: _resource(v, p, with_default=False)) for name in
       RESOURCE_REQUEST_LIMIT},
    **{name: (lambda v, p: _resource(v, p, with_default=True)) for name in
       RESOURCE_DEFAULT_LIMIT},
    "os/linux/capabilities-retain-set": lambda v, p: _string_set(v, p, errno=False),
    "os/linux/capabilities-remove-set": lambda v, p: _string_set(v, p, errno=False),
    "os/linux/seccomp-retain-set": lambda v, p: _string_set(v, p, errno=True),
    "os/linux/seccomp-remove-set": lambda v, p: _string_set(v, p, errno=True),
    "os/linux/no-new-privileges": _boolean,
    "os/linux/selinux-context": _selinux,
    "os/linux/apparmor-profile": _apparmor,
    "os/unix/sysctl": _sysctl,
    "os/linux/oom-score-adj": lambda v, p: integer(v, p, -1000, 1000),
    "os/linux/cpu-shares": lambda v, p: integer(v, p, 2, 262144),
}


@dataclass(frozen=True)
class Isolator:
    name: str
    value: Any

    @property
    def known(self) -> bool:
        return self.name in VALUE_PARSERS

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.value, sort_keys=True)))

    @classmethod
    def parse(cls, value: Any, path: str) -> Isolator:
        obj = Obj(value, path)
        name = validate_acidentifier(obj.text("name", required=True), obj.at("name"))
        if not obj.has("value"):
            raise ValidationError(obj.at("value"), "is required")
        raw = obj.raw("value")
        parser = VALUE_PARSERS.get(name)
        return cls(name, parser(raw, obj.at("value")) if parser is not None else raw)


def parse_isolators(value: Any, path: str) -> list[Isolator]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(path, f"must be a list, not {type_name(value)}")
    isolators = [Isolator.parse(item, join(path, i)) for i, item in enumerate(value)]
    singles = ("os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set")
    seccomp = [i for i in isolators if i.name in singles]
    if len(seccomp) > 1:
        raise ValidationError(path, "at most one seccomp isolator (retain-set or remove-set)")
    return isolators
