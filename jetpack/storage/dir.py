"""The ``dir`` storage driver: image trees as directories, app clones as overlayfs mounts over
the image (Linux) or full copies (elsewhere, or where overlayfs is missing).

Layout under the state root: ``images/<id>/`` (sealed trees), ``tmp/tmp-*`` (staging, each
with a ``.lock``), ``pods/<uuid>/apps/<app>/{upper,work,rootfs}``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from jetpack.config import Config
from jetpack.errors import NotFoundError, StorageError
from jetpack.hostinfo import platform_kind
from jetpack.storage.base import (
    TMP_PREFIX,
    StagingTree,
    StorageCapabilities,
    cleanup_tmp,
    lock_staging,
)
from jetpack.storage.mounts import is_mountpoint, unmount_all


def overlay_available() -> bool:
    if platform_kind() != "linux":
        return False
    try:
        return any(line.split()[-1] == "overlay"
                   for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def copy_tree(src: Path, dst: Path) -> None:
    """A full copy keeping owners, modes, times, links and devices."""
    argv = ["cp", "-a", "--reflink=auto", str(src), str(dst)] if platform_kind() == "linux" \
        else ["cp", "-pPR", str(src), str(dst)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StorageError(f"copying {src} to {dst} failed: {proc.stderr.strip()}")


def tree_size(path: Path) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except OSError:
                continue
    return total


@dataclass
class DirStorage:
    root: Path
    use_overlay: bool = True
    name: str = "dir"
    capabilities: ClassVar[StorageCapabilities] = StorageCapabilities(
        cow_clones=False, snapshots=False
    )

    @classmethod
    def from_config(cls, config: Config) -> DirStorage:
        return cls(root=config.root, use_overlay=overlay_available())

    def _error(self, what: str, exc: OSError) -> StorageError:
        return StorageError(f"{what}: {exc.strerror or exc} ({exc.filename or self.root})")

    def init(self) -> None:
        try:
            for sub in ("images", "pods", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
                (self.root / sub).chmod(0o700)  # a root made by an older jetpack too
        except OSError as exc:
            raise self._error("cannot create the storage directories", exc) from None

    # --- images --------------------------------------------------------------------------

    def new_staging(self, parent: str | None = None) -> StagingTree:
        path = self.root / "tmp" / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            lock_fd = lock_staging(path)
            if parent is None:
                path.mkdir(mode=0o755)
            else:
                copy_tree(self.image_path(parent), path)
        except OSError as exc:
            raise self._error("cannot create a staging tree", exc) from None
        return StagingTree(path.name, path, lock_fd)

    def seal_image(self, staging: StagingTree, image_id: str) -> str:
        target = self.image_path(image_id)
        try:
            os.rename(staging.path, target)
        except OSError as exc:
            raise self._error(f"cannot move image {image_id} into place", exc) from None
        finally:
            self._drop_lock(staging)
        return str(target)

    def discard(self, staging: StagingTree) -> None:
        shutil.rmtree(staging.path, ignore_errors=True)
        self._drop_lock(staging)

    @staticmethod
    def _drop_lock(staging: StagingTree) -> None:
        staging.path.with_name(staging.path.name + ".lock").unlink(missing_ok=True)
        staging.release()

    def image_path(self, image_id: str) -> Path:
        return self.root / "images" / image_id

    def has_image(self, image_id: str) -> bool:
        return self.image_path(image_id).is_dir()

    def destroy_image(self, image_id: str) -> None:
        path = self.image_path(image_id)
        if not path.exists():
            return
        # Rename first so a half-deleted tree is never visible under the image's name.
        doomed = self.root / "tmp" / f"{TMP_PREFIX}rm-{secrets.token_hex(6)}"
        try:
            os.rename(path, doomed)
        except OSError as exc:
            raise self._error(f"cannot remove image {image_id}", exc) from None
        shutil.rmtree(doomed, ignore_errors=True)

    def image_size(self, image_id: str) -> int:
        return tree_size(self.image_path(image_id))

    # --- pods ----------------------------------------------------------------------------

    def _app_dir(self, pod_uuid: str, app: str) -> Path:
        return self.root / "pods" / pod_uuid / "apps" / app

    def clone_for_app(self, image_id: str, pod_uuid: str, app: str) -> str:
        image = self.image_path(image_id)
        if not image.is_dir():
            raise NotFoundError(f"image {image_id} has no tree in {self.root / 'images'}")
        app_dir = self._app_dir(pod_uuid, app)
        try:
            app_dir.mkdir(parents=True, mode=0o700)
            if self.use_overlay:
                for sub in ("upper", "work", "rootfs"):
                    (app_dir / sub).mkdir(mode=0o755)
                (app_dir / "image").write_text(image_id + "\n")
            else:
                copy_tree(image / "rootfs", app_dir / "rootfs")
        except OSError as exc:
            shutil.rmtree(app_dir, ignore_errors=True)
            raise self._error(f"cannot make app {app}'s rootfs", exc) from None
        return str(app_dir)

    def mount_app(self, pod_uuid: str, app: str) -> Path:
        app_dir = self._app_dir(pod_uuid, app)
        rootfs = app_dir / "rootfs"
        marker = app_dir / "image"
        if not marker.exists() or is_mountpoint(rootfs):
            if not rootfs.is_dir():
                raise NotFoundError(f"pod {pod_uuid} has no app {app}")
            return rootfs
        image_id = marker.read_text().strip()
        lower = self.image_path(image_id) / "rootfs"
        options = f"lowerdir={lower},upperdir={app_dir / 'upper'},workdir={app_dir / 'work'}"
        # mount(2) itself, not mount(8): a process per app start is most of this call's cost.
        from jetpack.stage1 import linux_sys  # Linux only, as overlayfs is

        try:
            linux_sys.mount("overlay", str(rootfs), "overlay", 0, options)
        except OSError as exc:
            raise StorageError(f"cannot mount app {app}'s rootfs: {exc.strerror}") from None
        return rootfs

    def unmount_pod(self, pod_uuid: str) -> None:
        """Each app's rootfs by its own path: umount(2) refuses (EBUSY) a mount with anything
        mounted below it, so one that succeeds left nothing; only then is the mount table
        (thousands of lines on a busy host, read twice) not searched."""
        apps = self.root / "pods" / pod_uuid / "apps"
        if not apps.exists():
            return
        if self.use_overlay and platform_kind() == "linux":
            from jetpack.stage1 import linux_sys  # Linux only, as overlayfs is

            try:
                for app in apps.iterdir():
                    rootfs = app / "rootfs"
                    while is_mountpoint(rootfs):
                        linux_sys.umount2(str(rootfs))
                return
            except OSError:
                pass  # busy, or something below it: the thorough way
        unmount_all(apps)

    def destroy_pod(self, pod_uuid: str) -> None:
        pod_dir = self.root / "pods" / pod_uuid
        if not pod_dir.exists():
            return
        unmount_all(pod_dir)
        shutil.rmtree(pod_dir, ignore_errors=True)
        if pod_dir.exists():
            raise StorageError(f"cannot remove {pod_dir}")

    def cleanup_leftovers(self) -> list[str]:
        return cleanup_tmp(self.root / "tmp")
