"""Rendering an image's rootfs per ace.md: layers applied in order over a tree (files replace,
directories merge, nothing followed through a symlink), then the pathWhitelist."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


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
    # directories' times after their content (os.walk lists a symlink to a directory with
    # the directories: its copy is a symlink too, and the time goes on the link, never through)
    for top, dirs, _ in os.walk(src, topdown=False):
        for name in dirs:
            s = Path(top) / name
            st = os.lstat(s)
            os.utime(dst / s.relative_to(src), ns=(st.st_atime_ns, st.st_mtime_ns),
                     follow_symlinks=False)


def _copy_meta(src: Path, dst: Path, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        _chmod_here(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _chmod_here(path: Path, mode: int) -> None:
    """chmod on ``path`` itself: a symlink there is left alone, never followed."""
    if os.chmod in os.supports_follow_symlinks:  # lchmod (the BSDs)
        os.chmod(path, mode, follow_symlinks=False)
        return
    # Linux has no lchmod: the entry opened O_PATH|O_NOFOLLOW, changed through its /proc link.
    fd = os.open(path, getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISLNK(os.fstat(fd).st_mode):
            os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def apply_whitelist(rootfs: Path, whitelist: list[str] | tuple[str, ...]) -> None:
    """Remove every path not in the whitelist (the directories leading to a kept path stay;
    the whitelist is the complete set, as appc says: a listed directory keeps only itself)."""
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
            if rel in keep or rel in parents:
                continue
            _remove(full)
