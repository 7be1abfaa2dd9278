"""Reading an ACI in one pass: decompress (gzip, bzip2, xz or none, told by magic), hash the
decompressed tar with SHA-512 while tarfile reads it, and extract into a fresh directory,
refusing anything that could write outside it.

Refused, with an ImageError naming the entry: absolute paths and ``..``; entries outside
``manifest`` and ``rootfs/``; writing through a symlink (one planted earlier in the archive
included); hard links to anything but a regular file already extracted from the archive;
duplicate entries; a missing, non-regular or oversized manifest; a truncated or corrupt stream
(a tar stream must end with tar's end-of-archive block: tarfile alone takes a bad header or an
early end at a member boundary for the end of the archive, silently dropping the rest).
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import os
import stat
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol, Self

from jetpack.errors import ImageError

MAX_MANIFEST = 1 << 20
CHUNK = 1 << 20

GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"


def compression_of(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(XZ_MAGIC):
        return "xz"
    return "none"


class _Engine(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


def _ended(engine: _Engine) -> bool:
    return engine.eof


class _Decompressor:
    """Streaming decompression of a file object, told by its first bytes."""

    def __init__(self, raw: BinaryIO, tee: BinaryIO | None, progress: Callable[[int], None] | None
                 ) -> None:
        self.raw = raw
        self.tee = tee
        self.progress = progress
        self.read_compressed = 0
        head = self._read_raw(6)
        self.kind = compression_of(head)
        self._pending = b""
        self._eof = False
        if self.kind == "gzip":
            self._engine: _Engine | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.kind == "bzip2":
            self._engine = bz2.BZ2Decompressor()
        elif self.kind == "xz":
            self._engine = lzma.LZMADecompressor()
        else:
            self._engine = None
        self._pending = self._feed(head)

    def _read_raw(self, size: int) -> bytes:
        data = self.raw.read(size)
        if data:
            self.read_compressed += len(data)
            if self.tee is not None:
                self.tee.write(data)
            if self.progress is not None:
                self.progress(self.read_compressed)
        return data

    def _feed(self, data: bytes) -> bytes:
        if self._engine is None:
            return data
        try:
            if _ended(self._engine):
                if data:
                    raise _StreamError("corrupt archive: data after the end of the "
                                       "compressed stream")
                return b""
            out = self._engine.decompress(data)
            # gzip allows several members back to back (pigz, cat a.gz b.gz): go on with each
            while self.kind == "gzip" and _ended(self._engine):
                rest = self._engine.unused_data
                if not rest:
                    break
                self._engine = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out += self._engine.decompress(rest)
            if self.kind != "gzip" and _ended(self._engine) and self._engine.unused_data:
                raise _StreamError("corrupt archive: data after the end of the compressed "
                                   "stream")
            return out
        except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
            raise _StreamError(f"corrupt {self.kind} stream: {exc}") from None

    def read(self, size: int) -> bytes:
        while len(self._pending) < size and not self._eof:
            chunk = self._read_raw(CHUNK)
            if not chunk:
                self._eof = True
                self._check_complete()
                break
            self._pending += self._feed(chunk)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def _check_complete(self) -> None:
        engine = self._engine
        if engine is None:
            return
        if not _ended(engine):
            raise _StreamError(f"truncated archive: the {self.kind} stream ends early")


class _HashingReader(io.RawIOBase):
    """What tarfile reads: the decompressed stream, hashed and counted on the way."""

    def __init__(self, source: _Decompressor) -> None:
        self.source = source
        self.sha512 = hashlib.sha512()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        data = self.source.read(size)
        self.sha512.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]  # RawIOBase's signature is wider than we need
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _StreamError(ImageError):
    """The byte stream is broken (truncated, corrupt); the message gains the entry it hit."""


class _HeaderError(_StreamError):
    """A tar header that is neither a member nor the end-of-archive block."""


class _StrictTarInfo(tarfile.TarInfo):
    """Tells a clean end of archive (a zero block) from a bad or missing header, which
    ``TarFile.next`` would otherwise both take for the end."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        offset = archive.fileobj.tell() if archive.fileobj is not None else -1
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as exc:
            # tarfile's subclasses of HeaderError are private (not in typeshed): told by name
            kind = type(exc).__name__
            if kind == "EOFHeaderError":
                if isinstance(archive, _StrictTarFile):
                    archive.ended_cleanly = True
                raise
            if kind in ("EmptyHeaderError", "TruncatedHeaderError"):
                raise _HeaderError(f"truncated archive: the tar stream ends at byte {offset} "
                                   "without its end-of-archive block") from None
            raise _HeaderError(f"corrupt archive: bad tar header at byte {offset} ({exc})"
                               ) from None


class _StrictTarFile(tarfile.TarFile):
    ended_cleanly = False


@dataclass(frozen=True)
class ExtractedACI:
    image_id: str  # sha512-<hex of the decompressed tar>
    manifest: bytes
    size: int  # bytes of the decompressed tar
    compression: str


def _clean_name(raw: str) -> str:
    """The entry's path relative to the image, or an ImageError naming why it is unsafe."""
    if raw.startswith("/"):
        raise ImageError(f"archive entry {raw!r} has an absolute path")
    parts = [p for p in PurePosixPath(raw).parts if p not in (".", "")]
    if any(p == ".." for p in parts):
        raise ImageError(f"archive entry {raw!r} climbs out with '..'")
    name = "/".join(parts)
    if not name or (name not in {"manifest", "rootfs"} and not name.startswith("rootfs/")):
        raise ImageError(f"archive entry {raw!r} is outside manifest and rootfs/")
    return name


class _Extractor:
    def __init__(self, dest: Path, *, same_owner: bool) -> None:
        self.dest = dest
        self.same_owner = same_owner
        self.kinds: dict[str, str] = {}  # name -> "dir" | "file" | "link" | "other"
        self.explicit: set[str] = set()  # names the archive itself listed
        self.dirs: list[tuple[Path, tarfile.TarInfo]] = []
        self.manifest: bytes | None = None
        self.last = ""  # the last entry read, to say where a broken stream broke

    def where(self, *, after: bool = False) -> str:
        """Where a broken stream broke: in (or after) the last entry read."""
        if not self.last:
            return ""
        return f" ({'after' if after else 'at'} archive entry {self.last!r})"

    def _parent_dirs(self, name: str, raw: str) -> None:
        """Every parent must be a directory this archive made (or one we make now)."""
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            kind = self.kinds.get(prefix)
            if kind == "link":
                raise ImageError(f"archive entry {raw!r} would be written through the "
                                 f"symlink {prefix!r}")
            if kind is not None and kind != "dir":
                raise ImageError(f"archive entry {raw!r} is under {prefix!r}, "
                                 "which is not a directory")
            if kind is None:
                os.mkdir(self.dest / prefix, 0o755)
                self.kinds[prefix] = "dir"

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        raw = member.name
        self.last = raw
        name = _clean_name(raw)
        if name in self.explicit:
            raise ImageError(f"archive entry {raw!r} appears twice")
        self.explicit.add(name)
        if name in self.kinds and not (member.isdir() and self.kinds[name] == "dir"):
            raise ImageError(f"archive entry {raw!r} conflicts with a directory made for an "
                             "earlier entry")
        self._parent_dirs(name, raw)
        target = self.dest / name
        if name == "manifest":
            self._manifest(member, tar, raw)
            return
        if name == "rootfs" and not member.isdir():
            raise ImageError("archive entry 'rootfs' is not a directory")
        if member.isdir():
            if self.kinds.get(name) != "dir":
                os.mkdir(target, 0o700)
            self.kinds[name] = "dir"
            self.dirs.append((target, member))
            return
        if member.issym():
            os.symlink(member.linkname, target)
            self.kinds[name] = "link"
        elif member.islnk():
            self._hardlink(member, target, raw)
            self.kinds[name] = "file"
            return
        elif member.isreg():
            self._regular(member, tar, target)
            self.kinds[name] = "file"
        elif member.ischr() or member.isblk() or member.isfifo():
            mode = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                    tarfile.FIFOTYPE: stat.S_IFIFO}[member.type]
            try:
                os.mknod(target, mode | 0o600, os.makedev(member.devmajor, member.devminor))
            except PermissionError as exc:
                raise ImageError(f"archive entry {raw!r}: cannot make a device node here "
                                 f"({exc.strerror})") from None
            self.kinds[name] = "other"
        else:
            raise ImageError(f"archive entry {raw!r} has an unsupported type {member.type!r}")
        self._metadata(target, member)

    def _manifest(self, member: tarfile.TarInfo, tar: tarfile.TarFile, raw: str) -> None:
        if not member.isreg():
            raise ImageError(f"archive entry {raw!r}: the manifest must be a regular file")
        if member.size > MAX_MANIFEST:
            raise ImageError(f"archive entry {raw!r} is {member.size} bytes; a manifest may "
                             f"have at most {MAX_MANIFEST}")
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has content
        self.manifest = source.read()
        fd = os.open(self.dest / "manifest", os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                     os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(self.manifest)
        self.kinds["manifest"] = "file"

    def _hardlink(self, member: tarfile.TarInfo, target: Path, raw: str) -> None:
        try:
            link = _clean_name(member.linkname)
        except ImageError:
            raise ImageError(f"archive entry {raw!r} is a hard link to {member.linkname!r}, "
                             "outside the image") from None
        if self.kinds.get(link) != "file" or link == "manifest":
            raise ImageError(f"archive entry {raw!r} is a hard link to {member.linkname!r}, "
                             "which is not a file extracted from this archive")
        self._parent_dirs(link, raw)
        os.link(self.dest / link, target, follow_symlinks=False)

    @staticmethod
    def _regular(member: tarfile.TarInfo, tar: tarfile.TarFile, target: Path) -> None:
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                out.write(chunk)

    def _metadata(self, target: Path, member: tarfile.TarInfo) -> None:
        if self.same_owner:
            try:
                os.chown(target, member.uid, member.gid, follow_symlinks=False)
            except OSError as exc:
                raise ImageError(f"cannot set the owner of {member.name!r}: {exc.strerror}"
                                 ) from None
        if not member.issym():
            os.chmod(target, member.mode & 0o7777)  # after chown: chown clears set-id bits
        setxattr = getattr(os, "setxattr", None)  # Linux only; FreeBSD has extattr(2)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr.") and setxattr is not None:
                try:
                    setxattr(target, key[len("SCHILY.xattr."):],
                             value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
                except OSError:
                    pass  # the filesystem has no such xattrs: kept where possible
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)

    def finish(self) -> None:
        if self.manifest is None:
            raise ImageError("the archive has no manifest")
        if self.kinds.get("rootfs") != "dir":
            raise ImageError("the archive has no rootfs/ directory")
        # Directories last and deepest first: their modes may forbid writing, and writing
        # into them changed their times.
        for target, member in sorted(self.dirs, key=lambda d: len(d[0].parts), reverse=True):
            self._metadata(target, member)


def extract_aci(
    source: BinaryIO,
    dest: Path,
    *,
    tee: BinaryIO | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExtractedACI:
    """Extract the ACI read from ``source`` into the empty directory ``dest`` in one pass.

    ``tee`` receives the archive's bytes as read (to keep the ACI for export). On any error,
    ``dest`` may hold a partial tree: the caller discards it.
    """
    extractor = _Extractor(dest, same_owner=os.geteuid() == 0)
    try:
        decompressor = _Decompressor(source, tee, progress)
        reader = _HashingReader(decompressor)
        buffered = io.BufferedReader(reader, buffer_size=CHUNK)
        with _StrictTarFile.open(fileobj=buffered, mode="r|", errorlevel=2,
                                 tarinfo=_StrictTarInfo) as tar:
            for member in tar:
                extractor.add(member, tar)
            if not tar.ended_cleanly:
                raise _HeaderError("truncated archive: the tar stream has no end-of-archive "
                                   "block")
        # tar's end-of-archive blocks and padding belong to the hashed bytes too
        while buffered.read(CHUNK):
            pass
        extractor.finish()
    except _StreamError as exc:
        after = isinstance(exc, _HeaderError)
        raise ImageError(f"{exc}{extractor.where(after=after)}") from None
    except tarfile.ReadError as exc:
        if not extractor.last:
            raise ImageError(f"not a valid tar archive (or truncated): {exc}") from None
        raise ImageError(f"truncated or corrupt archive: {exc}{extractor.where()}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated archive: {exc}{extractor.where()}") from None
    except OSError as exc:
        raise ImageError(f"cannot extract the image: {exc.strerror or exc} "
                         f"({exc.filename or dest})") from None
    manifest = extractor.manifest
    assert manifest is not None
    return ExtractedACI("sha512-" + reader.sha512.hexdigest(), manifest, reader.size,
                        decompressor.kind)


def write_aci(tree: Path, manifest: bytes, out: Path) -> None:
    """Write ``manifest`` and ``tree/rootfs`` as a gzip-compressed ACI at ``out`` (owners,
    modes, times, symlinks, hard links and devices kept; entries in sorted order)."""
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest")
        info.size = len(manifest)
        info.mode = 0o644
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(manifest))
        tar.add(tree / "rootfs", arcname="rootfs", recursive=True)
