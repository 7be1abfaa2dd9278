"""The image store: import (one pass, nothing visible until complete), rendering of
dependencies, references, tags, export, removal and leftovers.

An image is a sealed tree in the storage driver plus one row in the state database, recorded
with its ``image.imported`` event in one transaction after the tree is in place; if the row
cannot be written the tree is removed again.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from jetpack.appc import ImageManifest
from jetpack.config import Config
from jetpack.errors import (
    AmbiguousError,
    ConflictError,
    ImageError,
    NotFoundError,
    StorageError,
    TrustError,
    ValidationError,
)
from jetpack.killpoint import killpoint
from jetpack.state import StateDB
from jetpack.state.db import now
from jetpack.storage import open_storage
from jetpack.storage.base import TMP_PREFIX, StagingTree, StorageDriver
from jetpack.store.prepare import ResolvedImage
from jetpack.store.refs import format_labels, labels_match, parse_image_ref, parse_tag
from jetpack.store.render import apply_layer, apply_whitelist

if TYPE_CHECKING:
    from jetpack.store.aci import ExtractedACI, ImportLimits
    from jetpack.trust import Verified

ACI_FILE = "image.aci"


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
        parsed = parse_image_ref(ref)
        if parsed.kind == "id":
            return self.get(parsed.text)
        if parsed.kind == "prefix":
            rows = self.state.query("SELECT * FROM images WHERE id LIKE ? ORDER BY id",
                                    (parsed.text + "%",))
            if len(rows) == 1:
                return _record(rows[0])
            if len(rows) > 1:
                raise AmbiguousError(f"image ID prefix {parsed.text} is ambiguous",
                                     [f"{r['id']} {r['name']}" for r in rows])
            raise NotFoundError(f"no image with an ID starting {parsed.text}")
        if parsed.kind == "tag":
            rows = self.state.query(
                "SELECT images.* FROM tags JOIN images ON images.id = tags.image_id"
                " WHERE tags.name = ? AND tags.tag = ?", (parsed.name, parsed.tag))
            if not rows:
                raise NotFoundError(f"no image tagged {parsed.text}",
                                    hint="'jetpack images' lists tags")
            return _record(rows[0])
        return self._by_name(parsed.text, parsed.name, {**parsed.labels, **(labels or {})})

    def _by_name(self, ref: str, name: str, wanted: dict[str, str]) -> ImageRecord:
        rows = self.state.query("SELECT * FROM images WHERE name = ? ORDER BY created DESC, id",
                                (name,))
        if not rows:
            raise NotFoundError(f"no image named {name}",
                                hint="'jetpack images' lists them; 'jetpack fetch' gets one")
        records = [_record(row) for row in rows]
        candidates = [r for r in records if labels_match(r.labels, wanted)]
        if not candidates:
            raise NotFoundError(
                f"no image matches {ref}; images named {name}:\n"
                + "\n".join(f"  {r.id[:23]} {format_labels(r.labels)}" for r in records))
        return candidates[0]

    def resolve_image(self, ref: str, labels: dict[str, str] | None = None) -> ResolvedImage:
        record = self.resolve(ref, labels)
        return ResolvedImage(record.id, record.name, record.parsed(), record.manifest)

    def pod_users(self, image_id: str) -> list[tuple[str, str]]:
        """(uuid, name) of the pods whose apps use the image."""
        return [(r["uuid"], r["name"]) for r in self.state.query(
            "SELECT DISTINCT pods.uuid, pods.name FROM apps JOIN pods ON pods.uuid ="
            " apps.pod_uuid WHERE apps.image_id = ? ORDER BY pods.name", (image_id,))]

    def dependents(self, image_id: str) -> list[ImageRecord]:
        """Images whose tree is a clone of this one's (ZFS: a rendered image starts as a clone
        of its first dependency's @seal); this one must stay while they do."""
        return [r for r in self.all() if r.id != image_id and r.parsed().dependencies
                and self._dep_target(r.id) == image_id]

    def users(self, image_id: str) -> list[str]:
        """Pods whose apps use the image, and images depending on it."""
        return [f"pod {name}" for _, name in self.pod_users(image_id)] + \
            [f"image {r.name} ({r.id[:19]})" for r in self.dependents(image_id)]

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
                   sig: Path | None = None, expect_name: str | None = None,
                   signed: Verified | None = None) -> ImageRecord:
        """Import an ACI (a path, or a stream such as stdin or a verified open file); the same
        ACI twice is a no-op that returns the image already there.

        ``sig``: a detached signature checked (by the trust module) against the archive as read,
        before anything becomes visible. ``expect_name``: refuse an image named otherwise.
        ``signed``: the stream was verified already (fetch); its manifest's name must be one
        the signing key is trusted for.
        """
        if isinstance(source, Path):
            try:
                size = source.stat().st_size
                handle: BinaryIO = source.open("rb")
            except OSError as exc:
                raise ImageError(f"cannot read {source}: {exc.strerror}") from None
            with handle:
                return self._import(handle, source_name or str(source), size, sig=sig,
                                    expect_name=expect_name, signed=signed)
        return self._import(source, source_name or "-", _regular_size(source), sig=sig,
                            expect_name=expect_name, signed=signed)

    def limits(self) -> ImportLimits:
        """images.max-size and images.max-entries."""
        from jetpack.store.aci import ImportLimits  # tarfile & co.: import/export only, not run

        return ImportLimits(self.config.size("images.max-size"),
                      self.config.int("images.max-entries"))

    def _import(self, stream: BinaryIO, source_name: str, size: int | None, *,
                sig: Path | None, expect_name: str | None, signed: Verified | None
                ) -> ImageRecord:
        from jetpack.store.aci import extract_aci

        staging = self.storage.new_staging()
        tree = staging
        progress = Progress("import", size)
        try:
            try:
                fd = os.open(staging.path / ACI_FILE,
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as tee:
                    extracted = extract_aci(stream, staging.path, tee=tee, progress=progress,
                                            limits=self.limits())
                killpoint("import.extracted")
            finally:
                progress.done()
            manifest = parse_manifest(extracted.manifest)
            if expect_name is not None and manifest.name != expect_name:
                raise ImageError(f"the image is named {manifest.name}, not {expect_name}")
            if signed is not None and not signed.covers(manifest.name):
                raise TrustError(
                    f"{source_name} holds image {manifest.name}, but its signing key "
                    f"{signed.fingerprint} is trusted only for "
                    + ", ".join(p or "every name" for p in signed.prefixes),
                    hint=f"'jetpack trust --prefix {manifest.name} KEY' trusts a key for it")
            if sig is not None:
                # The archive as read (kept for export) is what the signature must cover.
                verify_signature(self.config, manifest.name, staging.path / ACI_FILE, sig,
                                 shown_as="stdin" if source_name == "-"
                                 else Path(source_name).name)
            _warn_dropped(extracted)
            if self.find(extracted.image_id) is not None and \
                    self.storage.has_image(extracted.image_id):
                self.storage.discard(staging)
                return self.get(extracted.image_id)
            if manifest.dependencies:
                tree = self._render(staging, manifest)
            return self._seal_and_record(tree, extracted, manifest, source_name)
        except BaseException:
            self.storage.discard(tree)
            if tree is not staging:
                self.storage.discard(staging)
            raise

    def _seal_and_record(self, tree: StagingTree, extracted: ExtractedACI,
                         manifest: ImageManifest, source_name: str) -> ImageRecord:
        """Seal the tree under its ID and record it with its event; one importer at a time,
        so two imports of the same ACI end as one image."""
        image_id = extracted.image_id
        with self._seal_lock():
            existing = self.find(image_id)
            if existing is not None and self.storage.has_image(image_id):
                self.storage.discard(tree)
                return existing
            if self.storage.has_image(image_id):
                # sealed by an import killed before its row was written: complete or not,
                # this tree replaces it
                self.storage.destroy_image(image_id)
            location = self.storage.seal_image(tree, image_id)
            killpoint("import.sealed")
            record = ImageRecord(image_id, manifest.name, manifest.labels,
                                 extracted.manifest.decode(), extracted.size, now(), location,
                                 source_name)
            try:
                with self.state.transaction() as tx:
                    tx.execute(
                        "INSERT INTO images (id, name, labels, manifest, size, created, storage,"
                        " source) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                        " name = excluded.name, labels = excluded.labels,"
                        " manifest = excluded.manifest, size = excluded.size,"
                        " created = excluded.created, storage = excluded.storage,"
                        " source = excluded.source",
                        (record.id, record.name, json.dumps(record.labels), record.manifest,
                         record.size, record.created, record.storage, record.source))
                    tx.event("image.imported", image=record.id, name=record.name,
                             labels=record.labels, size=record.size)
            except BaseException:
                self.storage.destroy_image(image_id)
                raise
        return record

    @contextmanager
    def _seal_lock(self) -> Iterator[None]:
        """An flock on the images directory: held from the existence check to the commit."""
        try:
            fd = os.open(self.storage.root / "images", os.O_RDONLY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.storage.root / 'images'}: {exc.strerror}"
                               ) from None
        try:
            yield
        finally:
            os.close(fd)

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
        """Remove an image. Pods using it refuse that, unless ``force``: then those pods are
        destroyed first (a running one still refuses). Images built on it always refuse."""
        record = self.resolve(ref)
        what = f"image {record.name} ({record.id[:19]})"
        dependents = self.dependents(record.id)
        if dependents:
            raise ConflictError(f"{what} is the base of " + ", ".join(
                f"image {r.name} ({r.id[:19]})" for r in dependents),
                hint="destroy those images first")
        pods = self.pod_users(record.id)
        if pods and not force:
            raise ConflictError(f"{what} is in use by " + ", ".join(f"pod {n}" for _, n in pods),
                                hint="--force destroys those pods (when stopped) and the image")
        if pods:
            from jetpack.store.lifecycle import destroy_pod
            from jetpack.store.pods import PodStore

            for uuid, _ in pods:
                destroy_pod(self.config, self.state, self, PodStore(self.state).get(uuid))
        self.storage.destroy_image(record.id)
        with self.state.transaction() as tx:
            tx.execute("DELETE FROM images WHERE id = ?", (record.id,))
            tx.event("image.removed", image=record.id, name=record.name)
        return record

    def tag(self, ref: str, target: str) -> ImageRecord:
        name, tag = parse_tag(target)
        record = self.resolve(ref)
        with self.state.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO tags (name, tag, image_id) VALUES (?, ?, ?)",
                       (name, tag, record.id))
            tx.event("image.tagged", image=record.id, name=name, tag=tag)
        return record

    def untag(self, target: str) -> None:
        name, tag = parse_tag(target)
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
                copy_with_progress(original, tmp, Progress("export", original.stat().st_size))
            else:
                from jetpack.store.aci import write_aci

                write_aci(tree, flat_manifest(record.parsed()), tmp)
            os.replace(tmp, out)
        except OSError as exc:
            raise ImageError(f"cannot write {out}: {exc.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return record

    def gc(self, *, images: bool = False) -> list[str]:
        removed = self.storage.cleanup_leftovers() + self._unrecorded_trees()
        if images:
            for record in sorted(self.all(), key=lambda r: r.created, reverse=True):
                if not self.users(record.id):
                    self.destroy(record.id)
                    removed.append(f"image {record.name} {record.id}")
        return removed


    def _unrecorded_trees(self) -> list[str]:
        """Remove sealed image trees no row names (an import killed between its seal and its
        commit); under the seal lock, so never one an import is about to record."""
        removed = []
        with self._seal_lock():
            known = {record.id for record in self.all()}
            for entry in sorted((self.storage.root / "images").iterdir()):
                name = entry.name
                if name.startswith((TMP_PREFIX, ".")) or name in known:
                    continue
                if entry.is_dir():
                    self.storage.destroy_image(name)
                    removed.append(f"unrecorded image tree {name}")
        return removed


def _regular_size(stream: BinaryIO) -> int | None:
    """The size of a stream that is an open regular file (for progress), else None."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, AttributeError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _warn_dropped(extracted: ExtractedACI) -> None:
    """Say which extended attributes import dropped (security.capability and the like)."""
    if not extracted.dropped_xattrs:
        return
    shown = ", ".join(f"{attr} on {entry}" for entry, attr in extracted.dropped_xattrs[:3])
    more = len(extracted.dropped_xattrs) - 3
    sys.stderr.write(f"jetpack: warning: extended attributes not applied (only user.* and "
                     f"POSIX ACLs are): {shown}{f' and {more} more' if more > 0 else ''}\n")


def flat_manifest(manifest: ImageManifest) -> bytes:
    """The manifest of a rendered image exported on its own: no dependencies, and no
    pathWhitelist (rendering applied it already)."""
    flat = ImageManifest(name=manifest.name, ac_version=manifest.ac_version,
                         labels=manifest.labels, app=manifest.app,
                         annotations=manifest.annotations)
    return flat.to_json(indent=2).encode()


def parse_manifest(data: bytes) -> ImageManifest:
    """The archive's manifest, validated; a rejection names the entry and the rule broken."""
    try:
        return ImageManifest.from_json(data)
    except ValidationError as exc:
        raise ImageError(f"archive entry 'manifest' is not a valid image manifest: {exc}"
                         ) from None


def verify_signature(config: Config, image_name: str, aci: Path, sig: Path, *,
                     shown_as: str) -> None:
    """Check ``sig`` over ``aci`` with the keys trusted for ``image_name`` (jetpack.trust);
    a refusal names the archive as the user gave it (``shown_as``), not the copy checked."""
    from jetpack.trust import verify_detached  # gnupg only when a signature is checked

    try:
        verify_detached(config, image_name, aci, sig)
    except TrustError as exc:
        raise TrustError(exc.message.replace(aci.name, shown_as), hint=exc.hint) from None


def copy_with_progress(src: Path, dst: Path, progress: Progress) -> None:
    """Copy a file in chunks, reporting bytes and rate on a terminal."""
    done = 0
    try:
        with src.open("rb") as reader, dst.open("xb") as writer:
            while chunk := reader.read(1 << 20):
                writer.write(chunk)
                done += len(chunk)
                progress(done)
    finally:
        progress.done()
