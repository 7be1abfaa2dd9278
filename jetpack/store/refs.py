"""IMAGE references as DESIGN.md defines them, parsed and matched without touching the store:
a full ID, a unique ID prefix (``sha512-`` + at least 8 hex), ``name@tag``, or
``name[:version][,label=value...]`` (os/arch default to the host's)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from jetpack.errors import NotFoundError, UsageError
from jetpack.hostinfo import appc_arch, appc_os

ID_PREFIX = "sha512-"
MIN_PREFIX_HEX = 8
FULL_ID = re.compile(r"^sha512-[0-9a-f]{128}$")
_ID_PREFIX = re.compile(rf"^sha512-[0-9a-f]{{{MIN_PREFIX_HEX},127}}$")
_SHORT_PREFIX = re.compile(r"^sha512-[0-9a-f]{0,7}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

RefKind = Literal["id", "prefix", "tag", "name"]


@dataclass(frozen=True)
class ImageRef:
    """One parsed IMAGE argument. ``labels`` holds ``version`` when given as ``name:version``."""

    kind: RefKind
    text: str
    name: str = ""
    tag: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def parse_image_ref(text: str) -> ImageRef:
    """Classify and split an IMAGE argument; raises UsageError/NotFoundError for malformed ones."""
    ref = text.strip()
    if FULL_ID.match(ref):
        return ImageRef("id", ref)
    if _ID_PREFIX.match(ref):
        return ImageRef("prefix", ref)
    if _SHORT_PREFIX.match(ref):
        raise NotFoundError(f"image ID prefix {ref!r} is too short",
                            hint=f"give at least {MIN_PREFIX_HEX} hex digits after sha512-")
    head = ref.split(",", 1)[0]
    if "@" in head:
        name, tag = parse_tag(ref)
        return ImageRef("tag", ref, name=name, tag=tag)
    name, labels = parse_name_labels(ref)
    return ImageRef("name", ref, name=name, labels=labels)


def parse_name_labels(ref: str) -> tuple[str, dict[str, str]]:
    """``name[:version][,label=value...]`` as (name, labels)."""
    head, *rest = ref.split(",")
    labels = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"image reference {ref!r}: {item!r} is not label=value")
        labels[key] = value
    name, sep, version = head.partition(":")
    if sep:
        if not version:
            raise UsageError(f"image reference {ref!r}: empty version after ':'")
        labels["version"] = version
    if not name:
        raise UsageError(f"image reference {ref!r} has no name")
    return name, labels


def parse_tag(text: str) -> tuple[str, str]:
    """``NAME@TAG`` as (name, tag)."""
    name, sep, tag = text.strip().partition("@")
    if not sep or not name or not _TAG.match(tag):
        raise UsageError(f"bad tag {text!r}: expected NAME@TAG (TAG: letters, digits, '.', '_', "
                         "'-', at most 64)")
    return name, tag


def host_labels() -> dict[str, str]:
    return {"os": appc_os(), "arch": appc_arch()}


def labels_match(labels: Mapping[str, str], wanted: Mapping[str, str],
                 host: Mapping[str, str] | None = None) -> bool:
    """Every wanted label is present and equal; os/arch not asked for must be the host's when
    the image states them (an image without os/arch runs anywhere)."""
    if any(labels.get(key) != value for key, value in wanted.items()):
        return False
    defaults = host_labels() if host is None else host
    return all(key in wanted or key not in labels or labels[key] == value
               for key, value in defaults.items())


def format_labels(labels: Mapping[str, str]) -> str:
    """``version=1.0.0,os=linux,arch=amd64``: labels as a reference would spell them."""
    return ",".join(f"{key}={value}" for key, value in labels.items())
