"""Linux system calls Python 3.11 lacks (unshare, setns, mount, umount2, pivot_root), by ctypes.

Each raises OSError with errno set, like the os module; callers translate at their boundary.
"""

from __future__ import annotations

import ctypes
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

# pivot_root has no glibc wrapper: its syscall number per architecture.
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "i686": 217, "i386": 217, "armv7l": 218,
                   "ppc64le": 203, "ppc64": 203, "s390x": 217, "riscv64": 41}
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "i686": 357, "i386": 357, "armv7l": 386,
            "ppc64le": 361, "ppc64": 361, "s390x": 351, "riscv64": 280}

try:
    # Named directly: ctypes.util.find_library runs ldconfig, which costs every app start.
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    import ctypes.util

    _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def bpf(command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """bpf(2) with ``attr`` (the command's ``union bpf_attr``, zero-padded); its result (an fd
    for BPF_PROG_LOAD)."""
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(38, f"bpf: unknown syscall number on {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(number), ctypes.c_int(command), attr,
                           ctypes.c_uint(len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf: {os.strerror(err)}")
    return int(result)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {fstype or source} on {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {platform.machine()}")
    new, old = _b(new_root), _b(put_old)
    _check(_libc.syscall(ctypes.c_long(number), ctypes.c_char_p(new), ctypes.c_char_p(old)),
           "pivot_root")


# --- the mount API of Linux 5.2+ (open_tree, move_mount) and 5.12+ (mount_setattr) ---------------
# Numbers from the unified syscall table (424 on): the same on every architecture.

_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = (("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64))


def open_tree(fd: int, flags: int) -> int:
    """A detached copy of the mount tree at ``fd`` (OPEN_TREE_CLONE, AT_RECURSIVE for all of
    it), as a descriptor; nothing is visible until move_mount attaches it."""
    result = _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(fd), ctypes.c_char_p(b""),
                           ctypes.c_uint(flags | AT_EMPTY_PATH | os.O_CLOEXEC))
    if result < 0:
        _check(-1, "open_tree")
    return int(result)


def mount_setattr(fd: int, attr_set: int, *, recursive: bool = True) -> None:
    """Set mount attributes on the mount at ``fd`` (and every mount below it): only the
    given ones are added; whatever else each mount has (nosuid, noexec, ...) stays."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(fd),
                         ctypes.c_char_p(b""), ctypes.c_uint(flags), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr")


def move_mount(from_fd: int, to_fd: int) -> None:
    """Attach the (detached) mount ``from_fd`` on the directory or file ``to_fd``."""
    _check(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(from_fd),
                         ctypes.c_char_p(b""), ctypes.c_int(to_fd), ctypes.c_char_p(b""),
                         ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)),
           "move_mount")
# The atime flags a remount must repeat to keep them (the others are with MS_RDONLY above).
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 0x200000
