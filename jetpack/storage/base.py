"""The storage driver interface: image trees, sealed once complete, cloned per pod app.

An image tree is a directory holding ``manifest``, ``rootfs/`` (rendered: dependencies applied)
and, for imported images, ``image.aci`` (the archive as it came, for byte-identical export).
Drivers are synchronous and hold no lifecycle state; the supervisor calls them through
``trio.to_thread`` with its own CapacityLimiter.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

TMP_PREFIX = "tmp-"


@dataclass(frozen=True)
class StorageCapabilities:
    cow_clones: bool  # clones share blocks with their image (ZFS clone, overlayfs)
    snapshots: bool  # ZFS: images are sealed with @seal, exports can use zfs diff


@dataclass
class StagingTree:
    """A tree being written; invisible as an image until ``seal_image``. ``lock_fd`` is an
    flock held while the tree is in use, so ``cleanup_leftovers`` spares it."""

    name: str  # driver-specific: a directory name or a dataset name
    path: Path
    lock_fd: int

    def release(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def lock_staging(path: Path) -> int:
    """Create and flock ``path/../<name>.lock`` (kept beside the tree, not inside it)."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def staging_abandoned(path: Path) -> bool:
    """True when no live process holds the tree's lock (its importer died)."""
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def cleanup_tmp(tmp: Path) -> list[str]:
    """Remove the ``tmp-*`` entries of ``tmp`` (a staging tree, a build's scratch) whose
    owner died (their lock is free), unmounting what is mounted under them first."""
    from jetpack.storage.mounts import unmount_all

    removed: list[str] = []
    if not tmp.exists():
        return removed
    for entry in sorted(tmp.iterdir()):
        if not entry.name.startswith(TMP_PREFIX) or entry.name.endswith(".lock"):
            continue
        if staging_abandoned(entry):
            unmount_all(entry)
            shutil.rmtree(entry, ignore_errors=True)
            entry.with_name(entry.name + ".lock").unlink(missing_ok=True)
            removed.append(str(entry))
    for lock in tmp.glob(f"{TMP_PREFIX}*.lock"):
        if not lock.with_suffix("").exists() and staging_abandoned(lock.with_suffix("")):
            lock.unlink(missing_ok=True)
    return removed


class StorageDriver(Protocol):
    """Image trees and per-app clones of them."""

    name: str
    capabilities: ClassVar[StorageCapabilities]
    root: Path

    def init(self) -> None:
        """Create the driver's top-level datasets/directories; idempotent."""
        ...

    def new_staging(self, parent: str | None = None) -> StagingTree:
        """An empty tree, or (``parent`` = an image id) one that starts as that image's
        rendered tree: a ZFS clone of its @seal, else a copy."""
        ...

    def seal_image(self, staging: StagingTree, image_id: str) -> str:
        """Move the staging tree into place as image ``image_id`` in one step (rename), then
        make it read-only (ZFS: @seal snapshot and readonly=on). Returns its location."""
        ...

    def discard(self, staging: StagingTree) -> None:
        """Remove a staging tree that will not become an image."""
        ...

    def image_path(self, image_id: str) -> Path:
        """The sealed tree of an image."""
        ...

    def has_image(self, image_id: str) -> bool: ...

    def destroy_image(self, image_id: str) -> None: ...

    def image_size(self, image_id: str) -> int:
        """Bytes the image's tree uses on disk."""
        ...

    def clone_for_app(self, image_id: str, pod_uuid: str, app: str) -> str:
        """A writable clone of the image's tree for one app of a pod; returns its location."""
        ...

    def mount_app(self, pod_uuid: str, app: str) -> Path:
        """Make the app's clone available and return its rootfs; idempotent."""
        ...

    def unmount_pod(self, pod_uuid: str) -> None:
        """Undo ``mount_app`` for every app of the pod (where that means anything)."""
        ...

    def destroy_pod(self, pod_uuid: str) -> None:
        """Remove every clone and file of the pod; idempotent."""
        ...

    def cleanup_leftovers(self) -> list[str]:
        """Remove staging trees whose importer died; returns what was removed."""
        ...
