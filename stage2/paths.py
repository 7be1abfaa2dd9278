"""Paths inside an app's rootfs, resolved from outside it the way the app will see them.

Symlinks are followed as if the rootfs were ``/`` (chroot semantics), so no resolution escapes it.
Whatever is written or mounted there goes through a directory descriptor got that way (openat2
``RESOLVE_IN_ROOT`` on Linux, a walk of ``O_NOFOLLOW`` opens elsewhere), never by path again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

_MAX_SYMLINKS = 40

# O_PATH (Linux, FreeBSD 14): a handle for *at() calls that opens nothing (no fifo blocks, no
# device driver runs). Without it a plain read-only open, which must not block on a fifo.
_O_PATH: int = getattr(os, "O_PATH", 0) or (os.O_RDONLY | os.O_NONBLOCK)
# What a symlink met with O_NOFOLLOW gives: ELOOP (Linux, POSIX), EMLINK (FreeBSD).
_LINK_ERRNOS = (errno.ELOOP, errno.EMLINK)

# openat2(2), Linux 5.6+: same number on every architecture (the unified table from 424 on).
_SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64))


_openat2_state: list[Callable[..., int] | None] = []  # [] unprobed, [None] unavailable


def _syscall() -> Callable[..., int] | None:
    if not _openat2_state:
        call = None
        if sys.platform == "linux":
            try:
                call = ctypes.CDLL(None, use_errno=True).syscall
                call.restype = ctypes.c_long
            except (OSError, AttributeError):
                call = None
        _openat2_state.append(call)
    return _openat2_state[0]


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int | None:
    """The descriptor openat2 gives, or None where the kernel has no openat2."""
    call = _syscall()
    if call is None:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, 0, resolve)
    fd = call(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dir_fd),
              ctypes.c_char_p(os.fsencode(path or ".")), ctypes.byref(how),
              ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err == errno.ENOSYS:  # a kernel before 5.6
        _openat2_state[0] = None
        return None
    if err in (errno.EAGAIN, errno.EPERM):  # a concurrent rename, a seccomp filter: the walk
        return None
    raise OSError(err, os.strerror(err), path)


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


_Create = Literal["dir", "file"] | None


def _walk(root_fd: int, path: str, *, create: _Create = None, follow: bool = True) -> int:
    """An ``O_PATH`` descriptor for ``path`` below ``root_fd``, one ``O_NOFOLLOW`` open per
    component; symlinks are read and resolved by hand inside the root (``..`` stops at it), or
    refused when ``follow`` is false. ``create`` makes missing directories (and the last
    component as an empty file for ``"file"``) on the way."""
    parts = _split(path)
    stack = [os.dup(root_fd)]
    turns = 0  # symlinks followed and components looked at again: bounded like the kernel's

    def turn() -> None:
        nonlocal turns
        turns += 1
        if turns > _MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many levels of symbolic links resolving {path}")

    def again(name: str) -> None:
        turn()
        parts.insert(0, name)

    try:
        while parts:
            name = parts.pop(0)
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not parts
            try:
                target: str | None = os.readlink(name, dir_fd=stack[-1])
            except FileNotFoundError:
                if create is None:
                    raise
                if last and create == "file":
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                         | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                         dir_fd=stack[-1]))
                else:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=stack[-1])
                again(name)
                continue
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: there, and not a symlink
                    raise
                target = None
            if target is not None:
                if not follow:
                    raise OSError(errno.ELOOP, "a symbolic link is in the way", name)
                turn()
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts[:0] = _split(target)
                continue
            flags = _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
            try:
                fd = os.open(name, flags, dir_fd=stack[-1])
            except OSError as exc:
                if exc.errno not in _LINK_ERRNOS:
                    raise
                again(name)  # made a symlink since we looked: look again
                continue
            if stat.S_ISLNK(os.fstat(fd).st_mode):  # Linux's O_PATH|O_NOFOLLOW opens the link
                os.close(fd)
                again(name)
                continue
            stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def open_root(rootfs: Path) -> int:
    """A descriptor for the rootfs itself, the anchor of every lookup below."""
    return os.open(rootfs, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_entry(path: Path) -> int:
    """An ``O_PATH`` descriptor for ``path`` itself: a symlink there is opened, not followed
    (the caller refuses it on fstat)."""
    return os.open(path, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_in_root(root_fd: int, path: str) -> int:
    """An ``O_PATH`` descriptor for ``path`` as the app sees it (symlinks followed inside)."""
    fd = _openat2(root_fd, path, _O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    return fd if fd is not None else _walk(root_fd, path)


def make_in_root(root_fd: int, path: str, kind: Literal["dir", "file"]) -> int:
    """``open_in_root``, making what is missing first: directories (0755), and for ``"file"``
    the last component as an empty file (0644). A symlink on the way is followed inside."""
    try:
        return open_in_root(root_fd, path)
    except FileNotFoundError:
        return _walk(root_fd, path, create=kind)


def open_without_symlinks(path: Path) -> int:
    """An ``O_PATH`` descriptor for an absolute host path with no symlink anywhere along it
    (ace.md's rule for host volume sources); ELOOP where there is one."""
    root = os.open("/", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _openat2(root, str(path), _O_PATH, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        return fd if fd is not None else _walk(root, str(path), follow=False)
    finally:
        os.close(root)


def write_file_at(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """``name`` in the directory ``dir_fd`` holds ``data``: written under a temporary name
    and renamed over it, so a symlink there is replaced, never written through."""
    tmp = f".{name}.jetpack"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_file_in_root(rootfs: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    """``path`` inside ``rootfs`` holds ``data``; its directory is resolved (and made) inside
    the rootfs, so an image's symlinked ``/etc`` leads to the rootfs's own directory."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        raise OSError(errno.EINVAL, "not a file name", path)
    root = open_root(rootfs)
    try:
        directory = make_in_root(root, parent or "/", "dir")
    finally:
        os.close(root)
    try:
        write_file_at(directory, name, data, mode)
    finally:
        os.close(directory)


def resolve_in_root(rootfs: Path, path: str) -> Path:
    """The host path of ``path`` as seen inside ``rootfs``; missing tails are kept as given.

    A path, for reading and checking only: anything written or mounted goes through the
    descriptors above, since a path can be swapped for a symlink between check and use."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(f"too many levels of symbolic links resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)
