"""appc's scalar types: ACName, ACIdentifier, labels (with the os/arch table), annotations,
environment, semantic versions, UUIDs, URLs, image hashes, dates and resource quantities.

Each ``validate_*`` returns the value (canonical where appc defines a canonical form) or raises
``ValidationError`` with the JSON path it was given.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

from jetpack.appc._json import Obj, join, string
from jetpack.errors import ValidationError

ACName = str
ACIdentifier = str

_ACNAME = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_ACID_CHARS = re.compile(r"^[a-z0-9\-._~/]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9.\-]*$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z\-]+(?:\.[0-9A-Za-z\-]+)*))?"
    r"(?:\+([0-9A-Za-z\-]+(?:\.[0-9A-Za-z\-]+)*))?$"
)
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$"
)

# spec/types.md: the os/arch combinations a label set may name.
VALID_OS_ARCH: dict[str, tuple[str, ...]] = {
    "linux": ("amd64", "i386", "aarch64", "aarch64_be", "armv6l", "armv7l", "armv7b",
              "ppc64", "ppc64le", "s390x"),
    "freebsd": ("amd64", "i386", "arm"),
    "darwin": ("x86_64", "i386"),
}


def validate_acname(value: Any, path: str = "") -> ACName:
    text = string(value, path)
    if not _ACNAME.match(text):
        raise ValidationError(path, f"{text!r} is not an AC name (lowercase letters and digits, "
                                    "joined by single dashes)")
    return text


def validate_acidentifier(value: Any, path: str = "") -> ACIdentifier:
    text = string(value, path)
    if (not text or not _ACID_CHARS.match(text) or not text[0].isalnum()
            or not text[-1].isalnum()):
        raise ValidationError(path, f"{text!r} is not an AC identifier (lowercase letters, "
                                    "digits and - . _ ~ /, starting and ending alphanumeric)")
    return text


def validate_semver(value: Any, path: str = "") -> str:
    text = string(value, path)
    if not _SEMVER.match(text):
        raise ValidationError(path, f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    return text


def validate_uuid(value: Any, path: str = "") -> str:
    """A UUID in canonical form (lowercase, dashed); dashes and case are optional on input."""
    text = string(value, path)
    compact = text.replace("-", "")
    if len(compact) != 32 or len(text) not in (32, 36):
        raise ValidationError(path, f"{text!r} is not a UUID")
    try:
        return str(uuidlib.UUID(hex=compact))
    except ValueError:
        raise ValidationError(path, f"{text!r} is not a UUID") from None


def validate_url(value: Any, path: str = "") -> str:
    text = string(value, path)
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValidationError(path, f"{text!r} is not an http or https URL")
    return text


def validate_hash(value: Any, path: str = "") -> str:
    """``sha512-<value>``: the reference implementation checks the type and a non-empty value."""
    text = string(value, path)
    parts = text.split("-")
    if len(parts) != 2 or parts[0] != "sha512" or not parts[1]:
        raise ValidationError(path, f"{text!r} is not an image hash (sha512-<hex>)")
    return text


def validate_date(value: Any, path: str = "") -> str:
    text = string(value, path)
    if not _RFC3339.match(text):
        raise ValidationError(path, f"{text!r} is not an RFC 3339 date")
    try:
        datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(path, f"{text!r} is not a valid date") from None
    return text


def validate_absolute_path(value: Any, path: str = "") -> str:
    text = string(value, path)
    if not text.startswith("/"):
        raise ValidationError(path, "must be an absolute path")
    return text


def parse_labels(value: Any, path: str = "labels") -> dict[str, str]:
    """A label list as an ordered dict; names unique, ``name`` reserved, os/arch from the
    table."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ValidationError(path, "must be a list of {name, value} objects")
    labels: dict[str, str] = {}
    for i, item in enumerate(value):
        obj = Obj(item, join(path, i))
        name = validate_acidentifier(obj.text("name", required=True), obj.at("name"))
        if name == "name":
            raise ValidationError(obj.at("name"), 'invalid label name: "name"')
        if name in labels:
            raise ValidationError(obj.at("name"), f'duplicate labels of name "{name}"')
        labels[name] = obj.text("value", required=True)
    check_os_arch(labels, path)
    return labels


def check_os_arch(labels: Mapping[str, str], path: str = "labels") -> None:
    os_name = labels.get("os")
    if os_name is None:
        return
    arches = VALID_OS_ARCH.get(os_name)
    if arches is None:
        raise ValidationError(path, f'bad os "{os_name}" (must be one of: '
                                    f"{', '.join(sorted(VALID_OS_ARCH))})")
    arch = labels.get("arch")
    if arch is not None and arch not in arches:
        raise ValidationError(path, f'bad arch "{arch}" for {os_name} (must be one of: '
                                    f"{', '.join(arches)})")


def labels_to_json(labels: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in labels.items()]


_ANNOTATION_CHECKS = {"created": validate_date, "homepage": validate_url,
                      "documentation": validate_url}


def parse_annotations(value: Any, path: str = "annotations") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ValidationError(path, "must be a list of {name, value} objects")
    annotations: dict[str, str] = {}
    for i, item in enumerate(value):
        obj = Obj(item, join(path, i))
        name = validate_acidentifier(obj.text("name", required=True), obj.at("name"))
        if name in annotations:
            raise ValidationError(obj.at("name"), f"duplicate annotation {name!r}")
        text = obj.text("value", required=True)
        check = _ANNOTATION_CHECKS.get(name)
        if check is not None:
            check(text, obj.at("value"))
        annotations[name] = text
    return annotations


def parse_environment(value: Any, path: str = "environment") -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ValidationError(path, "must be a list of {name, value} objects")
    env: dict[str, str] = {}
    for i, item in enumerate(value):
        obj = Obj(item, join(path, i))
        name = obj.text("name", required=True)
        if not _ENV_NAME.match(name):
            raise ValidationError(obj.at("name"), f"{name!r} is not a valid environment "
                                                  "variable name")
        if name in env:
            raise ValidationError(obj.at("name"), f"duplicate environment variable {name!r}")
        env[name] = obj.text("value", default="")
    return env


def pairs_to_json(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in pairs.items()]


# --- resource quantities (Kubernetes' syntax: 500m, 1G, 2Gi, 1e3) -------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(e[+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {
    None: Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40, "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


class Quantity:
    """A resource quantity as written (``500m``, ``1G``) with its exact value."""

    __slots__ = ("text", "value")

    def __init__(self, text: str, path: str = "") -> None:
        match = _QUANTITY.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValidationError(path, f"{text!r} is not a quantity (like 500m, 1G, 2Gi)")
        suffix = match.group(2)
        try:
            number = Decimal(match.group(1))
            if suffix is not None and suffix.startswith("e"):
                value = number * (Decimal(10) ** int(suffix[1:]))
            else:
                value = number * _SUFFIX[suffix]
        except (ArithmeticError, ValueError):
            raise ValidationError(path, f"{text!r} is out of range") from None
        self.text = text
        self.value = value

    def __int__(self) -> int:
        return int(self.value)

    def __repr__(self) -> str:
        return f"Quantity({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)
