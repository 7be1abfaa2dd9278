"""The ``zfs`` storage driver: a dataset per image sealed with ``@seal`` and ``readonly=on``,
a clone of it per pod app, and an image whose first dependency is present starts as a clone of
that dependency's ``@seal`` (as the original jetpack did).

Layout: ``<root.zfs>/images/<id>`` (mounted at ``<root>/images/<id>``), staging datasets
``<root.zfs>/images/tmp-*`` (with a ``.lock`` file beside their mountpoint), and
``<root.zfs>/pods/<uuid>/apps/<app>`` clones. py-libzfs is not used: the ``zfs(8)`` command is,
with errors translated into ``StorageError`` naming the dataset and zfs's own message.
zfs-fuse reports datasets busy for a moment after use: renames unmount first, destroys retry.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from jetpack.config import Config
from jetpack.errors import NotFoundError, StorageError
from jetpack.storage.base import (
    TMP_PREFIX,
    StagingTree,
    StorageCapabilities,
    cleanup_tmp,
    lock_staging,
    staging_abandoned,
)
from jetpack.storage.mounts import mounts_under, unmount_all
from jetpack.tools import missing_tool

BUSY_RETRY_SECONDS = 15.0


class ZfsCommand:
    """A thin wrapper over ``zfs(8)``: argv in, stdout out, errors translated."""

    def __init__(self, executable: str = "zfs") -> None:
        self.executable = executable

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.executable, *args], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            error = missing_tool("zfs", StorageError)
            error.hint = f"{error.hint}; or set storage.driver = dir"
            raise error from None

    def run(self, *args: str) -> str:
        proc = self._run(*args)
        if proc.returncode != 0:
            message = proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}"
            raise StorageError(f"zfs {' '.join(args)}: {message}")
        return proc.stdout

    def retry_busy(self, *args: str) -> str:
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        while True:
            try:
                return self.run(*args)
            except StorageError as exc:
                if "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def exists(self, dataset: str) -> bool:
        return self._run("list", "-H", "-o", "name", dataset).returncode == 0

    def get(self, dataset: str, prop: str) -> str:
        return self.run("get", "-H", "-p", "-o", "value", prop, dataset).strip()

    def children(self, dataset: str) -> list[str]:
        out = self.run("list", "-H", "-o", "name", "-d", "1", "-r", dataset)
        return [line for line in out.splitlines() if line and line != dataset]

    def destroy(self, dataset: str) -> None:
        """``zfs destroy -r``, retried while zfs-fuse calls it busy; gone already is fine."""
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        while self.exists(dataset):
            try:
                self.run("destroy", "-r", dataset)
            except StorageError as exc:
                if not self.exists(dataset):
                    return
                if "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


# Image datasets are never run directly (pods run clones under pods/, which do not inherit
# these): setuid binaries and device nodes in them do nothing there.
SEALED_IMAGE_PROPS = {"setuid": "off", "devices": "off"}


@dataclass
class ZfsStorage:
    root: Path
    dataset: str
    zfs: ZfsCommand = field(default_factory=ZfsCommand)
    image_props: dict[str, str] = field(default_factory=dict)
    pod_props: dict[str, str] = field(default_factory=dict)
    name: str = "zfs"
    capabilities: ClassVar[StorageCapabilities] = StorageCapabilities(
        cow_clones=True, snapshots=True
    )

    @classmethod
    def from_config(cls, config: Config) -> ZfsStorage:
        return cls(
            root=config.root,
            dataset=config["root.zfs"],
            image_props=config.prefixed("images.zfs."),
            pod_props=config.prefixed("pods.zfs."),
        )

    def init(self) -> None:
        """Create ``<root.zfs>`` (mounted at the state root), ``/images`` and ``/pods``."""
        if not self.zfs.exists(self.dataset):
            self.zfs.run("create", "-p", "-o", f"mountpoint={self.root}", self.dataset)
        elif self.zfs.get(self.dataset, "mountpoint") != str(self.root):
            self.zfs.run("set", f"mountpoint={self.root}", self.dataset)
        if self.zfs.get(self.dataset, "mounted") != "yes":
            self.zfs.run("mount", self.dataset)
        for sub, props in (("images", {**SEALED_IMAGE_PROPS, **self.image_props}),
                           ("pods", self.pod_props)):
            child = f"{self.dataset}/{sub}"
            if not self.zfs.exists(child):
                opts = [arg for k, v in sorted(props.items()) for arg in ("-o", f"{k}={v}")]
                self.zfs.run("create", *opts, child)
            elif sub == "images":  # a root made by an older jetpack
                for key, value in SEALED_IMAGE_PROPS.items():
                    if key not in self.image_props:
                        self.zfs.run("set", f"{key}={value}", child)
        try:
            (self.root / "tmp").mkdir(exist_ok=True, mode=0o700)
            for sub in ("images", "pods", "tmp"):
                (self.root / sub).chmod(0o700)  # datasets are mounted 0755
        except OSError as exc:
            raise StorageError(f"cannot prepare the storage directories under {self.root}: {exc}"
                               ) from None

    # --- images --------------------------------------------------------------------------

    def _image_ds(self, image_id: str) -> str:
        return f"{self.dataset}/images/{image_id}"

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / image_id

    def has_image(self, image_id: str) -> bool:
        return self.zfs.exists(self._image_ds(image_id))

    def new_staging(self, parent: str | None = None) -> StagingTree:
        name = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        dataset = f"{self.dataset}/images/{name}"
        path = self.root / "images" / name
        try:
            lock_fd = lock_staging(path)
        except OSError as exc:
            raise StorageError(f"cannot lock {path}: {exc.strerror}") from None
        try:
            if parent is None:
                self.zfs.run("create", dataset)
            else:
                origin = f"{self._image_ds(parent)}@seal"
                if not self.zfs.exists(origin):
                    raise NotFoundError(f"image {parent} has no @seal snapshot")
                self.zfs.run("clone", "-o", "readonly=off", origin, dataset)
        except BaseException:
            path.with_name(name + ".lock").unlink(missing_ok=True)
            os.close(lock_fd)
            raise
        return StagingTree(dataset, path, lock_fd)

    def seal_image(self, staging: StagingTree, image_id: str) -> str:
        target = self._image_ds(image_id)
        try:
            self.zfs.retry_busy("umount", staging.name)
            self.zfs.retry_busy("rename", staging.name, target)
            self.zfs.run("snapshot", f"{target}@seal")
            # readonly before mounting, and mounted ro: zfs-fuse otherwise reports a
            # temporary readonly=off for the mount (the files are read-only either way)
            self.zfs.run("set", "readonly=on", target)
            self.zfs.run("mount", "-o", "ro", target)
        finally:
            staging.path.with_name(staging.path.name + ".lock").unlink(missing_ok=True)
            staging.release()
        return target

    def discard(self, staging: StagingTree) -> None:
        try:
            self.zfs.destroy(staging.name)
        finally:
            staging.path.with_name(staging.path.name + ".lock").unlink(missing_ok=True)
            staging.release()

    def destroy_image(self, image_id: str) -> None:
        dataset = self._image_ds(image_id)
        if not self.zfs.exists(dataset):
            return
        clones = self.clones_of(f"{dataset}@seal")
        if clones:
            raise StorageError(f"image {image_id} has dependent clones: {', '.join(clones)}")
        self.zfs.destroy(dataset)

    def clones_of(self, snapshot: str) -> list[str]:
        """Datasets cloned from ``snapshot`` (told by ``origin``: zfs-fuse has no ``clones``
        property)."""
        out = self.zfs.run("list", "-H", "-o", "name,origin", "-t", "filesystem", "-r",
                           self.dataset)
        return sorted(name for name, _, origin in
                      (line.partition("\t") for line in out.splitlines())
                      if origin == snapshot)

    def image_size(self, image_id: str) -> int:
        return int(self.zfs.get(self._image_ds(image_id), "used"))

    def origin(self, image_id: str) -> str:
        return self.zfs.get(self._image_ds(image_id), "origin")

    # --- pods ----------------------------------------------------------------------------

    def _pod_ds(self, pod_uuid: str) -> str:
        return f"{self.dataset}/pods/{pod_uuid}"

    def clone_for_app(self, image_id: str, pod_uuid: str, app: str) -> str:
        origin = f"{self._image_ds(image_id)}@seal"
        if not self.zfs.exists(origin):
            raise NotFoundError(f"image {image_id} has no @seal snapshot")
        apps = f"{self._pod_ds(pod_uuid)}/apps"
        if not self.zfs.exists(apps):
            opts = [arg for k, v in sorted(self.pod_props.items()) for arg in ("-o", f"{k}={v}")]
            self.zfs.run("create", "-p", *opts, apps)
        clone = f"{apps}/{app}"
        self.zfs.run("clone", "-o", "readonly=off", origin, clone)
        return clone

    def mount_app(self, pod_uuid: str, app: str) -> Path:
        clone = f"{self._pod_ds(pod_uuid)}/apps/{app}"
        if not self.zfs.exists(clone):
            raise NotFoundError(f"pod {pod_uuid} has no app {app}")
        if self.zfs.get(clone, "mounted") != "yes":
            self.zfs.retry_busy("mount", clone)  # zfs-fuse: busy just after an unmount
        return self.root / "pods" / pod_uuid / "apps" / app / "rootfs"

    def unmount_pod(self, pod_uuid: str) -> None:
        """ZFS clones stay mounted between runs; nothing else is mounted by storage."""

    def destroy_pod(self, pod_uuid: str) -> None:
        pod_dir = self.root / "pods" / pod_uuid
        # Mounts that are not the pod's datasets (stage1's leftovers) go first.
        datasets = self._pod_ds(pod_uuid)
        if pod_dir.exists():
            ours = set()
            if self.zfs.exists(datasets):
                out = self.zfs.run("list", "-H", "-o", "mountpoint", "-r", datasets)
                ours = {line for line in out.splitlines() if line}
            for mount in mounts_under(pod_dir):
                if str(mount) not in ours:
                    unmount_all(mount)
        self.zfs.destroy(datasets)
        shutil.rmtree(pod_dir, ignore_errors=True)

    def cleanup_leftovers(self) -> list[str]:
        removed = cleanup_tmp(self.root / "tmp")  # a build's scratch
        images = f"{self.dataset}/images"
        if not self.zfs.exists(images):
            return removed
        for dataset in self.zfs.children(images):
            name = dataset.rsplit("/", 1)[-1]
            if not name.startswith(TMP_PREFIX):
                continue
            path = self.root / "images" / name
            if staging_abandoned(path):
                self.zfs.destroy(dataset)
                path.with_name(name + ".lock").unlink(missing_ok=True)
                removed.append(dataset)
        for lock in (self.root / "images").glob(f"{TMP_PREFIX}*.lock"):
            stem = lock.name[: -len(".lock")]
            if not self.zfs.exists(f"{images}/{stem}") and staging_abandoned(
                    lock.with_name(stem)):
                lock.unlink(missing_ok=True)
        return removed
