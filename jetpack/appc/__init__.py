"""The appc 0.8.11 schema: image and pod manifests and every type they use.

Parse with ``ImageManifest.from_json`` / ``PodManifest.from_json``; serialize with ``to_json``
(stable: parse → to_json → parse gives back the same value). Every rejection is a
``jetpack.errors.ValidationError`` naming the JSON path and the rule broken.
"""

from jetpack.appc.image import (
    AC_VERSION,
    App,
    Dependency,
    ImageManifest,
    MountPoint,
    Port,
    parse_mountpoint_arg,
)
from jetpack.appc.isolators import Isolator, parse_isolators
from jetpack.appc.pod import (
    ExposedPort,
    Mount,
    PodManifest,
    RuntimeApp,
    RuntimeImage,
    Volume,
    parse_volume_arg,
)
from jetpack.appc.types import (
    VALID_OS_ARCH,
    ACIdentifier,
    ACName,
    Quantity,
    parse_annotations,
    parse_environment,
    parse_labels,
    validate_acidentifier,
    validate_acname,
    validate_date,
    validate_hash,
    validate_semver,
    validate_url,
    validate_uuid,
)

Label = tuple[str, str]

__all__ = [
    "AC_VERSION", "VALID_OS_ARCH", "ACIdentifier", "ACName", "App", "Dependency",
    "ExposedPort", "ImageManifest", "Isolator", "Label", "Mount", "MountPoint", "PodManifest",
    "Port", "Quantity", "RuntimeApp", "RuntimeImage", "Volume", "parse_annotations",
    "parse_environment", "parse_isolators", "parse_labels", "parse_mountpoint_arg",
    "parse_volume_arg", "validate_acidentifier", "validate_acname", "validate_date",
    "validate_hash", "validate_semver", "validate_url", "validate_uuid",
]
