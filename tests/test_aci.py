"""The one-pass ACI reader on its own: what it keeps (owners, modes, set-id bits, times, links,
devices, xattrs), that the ID hashes exactly the decompressed tar read once, and how it refuses
broken streams and hostile entries that the CLI tests do not reach."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from jetpack.errors import ImageError
from jetpack.store.aci import ExtractedACI, extract_aci

from acis import Entry, dir_entry, file_entry, link_entry, manifest, manifest_entry

MTIME = 1_500_000_000


def tar_bytes(entries: list[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for entry in entries:
            entry(tar)
    return buf.getvalue()


def minimal(*extra: Entry) -> list[Entry]:
    return [manifest_entry(manifest("example.com/t")), dir_entry("rootfs"), *extra]


class OnePassReader(io.RawIOBase):
    """A non-seekable source that counts what is read from it."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        self.reads += n
        return n


def extract(data: bytes, dest: Path, tee: BinaryIO | None = None) -> ExtractedACI:
    dest.mkdir()
    return extract_aci(cast(BinaryIO, OnePassReader(data)), dest, tee=tee)


def entry(name: str, kind: bytes, **attrs: Any) -> Entry:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        data = attrs.pop("data", b"")
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        for key, value in attrs.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return add


@pytest.mark.parametrize("compress", ["none", "gzip", "bzip2", "xz"])
def test_id_is_sha512_of_the_decompressed_tar_read_once(tmp_path: Path, compress: str) -> None:
    raw = tar_bytes(minimal(file_entry("rootfs/a", os.urandom(300_000))))
    packed = {"none": lambda b: b, "gzip": gzip.compress, "bzip2": bz2.compress,
              "xz": lzma.compress}[compress](raw)
    source = OnePassReader(packed)
    tee = io.BytesIO()
    (tmp_path / "out").mkdir()
    result = extract_aci(cast(BinaryIO, source), tmp_path / "out", tee=tee)
    assert result.image_id == "sha512-" + hashlib.sha512(raw).hexdigest()
    assert result.size == len(raw)
    assert result.compression == compress
    assert source.reads == len(packed)  # every byte read exactly once, no seeking back
    assert tee.getvalue() == packed
    assert (tmp_path / "out/rootfs/a").stat().st_size == 300_000


def test_concatenated_gzip_members_are_one_stream(tmp_path: Path) -> None:
    raw = tar_bytes(minimal(file_entry("rootfs/a", b"a" * 5000)))
    packed = gzip.compress(raw[:3000]) + gzip.compress(raw[3000:])
    result = extract(packed, tmp_path / "out")
    assert result.image_id == "sha512-" + hashlib.sha512(raw).hexdigest()


def test_metadata_is_kept(root: None, tmp_path: Path) -> None:
    xattr = {"SCHILY.xattr.user.jetpack": "kept"}
    data = tar_bytes(minimal(
        entry("rootfs/bin", tarfile.DIRTYPE, mode=0o555, mtime=MTIME),
        entry("rootfs/bin/su", tarfile.REGTYPE, data=b"#!", mode=0o4755, uid=0, gid=0,
              mtime=MTIME),
        entry("rootfs/bin/sg", tarfile.REGTYPE, data=b"#!", mode=0o2711, uid=1234, gid=5678,
              mtime=MTIME + 1),
        entry("rootfs/bin/link", tarfile.SYMTYPE, linkname="/etc/absolute/target",
              mtime=MTIME + 2, uid=1234, gid=5678),
        entry("rootfs/bin/hard", tarfile.LNKTYPE, linkname="rootfs/bin/sg"),
        entry("rootfs/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        entry("rootfs/fifo", tarfile.FIFOTYPE, mode=0o640),
        entry("rootfs/x", tarfile.REGTYPE, data=b"x", mode=0o644, pax_headers=xattr),
        entry("rootfs/tmp", tarfile.DIRTYPE, mode=0o1777, mtime=MTIME),
    ))
    extract(data, tmp_path / "out")
    rootfs = tmp_path / "out/rootfs"
    su, sg = os.lstat(rootfs / "bin/su"), os.lstat(rootfs / "bin/sg")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert (stat.S_IMODE(sg.st_mode), sg.st_uid, sg.st_gid) == (0o2711, 1234, 5678)
    assert sg.st_mtime == MTIME + 1
    bin_dir = os.lstat(rootfs / "bin")
    assert (stat.S_IMODE(bin_dir.st_mode), bin_dir.st_mtime) == (0o555, MTIME)
    assert stat.S_IMODE(os.lstat(rootfs / "tmp").st_mode) == 0o1777
    link = os.lstat(rootfs / "bin/link")
    assert stat.S_ISLNK(link.st_mode)
    assert os.readlink(rootfs / "bin/link") == "/etc/absolute/target"
    assert (link.st_uid, link.st_mtime) == (1234, MTIME + 2)
    assert os.lstat(rootfs / "bin/hard").st_ino == sg.st_ino
    null = os.lstat(rootfs / "null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO(os.lstat(rootfs / "fifo").st_mode)
    assert os.getxattr(rootfs / "x", "user.jetpack") == b"kept"


def test_manifest_may_come_last(tmp_path: Path) -> None:
    data = tar_bytes([dir_entry("rootfs"), file_entry("rootfs/a"),
                      manifest_entry(manifest("example.com/last"))])
    result = extract(data, tmp_path / "out")
    assert b"example.com/last" in result.manifest
    assert (tmp_path / "out/manifest").read_bytes() == result.manifest


def test_leading_dot_slash_is_the_same_layout(tmp_path: Path) -> None:
    data = tar_bytes([file_entry("./manifest", b"{}"), dir_entry("./rootfs"),
                      file_entry("./rootfs/a", b"a")])
    extract(data, tmp_path / "out")
    assert (tmp_path / "out/rootfs/a").read_bytes() == b"a"


def members_then_cut(tmp_path: Path) -> tuple[bytes, list[int]]:
    """An uncompressed ACI and the offsets of its member headers after the first three."""
    data = tar_bytes(minimal(file_entry("rootfs/a", b"a" * 600), file_entry("rootfs/b", b"b"),
                             file_entry("rootfs/c", b"c")), fmt=tarfile.USTAR_FORMAT)
    offsets = [i for i in range(0, len(data), 512)
               if data[i + 257:i + 262] == b"ustar"]
    return data, offsets[3:]


def test_tar_cut_at_a_member_boundary_is_refused(tmp_path: Path) -> None:
    # tarfile on its own takes a stream ending cleanly between members for the end of the
    # archive; without the end-of-archive block it must be refused as truncated
    data, offsets = members_then_cut(tmp_path)
    for n, cut in enumerate(offsets):
        with pytest.raises(ImageError, match=r"truncated archive.*after archive entry"):
            extract(data[:cut], tmp_path / f"cut{n}")


def test_bad_header_mid_archive_is_refused(tmp_path: Path) -> None:
    data, offsets = members_then_cut(tmp_path)
    broken = data[:offsets[0]] + b"\xff" * 512 + data[offsets[0] + 512:]
    with pytest.raises(ImageError, match=r"corrupt archive: bad tar header.*'rootfs/a'"):
        extract(broken, tmp_path / "out")


@pytest.mark.parametrize("compress", ["gzip", "bzip2", "xz"])
def test_truncated_compressed_stream_is_refused(tmp_path: Path, compress: str) -> None:
    raw = tar_bytes(minimal(file_entry("rootfs/a", os.urandom(100_000))))
    packed = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[compress](raw)
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        extract(packed[: len(packed) - 20], tmp_path / "out")


def test_garbage_after_the_compressed_stream_is_refused(tmp_path: Path) -> None:
    packed = lzma.compress(tar_bytes(minimal())) + b"garbage"
    with pytest.raises(ImageError, match="after the end of the compressed stream"):
        extract(packed, tmp_path / "out")


HOSTILE = {
    "hardlink-through-symlink": ([link_entry("rootfs/l", "/etc"),
                                  link_entry("rootfs/h", "rootfs/l/passwd", hard=True)],
                                 "'rootfs/h' is a hard link"),
    "dir-through-symlink": ([link_entry("rootfs/l", "/"), dir_entry("rootfs/l/d")],
                            "'rootfs/l/d' would be written through the symlink 'rootfs/l'"),
    "deep-through-symlink": ([dir_entry("rootfs/d"), link_entry("rootfs/d/l", "../../.."),
                              file_entry("rootfs/d/l/x/y")],
                             "'rootfs/d/l/x/y' would be written through the symlink"),
    "symlink-replaces-dir": ([dir_entry("rootfs/d"), link_entry("rootfs/d", "/")],
                             "'rootfs/d' appears twice"),
    "symlink-over-made-dir": ([file_entry("rootfs/d/f"), link_entry("rootfs/d", "/")],
                              "'rootfs/d' conflicts with a directory"),
    "file-under-file": ([file_entry("rootfs/f"), file_entry("rootfs/f/g")],
                        "'rootfs/f/g' is under 'rootfs/f', which is not a directory"),
    "hardlink-to-manifest": ([link_entry("rootfs/m", "manifest", hard=True)],
                             "'rootfs/m' is a hard link"),
    "hardlink-to-dir": ([dir_entry("rootfs/d"), link_entry("rootfs/h", "rootfs/d", hard=True)],
                        "'rootfs/h' is a hard link"),
    "duplicate-dot-slash": ([file_entry("rootfs/a"), file_entry("./rootfs/a")],
                            "'./rootfs/a' appears twice"),
    "rootfs-symlink": ([], "'rootfs' is not a directory"),
    "manifest-symlink": ([], "the manifest must be a regular file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_entries_are_refused(tmp_path: Path, case: str) -> None:
    extra, message = HOSTILE[case]
    if case == "rootfs-symlink":
        entries = [manifest_entry(manifest("example.com/t")), link_entry("rootfs", "/")]
    elif case == "manifest-symlink":
        entries = [link_entry("manifest", "/etc/passwd"), dir_entry("rootfs")]
    else:
        entries = minimal(*extra)
    with pytest.raises(ImageError) as info:
        extract(tar_bytes(entries), tmp_path / "out")
    assert message in str(info.value)
    # nothing was written outside the destination
    assert not (Path("/d")).exists()
    assert not Path("/x").exists()
