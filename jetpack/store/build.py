"""Building images: run a command in a writable clone of a parent image and save what changed
as a layer ACI (``jetpack build``), or pack a directory as a base ACI (``--from-dir``).

Either way the result is a real ACI imported through ``ImageStore.import_aci``, so the image's
ID is the SHA-512 of that ACI's tar and ``jetpack export`` gives it back byte-identical.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jetpack.appc import ImageManifest
from jetpack.config import Config
from jetpack.errors import ImageError, JetpackError, ValidationError
from jetpack.hostinfo import appc_arch, appc_os
from jetpack.killpoint import killpoint
from jetpack.stage2.status import ExitStatus
from jetpack.state import StateDB
from jetpack.storage.base import TMP_PREFIX, lock_staging
from jetpack.storage.dir import copy_tree
from jetpack.store.images import ImageRecord, ImageStore

BUILD_DIR = "jetpack-build"  # where the build directory sits inside the build rootfs
TEMPLATE = "manifest.json"  # the manifest template the build leaves in its build directory


# --- the manifest --------------------------------------------------------------------------


def manifest_from_template(template: Any, *, parent: ImageRecord | None = None,
                           path_whitelist: list[str] | None = None) -> ImageManifest:
    """The template (a JSON object: at least ``name``) completed: acKind/acVersion, the host's
    os/arch labels unless given, a ``created`` annotation (RFC 3339, UTC), the parent as the
    first dependency and the pathWhitelist."""
    if not isinstance(template, dict):
        raise ImageError("the manifest template is not a JSON object")
    data = dict(template)
    data.setdefault("acKind", "ImageManifest")
    data.setdefault("acVersion", "0.8.11")
    labels = list(data.get("labels") or [])
    present = {label.get("name") for label in labels if isinstance(label, dict)}
    for key, value in (("os", appc_os()), ("arch", appc_arch())):
        if key not in present:
            labels.append({"name": key, "value": value})
    data["labels"] = labels
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    annotations = [a for a in data.get("annotations") or []
                   if not (isinstance(a, dict) and a.get("name") == "created")]
    data["annotations"] = [*annotations, {"name": "created", "value": created}]
    if parent is not None:
        for key in ("dependencies", "pathWhitelist"):
            if key in data:
                raise ImageError(f"the manifest template has {key}: a build fills it in")
        dependency: dict[str, Any] = {"imageName": parent.name, "imageID": parent.id}
        if parent.labels:
            dependency["labels"] = [{"name": k, "value": v} for k, v in parent.labels.items()]
        data["dependencies"] = [dependency]
    if path_whitelist:
        data["pathWhitelist"] = path_whitelist
    try:
        return ImageManifest.parse(data)
    except ValidationError as exc:
        raise ImageError(f"bad manifest template: {exc}") from None


def read_template(path: Path, *, inside_rootfs: bool = False) -> Any:
    """The manifest template at ``path``. ``inside_rootfs``: the build command (pod root, not
    trusted) wrote it, so neither the build directory nor the template may be a symlink (one to
    a host file would make the host's data the image's manifest)."""
    try:
        if inside_rootfs:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC)
            try:
                fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=directory)
            finally:
                os.close(directory)
            with os.fdopen(fd, "rb") as template:
                data = template.read()
        else:
            data = path.read_bytes()
        return json.loads(data)
    except FileNotFoundError:
        raise ImageError(f"the build left no {TEMPLATE} in its build directory",
                         hint=f"the command must write {TEMPLATE} (a manifest template) "
                              "in its working directory") from None
    except OSError as exc:
        if inside_rootfs and exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            raise ImageError(f"/{BUILD_DIR}/{TEMPLATE} or /{BUILD_DIR} is a symlink (or not a "
                             "directory) after the build: refused") from None
        raise ImageError(f"cannot read the manifest template {path.name}: {exc}") from None
    except ValueError as exc:
        raise ImageError(f"cannot read the manifest template {path.name}: {exc}") from None


# --- comparing trees ------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeDiff:
    changed: list[str]  # relative paths, new or different, parents first
    deleted: list[str]  # relative paths in the parent that are gone
    remaining: list[str]  # every relative path of the new tree


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(top, name)
            yield os.path.relpath(full, root), os.lstat(full)


def _same(old: Path, new: Path, a: os.stat_result, b: os.stat_result) -> bool:
    if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
        return False
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return False
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(old) == os.readlink(new)
    if stat.S_ISDIR(a.st_mode):
        return a.st_mtime_ns == b.st_mtime_ns
    if stat.S_ISREG(a.st_mode):
        if a.st_size != b.st_size:
            return False
        if a.st_mtime_ns == b.st_mtime_ns:
            return True
        return _same_content(old, new)
    return a.st_rdev == b.st_rdev


def _same_content(old: Path, new: Path) -> bool:
    with old.open("rb") as f, new.open("rb") as g:
        while True:
            x, y = f.read(1 << 20), g.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def diff_trees(parent: Path, tree: Path) -> TreeDiff:
    """What ``tree`` changed against ``parent`` (both rootfs directories), by comparing them:
    type, mode, owner, link target, size and content (mtime first, as a shortcut)."""
    old = dict(_walk(parent))
    changed: set[str] = set()
    remaining: list[str] = []
    for rel, st in _walk(tree):
        remaining.append(rel)
        before = old.get(rel)
        if before is None or not _same(parent / rel, tree / rel, before, st):
            changed.add(rel)
    # A changed entry's directories go into the layer too, so that it extracts anywhere.
    for rel in list(changed):
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            changed.add(str(Path(*parts[:i])))
    kept = set(remaining)
    deleted = sorted(rel for rel in old if rel not in kept)
    return TreeDiff(sorted(changed, key=lambda p: Path(p).parts), deleted, remaining)


# --- writing ACIs ---------------------------------------------------------------------------


def _numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owner names mean nothing inside another rootfs; keep times whole seconds.
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    return info


def write_aci(out: Path, manifest: ImageManifest, rootfs: Path, paths: list[str] | None) -> None:
    """A gzip'd ACI: ``manifest``, ``rootfs`` and the given paths under it (relative, parents
    before children), or the whole tree when ``paths`` is None."""
    data = manifest.to_json(indent=2).encode()
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest")
        info.size, info.mode = len(data), 0o644
        info.mtime = int(datetime.now(UTC).timestamp())
        import io

        tar.addfile(info, io.BytesIO(data))
        tar.add(rootfs, arcname="rootfs", recursive=False, filter=_numeric)
        entries = paths if paths is not None else [rel for rel, _ in _walk(rootfs)]
        for rel in entries:
            tar.add(rootfs / rel, arcname=f"rootfs/{rel}", recursive=False, filter=_numeric)


# --- building -------------------------------------------------------------------------------


class Builder:
    def __init__(self, config: Config, state: StateDB) -> None:
        self.config = config
        self.store = ImageStore(config, state)
        self.storage = self.store.storage

    @contextmanager
    def _scratch(self) -> Iterator[Path]:
        """A scratch directory under the tmp area, locked like a staging tree while in use, so
        that ``gc`` (``cleanup_leftovers``) removes it once its builder died."""
        base = self.config.root / "tmp"
        base.mkdir(mode=0o700, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}build-", dir=base))
        lock = lock_staging(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            path.with_name(path.name + ".lock").unlink(missing_ok=True)
            os.close(lock)

    def from_dir(self, rootfs: Path, template_path: Path) -> ImageRecord:
        """A base image (no dependencies) holding ``rootfs`` whole."""
        if not rootfs.is_dir():
            raise ImageError(f"{rootfs} is not a directory")
        manifest = manifest_from_template(read_template(template_path))
        with self._scratch() as scratch:
            aci = scratch / "image.aci"
            try:
                write_aci(aci, manifest, rootfs, None)
            except OSError as exc:
                raise ImageError(f"cannot pack {rootfs}: {exc}") from None
            return self.store.import_aci(aci, source_name=f"build --from-dir {rootfs}")

    def build(self, parent_ref: str, build_dir: Path, command: list[str]) -> ImageRecord:
        """Run ``command`` in a clone of the parent with ``build_dir`` at /jetpack-build, then
        import what changed as a layer ACI depending on the parent."""
        if not build_dir.is_dir():
            raise ImageError(f"build directory {build_dir} is not a directory")
        if not command:
            raise ImageError("no build command given")
        parent = self.store.resolve(parent_ref)
        staging = self.storage.new_staging(parent=parent.id)
        try:
            with self._scratch() as scratch:
                return self._build_in(parent, staging.path, build_dir, command, scratch)
        except OSError as exc:
            raise ImageError(f"build failed: {exc}") from None
        finally:
            self.storage.discard(staging)

    def _build_in(self, parent: ImageRecord, staging: Path, build_dir: Path,
                  command: list[str], scratch: Path) -> ImageRecord:
        rootfs = staging / "rootfs"
        inside = rootfs / BUILD_DIR
        if os.path.lexists(inside):
            raise ImageError(f"the parent image already has /{BUILD_DIR}")
        copy_tree(build_dir, inside)
        os.chown(inside, 0, 0)
        killpoint("build.tree")
        status = run_build(self.config, scratch, rootfs, command)
        if status.failed:
            raise ImageError(f"the build command could not run: {status.failed}")
        if status.signal is not None:
            raise ImageError(f"the build command was killed by signal {status.signal}")
        if status.code != 0:
            raise ImageError(f"the build command exited with status {status.code}")
        template = read_template(inside / TEMPLATE, inside_rootfs=True)
        shutil.rmtree(inside)
        diff = diff_trees(self.storage.image_path(parent.id) / "rootfs", rootfs)
        manifest = manifest_from_template(
            template, parent=parent,
            path_whitelist=["/" + p for p in diff.remaining] if diff.deleted else None)
        aci = scratch / "image.aci"
        try:
            write_aci(aci, manifest, rootfs, diff.changed)
        except OSError as exc:
            raise ImageError(f"cannot write the built layer: {exc}") from None
        killpoint("build.written")
        return self.store.import_aci(aci, source_name=f"build {parent.name} {build_dir}")


def run_build(config: Config, scratch: Path, rootfs: Path, command: list[str]) -> ExitStatus:
    """The command as user 0 in a sandbox of its own, rootfs ``rootfs``, working directory
    /jetpack-build, the terminal as its stdio; the sandbox is gone when this returns."""
    import trio

    from jetpack.stage1.base import AppSpec, Limits, SandboxSpec
    from jetpack.stage1.drivers import isolation_driver

    async def main() -> ExitStatus:
        driver = isolation_driver(config)
        # The build command is confined as an app: the default isolator plan (the driver
        # applies it to an app spec without one) and the default resource limits.
        handle = await driver.create_sandbox(
            SandboxSpec(pod_uuid=str(uuid.uuid4()), hostname="build", pod_dir=scratch / "pod",
                        limits=Limits()))
        try:
            app = AppSpec(name="build", rootfs=rootfs, exec=tuple(command), user="0",
                          group="0", working_directory=f"/{BUILD_DIR}",
                          log_path=scratch / "build.log")
            return await _run_relayed(driver, handle, app)
        finally:
            with trio.CancelScope(shield=True):
                await driver.destroy_sandbox(handle)

    try:
        return trio.run(main)
    except JetpackError:
        raise
    except OSError as exc:
        raise ImageError(f"cannot run the build: {exc}") from None


async def _run_relayed(driver: Any, handle: Any, app: Any) -> ExitStatus:
    """Run the build app with the caller's stdio, its terminals relayed through pipes: the
    build command never holds the caller's terminal."""
    import trio

    from jetpack.stage1.base import Stdio
    from jetpack.stage1.stdio_relay import PipeRelay

    relay = PipeRelay(Stdio(0, 1, 2))
    try:
        process = await driver.start_app(handle, app, stdio=relay.pod)
        relay.spawned()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(relay.copy)
                status = await driver.wait(handle, process)
                nursery.cancel_scope.cancel()
        finally:
            process.close()
        result: ExitStatus = status
        return result
    finally:
        relay.finish()
