"""The storage driver interface: image trees, sealed once complete, cloned per pod app.

Drivers are synchronous and hold no lifecycle state; the supervisor calls them through
``trio.to_thread`` with its own CapacityLimiter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol


@dataclass(frozen=True)
class StorageCapabilities:
    cow_clones: bool  # clones share blocks with their image (ZFS clone, overlayfs)
    snapshots: bool  # ZFS: images are sealed with @seal, exports can use zfs diff


class StorageDriver(Protocol):
    """Image trees (``<tree>/manifest`` + ``<tree>/rootfs``) and per-app clones of them."""

    name: str
    capabilities: ClassVar[StorageCapabilities]
    root: Path

    def init(self) -> None:
        """Create the driver's top-level datasets/directories; idempotent."""
        ...
