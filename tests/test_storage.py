"""Both storage drivers for real: staging trees sealed into place, app clones that survive an
unmount (a reboot) and keep their writes, images kept while clones need them, and the leftovers
of an importer killed with SIGKILL removed while a live one's are spared."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetpack.errors import StorageError
from jetpack.storage.base import StorageDriver
from jetpack.storage.dir import DirStorage, overlay_available
from jetpack.storage.mounts import mounts_under
from jetpack.storage.zfs import ZfsStorage

from conftest import REPO, require

IMAGE = "sha512-" + "ab" * 64
OTHER = "sha512-" + "cd" * 64
POD = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(params=["dir-overlay", "dir-copy", "zfs"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageDriver]:
    kind = request.param
    driver: StorageDriver
    if kind == "zfs":
        dataset = request.getfixturevalue("zfs_dataset")
        driver = ZfsStorage(root=tmp_path / "state", dataset=dataset)
    else:
        request.getfixturevalue("root")
        if kind == "dir-overlay":
            require(overlay_available(), "overlayfs")
        driver = DirStorage(root=tmp_path / "state", use_overlay=kind == "dir-overlay")
    driver.init()
    yield driver
    for mount in mounts_under(tmp_path / "state" / "pods"):
        subprocess.run(["umount", "-l", str(mount)], check=False)


def make_image(storage: StorageDriver, image_id: str, files: dict[str, bytes]) -> None:
    staging = storage.new_staging()
    (staging.path / "rootfs").mkdir()
    (staging.path / "manifest").write_text("{}")
    for name, data in files.items():
        (staging.path / "rootfs" / name).write_bytes(data)
    storage.seal_image(staging, image_id)


def staging_entries(storage: StorageDriver) -> list[str]:
    places = [storage.root / "tmp", storage.root / "images"]
    return sorted(p.name for place in places if place.exists() for p in place.iterdir()
                  if p.name.startswith("tmp-"))


def test_seal_moves_the_tree_into_place(storage: StorageDriver) -> None:
    make_image(storage, IMAGE, {"hello": b"world"})
    assert storage.has_image(IMAGE)
    assert (storage.image_path(IMAGE) / "rootfs/hello").read_bytes() == b"world"
    assert storage.image_size(IMAGE) > 0
    assert staging_entries(storage) == []  # no staging tree, no lock left
    assert not storage.has_image(OTHER)


def test_discard_leaves_nothing(storage: StorageDriver) -> None:
    staging = storage.new_staging()
    (staging.path / "rootfs").mkdir()
    (staging.path / "rootfs/f").write_bytes(b"x" * 1000)
    storage.discard(staging)
    assert staging_entries(storage) == []
    assert not staging.path.exists()


def test_app_clone_is_writable_and_survives_a_remount(storage: StorageDriver) -> None:
    make_image(storage, IMAGE, {"hello": b"world"})
    storage.clone_for_app(IMAGE, POD, "web")
    rootfs = storage.mount_app(POD, "web")
    assert (rootfs / "hello").read_bytes() == b"world"
    (rootfs / "hello").write_bytes(b"changed")
    (rootfs / "new").write_bytes(b"app data")
    # the image itself is untouched
    assert (storage.image_path(IMAGE) / "rootfs/hello").read_bytes() == b"world"
    assert storage.mount_app(POD, "web") == rootfs  # idempotent
    # a reboot: everything unmounted; the clone mounts again with the app's writes
    storage.unmount_pod(POD)
    if isinstance(storage, ZfsStorage):
        zfs("umount", f"{storage.dataset}/pods/{POD}/apps/web")
    if not isinstance(storage, DirStorage) or storage.use_overlay:
        assert not (rootfs / "new").exists()
    rootfs = storage.mount_app(POD, "web")
    assert (rootfs / "hello").read_bytes() == b"changed"
    assert (rootfs / "new").read_bytes() == b"app data"
    storage.destroy_pod(POD)
    assert not (storage.root / "pods" / POD).exists()
    assert mounts_under(storage.root / "pods" / POD) == []


def test_two_apps_do_not_share_writes(storage: StorageDriver) -> None:
    make_image(storage, IMAGE, {"f": b"image"})
    for app in ("a", "b"):
        storage.clone_for_app(IMAGE, POD, app)
    a, b = storage.mount_app(POD, "a"), storage.mount_app(POD, "b")
    (a / "f").write_bytes(b"from a")
    assert (b / "f").read_bytes() == b"image"
    storage.destroy_pod(POD)


def test_destroy_image(storage: StorageDriver) -> None:
    make_image(storage, IMAGE, {"f": b"1"})
    storage.destroy_image(IMAGE)
    assert not storage.has_image(IMAGE)
    assert not storage.image_path(IMAGE).exists()
    storage.destroy_image(IMAGE)  # gone already: fine


def test_zfs_image_is_sealed_and_clones_come_from_seal(zfs_dataset: str,
                                                        tmp_path: Path) -> None:
    storage = ZfsStorage(root=tmp_path / "state", dataset=zfs_dataset)
    storage.init()
    make_image(storage, IMAGE, {"f": b"1"})
    dataset = f"{zfs_dataset}/images/{IMAGE}"
    assert zfs("get", "-H", "-o", "value", "readonly", dataset).strip() == "on"
    assert f"{dataset}@seal" in zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", dataset)
    with pytest.raises(OSError):  # EROFS, whatever its errno spelling
        (storage.image_path(IMAGE) / "rootfs/f").write_bytes(b"2")
    # an image built on another starts as a clone of that one's @seal
    derived = storage.new_staging(parent=IMAGE)
    (derived.path / "rootfs/g").write_bytes(b"2")
    storage.seal_image(derived, OTHER)
    assert storage.origin(OTHER) == f"{dataset}@seal"
    storage.clone_for_app(IMAGE, POD, "web")
    app = f"{zfs_dataset}/pods/{POD}/apps/web"
    assert zfs("get", "-H", "-o", "value", "origin", app).strip() == f"{dataset}@seal"
    with pytest.raises(StorageError, match="dependent clones"):
        storage.destroy_image(IMAGE)
    storage.destroy_pod(POD)
    storage.destroy_image(OTHER)
    storage.destroy_image(IMAGE)
    assert zfs("list", "-H", "-o", "name", "-r", f"{zfs_dataset}/images").split() == [
        f"{zfs_dataset}/images"]


IMPORTER = """
import os, sys
from pathlib import Path
from jetpack.storage.dir import DirStorage
from jetpack.storage.zfs import ZfsStorage
root, dataset = Path(sys.argv[1]), sys.argv[2]
storage = ZfsStorage(root=root, dataset=dataset) if dataset else DirStorage(root=root)
staging = storage.new_staging()
(staging.path / "rootfs").mkdir()
(staging.path / "rootfs/half").write_bytes(b"x" * 4096)
print(staging.path, flush=True)
sys.stdin.read()
"""


def test_cleanup_removes_what_a_killed_importer_left(storage: StorageDriver) -> None:
    dataset = storage.dataset if isinstance(storage, ZfsStorage) else ""
    live = storage.new_staging()  # an import in progress in this process
    with subprocess.Popen([sys.executable, "-c", IMPORTER, str(storage.root), dataset],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
        assert proc.stdout is not None
        dead = Path(proc.stdout.readline().strip())
        assert dead.is_dir()
        assert storage.cleanup_leftovers() == []  # both importers still alive
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    removed = storage.cleanup_leftovers()
    assert len(removed) == 1
    assert dead.name in removed[0]
    assert not dead.exists()
    assert live.path.is_dir()
    storage.discard(live)
    assert staging_entries(storage) == []
    if isinstance(storage, ZfsStorage):
        assert not [n for n in zfs("list", "-H", "-o", "name", "-r", storage.dataset).split()
                    if "tmp-" in n]
