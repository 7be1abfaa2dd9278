"""The image store: import (one pass, nothing visible until complete), rendering of
dependencies, references, tags, export, removal and leftovers.

An image is a sealed tree in the storage driver plus one row in the state database, recorded
with its ``image.imported`` event in one transaction after the tree is in place; if the row
cannot be written the tree is removed again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from jetpack.appc import ImageManifest
from jetpack.config import Config
from jetpack.errors import (
    AmbiguousError,
    ConflictError,
    ImageError,
    JetpackError,
    NotFoundError,
    UsageError,
)
from jetpack.hostinfo import appc_arch, appc_os
from jetpack.state import StateDB
from jetpack.state.db import now
from jetpack.storage import open_storage
from jetpack.storage.base import StagingTree, StorageDriver
from jetpack.store.aci import extract_aci
from jetpack.store.prepare import ResolvedImage

ACI_FILE = "image.aci"
_FULL_ID = re.compile(r"^sha512-[0-9a-f]{128}$")
_ID_PREFIX = re.compile(r"^sha512-[0-9a-f]{8,127}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ImageRecord:
    id: str
    name: str
    labels: dict[str, str]
    manifest: str
    size: int
    created: float
    storage: str
    source: str

    @property
    def version(self) -> str | None:
        return self.labels.get("version")

    def parsed(self) -> ImageManifest:
        return ImageManifest.from_json(self.manifest)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "labels": self.labels, "size": self.size,
            "created": datetime.fromtimestamp(self.created, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": self.source,
        }


def _record(row: Any) -> ImageRecord:
    return ImageRecord(row["id"], row["name"], json.loads(row["labels"]), row["manifest"],
                       row["size"], row["created"], row["storage"], row["source"])


def parse_reference(ref: str) -> tuple[str, dict[str, str]]:
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


class Progress:
    """Bytes and rate on a terminal (stderr), nothing otherwise."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what = what
        self.total = total
        self.enabled = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now_ = time.monotonic()
        if now_ - self.last < 0.2:
            return
        self.last = now_
        rate = done / max(now_ - self.started, 1e-6)
        total = f" of {self.total / 1e6:.1f}" if self.total else ""
        sys.stderr.write(f"\r{self.what}: {done / 1e6:.1f}{total} MB at {rate / 1e6:.1f} MB/s ")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\n")


class ImageStore:
    def __init__(self, config: Config, state: StateDB,
                 storage: StorageDriver | None = None) -> None:
        self.config = config
        self.state = state
        self.storage = storage if storage is not None else open_storage(config)

    # --- reading -----------------------------------------------------------------------------

    def all(self) -> list[ImageRecord]:
        return [_record(r) for r in self.state.query("SELECT * FROM images ORDER BY created")]

    def get(self, image_id: str) -> ImageRecord:
        rows = self.state.query("SELECT * FROM images WHERE id = ?", (image_id,))
        if not rows:
            raise NotFoundError(f"no image {image_id}")
        return _record(rows[0])

    def find(self, image_id: str) -> ImageRecord | None:
        rows = self.state.query("SELECT * FROM images WHERE id = ?", (image_id,))
        return _record(rows[0]) if rows else None

    def resolve(self, ref: str, labels: dict[str, str] | None = None) -> ImageRecord:
        """An image by full ID, unique ID prefix, ``name@tag``, or
        ``name[:version][,label=value...]`` (os/arch default to the host's; the most recently
        imported match wins)."""
        ref = ref.strip()
        if _FULL_ID.match(ref):
            return self.get(ref)
        if _ID_PREFIX.match(ref):
            rows = self.state.query("SELECT * FROM images WHERE id LIKE ? ORDER BY id",
                                    (ref + "%",))
            if len(rows) == 1:
                return _record(rows[0])
            if len(rows) > 1:
                raise AmbiguousError(f"image ID prefix {ref} is ambiguous",
                                     [f"{r['id']} {r['name']}" for r in rows])
            raise NotFoundError(f"no image with an ID starting {ref}")
        if "@" in ref:
            name, _, tag = ref.partition("@")
            rows = self.state.query(
                "SELECT images.* FROM tags JOIN images ON images.id = tags.image_id"
                " WHERE tags.name = ? AND tags.tag = ?", (name, tag))
            if not rows:
                raise NotFoundError(f"no image tagged {ref}", hint="'jetpack images' lists tags")
            return _record(rows[0])
        name, wanted = parse_reference(ref)
        wanted.update(labels or {})
        return self._by_name(ref, name, wanted)

    def _by_name(self, ref: str, name: str, wanted: dict[str, str]) -> ImageRecord:
        rows = self.state.query("SELECT * FROM images WHERE name = ? ORDER BY created DESC, id",
                                (name,))
        if not rows:
            raise NotFoundError(f"no image named {name}",
                                hint="'jetpack images' lists them; 'jetpack fetch' gets one")
        host = {"os": appc_os(), "arch": appc_arch()}
        candidates = []
        for row in rows:
            record = _record(row)
            if any(record.labels.get(k) != v for k, v in wanted.items()):
                continue
            if any(k not in wanted and k in record.labels and record.labels[k] != v
                   for k, v in host.items()):
                continue
            candidates.append(record)
        if not candidates:
            listing = [f"{_record(r).id[:19]} {r['name']} {r['labels']}" for r in rows]
            raise NotFoundError(f"no image matches {ref}; images named {name}: "
                                + "; ".join(listing))
        return candidates[0]

    def resolve_image(self, ref: str, labels: dict[str, str] | None = None) -> ResolvedImage:
        record = self.resolve(ref, labels)
        return ResolvedImage(record.id, record.name, record.parsed(), record.manifest)

    def users(self, image_id: str) -> list[str]:
        """Pods whose apps use the image, and images depending on it."""
        pods = [f"pod {r['name']}" for r in self.state.query(
            "SELECT DISTINCT pods.name FROM apps JOIN pods ON pods.uuid = apps.pod_uuid"
            " WHERE apps.image_id = ?", (image_id,))]
        # A rendered image is a clone of its first dependency on ZFS: that one must stay.
        dependents = [f"image {r.name} ({r.id[:19]})" for r in self.all()
                      if r.id != image_id and r.parsed().dependencies
                      and self._dep_target(r.id) == image_id]
        return pods + dependents

    def _dep_target(self, image_id: str) -> str | None:
        origin = getattr(self.storage, "origin", None)
        if origin is None:
            return None
        value = str(origin(image_id))
        if "@seal" not in value:
            return None
        return value.rsplit("/", 1)[-1].split("@", maxsplit=1)[0]

    # --- import --------------------------------------------------------------------------

    def import_aci(self, source: Path | BinaryIO, *, source_name: str = "",
                   sig: Path | None = None) -> ImageRecord:
        """Import an ACI (a path, or a stream such as stdin); the same ACI twice is a no-op."""
        if sig is not None:
            if not isinstance(source, Path):
                raise UsageError("--sig needs the ACI as a file, not a stream")
            self._verify(source, sig)
        if isinstance(source, Path):
            try:
                size = source.stat().st_size
                handle: BinaryIO = source.open("rb")
            except OSError as exc:
                raise ImageError(f"cannot read {source}: {exc.strerror}") from None
            with handle:
                return self._import(handle, source_name or str(source), size)
        return self._import(source, source_name or "-", None)

    def _verify(self, aci: Path, sig: Path) -> None:
        try:
            from jetpack import trust  # type: ignore[attr-defined,unused-ignore]  # arrives with discovery
        except ImportError:
            raise JetpackError("signature checks are not available in this build",
                               hint="import without --sig") from None
        with aci.open("rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            name = None
            for member in tar:
                if member.name.lstrip("./") == "manifest":
                    data = tar.extractfile(member)
                    name = ImageManifest.from_json(data.read() if data else b"").name
                    break
        if name is None:
            raise ImageError(f"{aci} has no manifest")
        trust.verify_detached(self.config, name, aci, sig)

    def _import(self, stream: BinaryIO, source_name: str, size: int | None) -> ImageRecord:
        staging = self.storage.new_staging()
        progress = Progress("import", size)
        try:
            try:
                fd = os.open(staging.path / ACI_FILE,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as tee:
                    extracted = extract_aci(stream, staging.path, tee=tee, progress=progress)
            finally:
                progress.done()
            manifest = ImageManifest.from_json(extracted.manifest)
            existing = self.find(extracted.image_id)
            if existing is not None and self.storage.has_image(existing.id):
                self.storage.discard(staging)
                return existing
            tree = staging
            if manifest.dependencies:
                tree = self._render(staging, manifest)
            location = self.storage.seal_image(tree, extracted.image_id)
        except BaseException:
            self.storage.discard(staging)
            raise
        record = ImageRecord(extracted.image_id, manifest.name, manifest.labels,
                             manifest.to_json(), extracted.size, now(), location, source_name)
        try:
            with self.state.transaction() as tx:
                tx.execute("DELETE FROM images WHERE id = ?", (record.id,))
                tx.execute(
                    "INSERT INTO images (id, name, labels, manifest, size, created, storage,"
                    " source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.id, record.name, json.dumps(record.labels), record.manifest,
                     record.size, record.created, record.storage, record.source))
                tx.event("image.imported", image=record.id, name=record.name,
                         labels=record.labels, size=record.size)
        except BaseException:
            self.storage.destroy_image(record.id)
            raise
        return record

    # --- rendering -----------------------------------------------------------------------

    def _render(self, layer: StagingTree, manifest: ImageManifest) -> StagingTree:
        """The rendered tree: dependencies in order (the first as the base: a ZFS clone of its
        @seal, or a copy), then the image's own rootfs, then its pathWhitelist."""
        deps = [self._dependency(d.image_name, d.image_id, d.labels)
                for d in manifest.dependencies]
        tree = self.storage.new_staging(parent=deps[0].id)
        try:
            for dep in deps[1:]:
                apply_layer(self.storage.image_path(dep.id) / "rootfs", tree.path / "rootfs")
            apply_layer(layer.path / "rootfs", tree.path / "rootfs")
            for name in ("manifest", ACI_FILE):
                target = tree.path / name
                if target.exists() or target.is_symlink():
                    os.chmod(target, 0o644)
                    target.unlink()
                shutil.copy2(layer.path / name, target)
            if manifest.path_whitelist:
                apply_whitelist(tree.path / "rootfs", manifest.path_whitelist)
        except BaseException:
            self.storage.discard(tree)
            raise
        self.storage.discard(layer)
        return tree

    def _dependency(self, name: str, image_id: str | None, labels: dict[str, str]
                    ) -> ImageRecord:
        if image_id is not None:
            record = self.find(image_id)
            if record is None:
                raise ImageError(f"dependency {name} ({image_id}) is not in the store",
                                 hint="import or fetch it first")
            return record
        try:
            return self._by_name(name, name, dict(labels))
        except NotFoundError as exc:
            raise ImageError(f"dependency {name} {labels or ''} is not in the store: {exc}",
                             hint="import or fetch it first") from None

    # --- pods ----------------------------------------------------------------------------

    def clone_for_app(self, image_id: str, pod_uuid: str, app: str) -> str:
        return self.storage.clone_for_app(image_id, pod_uuid, app)

    def destroy_pod_clones(self, pod_uuid: str) -> None:
        self.storage.destroy_pod(pod_uuid)

    # --- removal, tags, export -------------------------------------------------------------

    def destroy(self, ref: str, *, force: bool = False) -> ImageRecord:
        record = self.resolve(ref)
        users = self.users(record.id)
        dependents = [u for u in users if u.startswith("image ")]
        if dependents or (users and not force):
            raise ConflictError(f"image {record.name} ({record.id[:19]}) is in use by "
                                + ", ".join(users),
                                hint=None if dependents else "--force removes it anyway")
        self.storage.destroy_image(record.id)
        with self.state.transaction() as tx:
            tx.execute("DELETE FROM images WHERE id = ?", (record.id,))
            tx.event("image.removed", image=record.id, name=record.name)
        return record

    def tag(self, ref: str, target: str) -> ImageRecord:
        record = self.resolve(ref)
        name, sep, tag = target.partition("@")
        if not sep or not _TAG.match(tag):
            raise UsageError(f"bad tag {target!r}: expected NAME@TAG")
        with self.state.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO tags (name, tag, image_id) VALUES (?, ?, ?)",
                       (name, tag, record.id))
            tx.event("image.tagged", image=record.id, name=name, tag=tag)
        return record

    def untag(self, target: str) -> None:
        name, sep, tag = target.partition("@")
        if not sep:
            raise UsageError(f"bad tag {target!r}: expected NAME@TAG")
        with self.state.transaction() as tx:
            if tx.execute("DELETE FROM tags WHERE name = ? AND tag = ?", (name, tag)
                          ).rowcount == 0:
                raise NotFoundError(f"no tag {target}")
            tx.event("image.untagged", name=name, tag=tag)

    def tags(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for row in self.state.query("SELECT * FROM tags ORDER BY name, tag"):
            out.setdefault(row["image_id"], []).append(f"{row['name']}@{row['tag']}")
        return out

    def export(self, ref: str, out: Path, *, flat: bool = False) -> ImageRecord:
        """The ACI as imported (byte-identical), or ``flat``: the rendered tree as one ACI
        without dependencies."""
        record = self.resolve(ref)
        tree = self.storage.image_path(record.id)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            if not flat:
                original = tree / ACI_FILE
                if not original.exists():
                    raise ImageError(f"image {record.name} was not imported from an ACI",
                                     hint="export it with --flat")
                shutil.copyfile(original, tmp)
            else:
                write_flat_aci(tree, record.parsed(), tmp)
            os.replace(tmp, out)
        except OSError as exc:
            raise ImageError(f"cannot write {out}: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return record

    def gc(self, *, images: bool = False) -> list[str]:
        removed = self.storage.cleanup_leftovers()
        if images:
            for record in sorted(self.all(), key=lambda r: r.created, reverse=True):
                if not self.users(record.id):
                    self.destroy(record.id)
                    removed.append(f"image {record.name} {record.id}")
        return removed


def write_flat_aci(tree: Path, manifest: ImageManifest, out: Path) -> None:
    flat = ImageManifest(name=manifest.name, ac_version=manifest.ac_version,
                         labels=manifest.labels, app=manifest.app,
                         annotations=manifest.annotations)
    data = flat.to_json(indent=2).encode()
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest")
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        import io

        tar.addfile(info, io.BytesIO(data))
        tar.add(tree / "rootfs", arcname="rootfs", recursive=True)


# --- layers --------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def apply_layer(src: Path, dst: Path) -> None:
    """Put ``src``'s tree over ``dst``: files replace, directories merge, and a path present
    in ``dst`` as something else (a symlink to a directory included) is removed first, never
    followed (ace.md rendering)."""
    for top, dirs, files in os.walk(src):
        rel = Path(top).relative_to(src)
        for name in dirs + files:
            s, d = Path(top) / name, dst / rel / name
            st = os.lstat(s)
            if os.path.lexists(d):
                dst_dir = stat.S_ISDIR(os.lstat(d).st_mode)
                if not (stat.S_ISDIR(st.st_mode) and dst_dir):
                    _remove(d)
            if stat.S_ISDIR(st.st_mode):
                if not os.path.lexists(d):
                    os.mkdir(d, 0o700)
                _copy_meta(s, d, st)
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(s, d, follow_symlinks=False)
            else:
                os.mknod(d, st.st_mode, st.st_rdev)
            _copy_meta(s, d, st)
    # directories' times after their content
    for top, dirs, _ in os.walk(src, topdown=False):
        for name in dirs:
            s = Path(top) / name
            st = os.lstat(s)
            os.utime(dst / s.relative_to(src), ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_meta(src: Path, dst: Path, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def apply_whitelist(rootfs: Path, whitelist: list[str] | tuple[str, ...]) -> None:
    """Remove every path not in the whitelist (the directories leading to a kept path stay;
    a listed directory does not keep what is under it)."""
    keep = {p.rstrip("/") or "/" for p in whitelist}
    parents = set()
    for path in keep:
        parts = Path(path).parts
        for i in range(1, len(parts)):
            parents.add(str(Path(*parts[:i])))
    for top, dirs, files in os.walk(rootfs, topdown=False):
        for name in files + dirs:
            full = Path(top) / name
            rel = "/" + str(full.relative_to(rootfs))
            # The whitelist is the complete set (appc): a listed directory keeps only itself.
            if rel in keep or rel in parents:
                continue
            _remove(full)
