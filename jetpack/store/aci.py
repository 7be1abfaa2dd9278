"""Reading an ACI in one pass: decompress (gzip, bzip2, xz or none, told by magic), hash the
decompressed tar with SHA-512 while tarfile reads it, and extract into a fresh directory,
refusing anything that could write outside it.

Refused, with an ImageError naming the entry: absolute paths and ``..``; entries outside
``manifest`` and ``rootfs/``; writing through a symlink (one planted earlier in the archive
included); hard links to anything but a regular file already extracted from the archive;
duplicate entries; a missing, non-regular or oversized manifest; a truncated or corrupt stream
(a tar stream must end with tar's end-of-archive block: tarfile alone takes a bad header or an
early end at a member boundary for the end of the archive, silently dropping the rest); device
nodes but null, zero, full, random, urandom; sparse files; more decompressed bytes or entries
than ``ImportLimits`` allows (images.max-size, images.max-entries). Memory stays bounded
whatever the compression ratio. Extended attributes other than ``user.*`` and POSIX ACLs (file
capabilities above all) are dropped and reported; setuid/setgid bits are kept. IMAGES.md says why.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import lzma
import math
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

# tarfile reads a pax or GNU long-name header's whole body into memory: bounded here, far
# above what any real archive writes (PATH_MAX names, a few xattrs)
MAX_HEADER = 1 << 20
MAX_GLOBAL_KEYS = 256  # global pax headers accumulate for the rest of the archive
MAX_PATH = 4096
MAX_ID = (1 << 32) - 2  # uid_t/gid_t; (1 << 32) - 1 and -1 tell chown(2) "leave unchanged"
TIME_T = 1 << 63  # mtimes outside [-TIME_T, TIME_T) cannot be set on any file
# (major, minor) of the character devices an image may hold: null, zero, full, random, urandom
HARMLESS_DEVICES = frozenset({(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)})
# Extended attributes applied from SCHILY.xattr pax headers; every other one is dropped.
KEPT_XATTRS = ("user.", "system.posix_acl_access", "system.posix_acl_default")
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                   tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


@dataclass(frozen=True)
class ImportLimits:
    """What one ACI may hold; a refusal names the configuration key that sets the limit."""

    max_size: int = 16 << 30  # images.max-size: bytes of the decompressed tar
    max_entries: int = 1_000_000  # images.max-entries: tar members


class _LimitError(ImageError):
    """The archive exceeds images.max-size or images.max-entries."""


def _too_large(limits: ImportLimits) -> _LimitError:
    return _LimitError(f"the archive holds more than {limits.max_size} bytes uncompressed, "
                       "the limit set by images.max-size",
                       hint="raise images.max-size in jetpack.conf (or -o images.max-size=SIZE) "
                            "if the image is trusted")


def _too_many(limits: ImportLimits) -> _LimitError:
    return _LimitError(f"the archive has more than {limits.max_entries} entries, the limit "
                       "set by images.max-entries",
                       hint="raise images.max-entries in jetpack.conf (or -o "
                            "images.max-entries=N) if the image is trusted")


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

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


def _ended(engine: _Engine) -> bool:
    return engine.eof


class _Decompressor:
    """Streaming decompression of a file object, told by its first bytes, in pieces of at most
    CHUNK bytes: a few compressed bytes can stand for gigabytes (a bomb), so the engine is
    never asked for more output than one piece, and a piece is handed out without copying."""

    def __init__(self, raw: BinaryIO, tee: BinaryIO | None, progress: Callable[[int], None] | None
                 ) -> None:
        self.raw = raw
        self.tee = tee
        self.progress = progress
        self.read_compressed = 0
        self._input = self._read_raw(6)  # compressed bytes not yet given to the engine
        self.kind = compression_of(self._input)
        self._engine = self._new_engine()
        self._piece = memoryview(b"")
        self._full = False  # the engine's last output filled a piece: it may hold more

    def _new_engine(self) -> _Engine | None:
        if self.kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        if self.kind == "xz":
            return lzma.LZMADecompressor()
        return None

    def _read_raw(self, size: int) -> bytes:
        data = self.raw.read(size)
        if data:
            self.read_compressed += len(data)
            if self.tee is not None:
                self.tee.write(data)
            if self.progress is not None:
                self.progress(self.read_compressed)
        return data

    def _wants_input(self, engine: _Engine) -> bool:
        if isinstance(engine, (bz2.BZ2Decompressor, lzma.LZMADecompressor)):
            return engine.needs_input
        return not self._full  # zlib: unconsumed input is kept by us, output by the engine

    def _next_piece(self) -> bytes:
        """The next piece of the decompressed stream (at most CHUNK bytes); b"" at its end."""
        engine = self._engine
        if engine is None:
            data, self._input = self._input or self._read_raw(CHUNK), b""
            return data
        try:
            while True:
                if _ended(engine):
                    rest = engine.unused_data + self._input
                    self._input = b""
                    # gzip allows several members back to back (pigz, cat a.gz b.gz)
                    if self.kind == "gzip" and (rest := rest or self._read_raw(CHUNK)):
                        engine = self._engine = self._new_engine()
                        assert engine is not None
                        self._input, self._full = rest, False
                        continue
                    if rest or self._read_raw(1):
                        raise _StreamError("corrupt archive: data after the end of the "
                                           "compressed stream")
                    return b""
                if not self._input and self._wants_input(engine):
                    self._input = self._read_raw(CHUNK)
                    if not self._input:
                        raise _StreamError(f"truncated archive: the {self.kind} stream ends "
                                           "early")
                out = engine.decompress(self._input, CHUNK)
                # zlib hands back what it did not take; bz2 and lzma keep it themselves
                self._input = getattr(engine, "unconsumed_tail", b"")
                self._full = len(out) == CHUNK
                if out:
                    return out
        except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
            raise _StreamError(f"corrupt {self.kind} stream: {exc}") from None

    def read(self, size: int) -> bytes:
        if not self._piece:
            self._piece = memoryview(self._next_piece())
        out, self._piece = self._piece[:size], self._piece[size:]
        return bytes(out)


class _HashingReader(io.RawIOBase):
    """What tarfile reads: the decompressed stream, hashed and counted on the way."""

    def __init__(self, source: _Decompressor, limits: ImportLimits) -> None:
        self.source = source
        self.limits = limits
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
        if self.size > self.limits.max_size:
            raise _too_large(self.limits)
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
    ``TarFile.next`` would otherwise both take for the end; bounds what a header makes tarfile
    hold in memory; refuses sparse files (their maps are read whole, and their holes would
    expand on disk beyond what images.max-size counted)."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        if info.type in _EXTENDED_TYPES and info.size > MAX_HEADER:
            raise _HeaderError(f"corrupt archive: an extended tar header of {info.size} bytes "
                               f"(at most {MAX_HEADER} are accepted)")
        if info.type == tarfile.GNUTYPE_SPARSE:
            _refuse_sparse(info.name)
        return info

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        offset = archive.fileobj.tell() if archive.fileobj is not None else -1
        if len(archive.pax_headers) > MAX_GLOBAL_KEYS:
            raise _HeaderError(f"corrupt archive: global pax headers with more than "
                               f"{MAX_GLOBAL_KEYS} keys")
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
        except (ValueError, OverflowError) as exc:
            # tarfile converts pax numbers (GNU.sparse.size, a global header's too) unchecked
            raise _HeaderError(f"corrupt archive: bad pax header value at byte {offset} "
                               f"({exc})") from None


    # tarfile's sparse handlers (private, called on this class for pax sparse formats)
    def _proc_gnusparse_00(self, member: tarfile.TarInfo, pax: dict[str, str], *_: object
                           ) -> None:
        _refuse_sparse(pax.get("GNU.sparse.name", member.name))

    def _proc_gnusparse_01(self, member: tarfile.TarInfo, pax: dict[str, str], *_: object
                           ) -> None:
        _refuse_sparse(pax.get("GNU.sparse.name", member.name))

    def _proc_gnusparse_10(self, member: tarfile.TarInfo, pax: dict[str, str], *_: object
                           ) -> None:
        _refuse_sparse(pax.get("GNU.sparse.name", member.name))


def _refuse_sparse(name: str) -> None:
    raise ImageError(f"archive entry {name!r} is a sparse file, which images may not hold",
                     hint="write the archive without --sparse")


class _StrictTarFile(tarfile.TarFile):
    ended_cleanly = False
    members: list[tarfile.TarInfo]  # set by TarFile.__init__; typeshed leaves it out


@dataclass(frozen=True)
class ExtractedACI:
    image_id: str  # sha512-<hex of the decompressed tar>
    manifest: bytes
    size: int  # bytes of the decompressed tar
    compression: str
    dropped_xattrs: tuple[tuple[str, str], ...] = ()  # (entry, attribute) not applied


def _check_fields(member: tarfile.TarInfo, raw: str) -> None:
    """Refuse header values no file can carry (found by fuzzing: each escaped as a raw
    OverflowError or ValueError from os.chown, os.utime or the path functions)."""
    shown = raw[:200]
    if "\x00" in raw or "\x00" in member.linkname:
        raise ImageError(f"archive entry {shown!r}: a path or link target with a NUL byte")
    for what, value in (("owner", member.uid), ("group", member.gid)):
        if not 0 <= value <= MAX_ID:
            raise ImageError(f"archive entry {shown!r}: {what} ID {value} is out of range "
                             f"(0 to {MAX_ID})")
    mtime = member.mtime
    if not (math.isfinite(mtime) and -TIME_T <= mtime < TIME_T):
        raise ImageError(f"archive entry {shown!r}: modification time {mtime} is out of range")
    for key in member.pax_headers:
        if key.startswith("SCHILY.xattr.") and "\x00" in key:
            raise ImageError(f"archive entry {shown!r}: an extended attribute name with a "
                             "NUL byte")


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
    def __init__(self, dest: Path, *, same_owner: bool, limits: ImportLimits) -> None:
        self.dest = dest
        self.same_owner = same_owner
        self.limits = limits
        self.entries = 0
        self.dropped_xattrs: list[tuple[str, str]] = []  # (entry, attribute) not applied
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
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise _too_many(self.limits)
        if len(raw) > MAX_PATH or len(member.linkname) > MAX_PATH:
            raise ImageError(f"archive entry {raw[:200]!r}...: a path or link target longer "
                             f"than {MAX_PATH} characters")
        _check_fields(member, raw)
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
        elif member.ischr() or member.isblk():
            self._device(member, target, raw)
            self.kinds[name] = "other"
        elif member.isfifo():
            os.mkfifo(target, 0o600)
            self.kinds[name] = "other"
        else:
            raise ImageError(f"archive entry {raw!r} has an unsupported type {member.type!r}")
        self._metadata(target, member)

    @staticmethod
    def _device(member: tarfile.TarInfo, target: Path, raw: str) -> None:
        """Only the harmless character devices (null, zero, full, random, urandom) are made;
        any other node would open the host's device of that number wherever nothing else stops
        it (a 1:1 node is /dev/mem), so it is refused. Pods get their /dev from stage1."""
        number = (member.devmajor, member.devminor)
        if not member.ischr() or number not in HARMLESS_DEVICES:
            kind = "character" if member.ischr() else "block"
            raise ImageError(f"archive entry {raw!r} is a {kind} device node "
                             f"{number[0]}:{number[1]}; images may hold no device nodes but "
                             "null, zero, full, random and urandom",
                             hint="remove it from the image: every pod gets its own /dev")
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(*number))

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
            if not key.startswith("SCHILY.xattr."):
                continue
            attribute = key[len("SCHILY.xattr."):]
            if not attribute.startswith(KEPT_XATTRS):
                # security.capability would grant file capabilities to whoever runs the file;
                # trusted.* steers overlayfs; security.selinux/ima are the host's to set
                self.dropped_xattrs.append((member.name, attribute))
                continue
            if setxattr is not None:
                try:
                    setxattr(target, attribute, value.encode("utf-8", "surrogateescape"),
                             follow_symlinks=False)
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
    limits: ImportLimits = ImportLimits(),  # frozen: one shared default is safe
) -> ExtractedACI:
    """Extract the ACI read from ``source`` into the empty directory ``dest`` in one pass,
    in bounded memory: at most ``limits.max_size`` decompressed bytes and
    ``limits.max_entries`` entries are read before the archive is refused.

    ``tee`` receives the archive's bytes as read (to keep the ACI for export). On any error,
    ``dest`` may hold a partial tree: the caller discards it.
    """
    extractor = _Extractor(dest, same_owner=os.geteuid() == 0, limits=limits)
    try:
        decompressor = _Decompressor(source, tee, progress)
        reader = _HashingReader(decompressor, limits)
        buffered = io.BufferedReader(reader, buffer_size=CHUNK)
        with _StrictTarFile.open(fileobj=buffered, mode="r|", errorlevel=2,
                                 tarinfo=_StrictTarInfo) as tar:
            # next() rather than iteration: a stream's TarFile keeps every member it read in
            # tar.members otherwise (a million entries, a million TarInfo objects)
            while (member := tar.next()) is not None:
                tar.members.clear()
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
                        decompressor.kind, tuple(extractor.dropped_xattrs))


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
