"""Linux capabilities of an app: appc's default set adjusted by its isolators, and applying it
in the child just before exec (bounding set, capset, ambient set), plus no_new_privs.

Only the pure part (``capability_set``) runs on FreeBSD; the rest raises IsolationError there.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable

from jetpack.errors import IsolationError, ValidationError
from jetpack.hostinfo import platform_kind

# <linux/capability.h>; the numbers are the kernel's ABI.
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
    "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27,
    "CAP_LEASE": 28, "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32, "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36, "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# appc spec/ace.md, "os/linux/capabilities-remove-set": the 14 an app gets by default. Docker's
# default is the same set; it includes CAP_NET_RAW so that ping works in a pod.
DEFAULT_CAPABILITIES: frozenset[str] = frozenset({
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID",
    "CAP_SETPCAP", "CAP_SETFCAP", "CAP_SYS_CHROOT",
})

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def canonical_name(name: str, *, path: str = "set") -> str:
    """``CAP_NET_RAW`` for ``CAP_NET_RAW``, ``cap_net_raw`` or ``NET_RAW``; unknown: error."""
    upper = name.strip().upper()
    canonical = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if canonical not in CAPABILITIES:
        raise ValidationError(path, f"unknown capability {name!r}")
    return canonical


def capability_set(
    retain: Iterable[str] | None = None, remove: Iterable[str] | None = None
) -> frozenset[str]:
    """The app's capabilities: ``retain`` exactly when given, else the default minus ``remove``."""
    if retain is not None and remove is not None:
        raise ValidationError(
            "isolators", "os/linux/capabilities-retain-set and -remove-set cannot be combined")
    if retain is not None:
        return frozenset(canonical_name(n, path="capabilities-retain-set") for n in retain)
    removed = {canonical_name(n, path="capabilities-remove-set") for n in remove or ()}
    return DEFAULT_CAPABILITIES - removed


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


_CapPair = _CapData * 2


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded once per process (before the fork: the child then only calls it)."""
    if platform_kind() != "linux":
        raise IsolationError("Linux capabilities exist only on Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    return libc


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    result = int(_libc().prctl(option, arg2, arg3, 0, 0))
    if result < 0:
        err = ctypes.get_errno()
        raise IsolationError(f"{what}: {os.strerror(err)}")
    return result


def _capget() -> tuple[int, int, int]:
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), _CapPair()
    if _libc().capget(ctypes.byref(header), data) != 0:
        raise IsolationError(f"capget: {os.strerror(ctypes.get_errno())}")
    lo, hi = data[0], data[1]  # two 32-bit halves: the kernel's ABI
    return (int(lo.effective) | int(hi.effective) << 32,
            int(lo.permitted) | int(hi.permitted) << 32,
            int(lo.inheritable) | int(hi.inheritable) << 32)


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), _CapPair()
    for half in (0, 1):
        shift = 32 * half
        data[half].effective = (effective >> shift) & 0xFFFFFFFF
        data[half].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[half].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _libc().capset(ctypes.byref(header), data) != 0:
        raise IsolationError(
            f"capset: {os.strerror(ctypes.get_errno())}",
            hint="a non-root app keeps capabilities only if keep_capabilities() ran before setuid")


@functools.cache
def _last_cap() -> int:
    """The kernel's highest capability, read once per process (before the fork: reading it in
    the child cost half a millisecond of every app's start)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def preload() -> None:
    """What ``apply_capabilities`` reads once per process (libc, the last capability): called
    before the fork, so the child between fork and exec only makes its system calls."""
    _libc()
    _last_cap()


def keep_capabilities() -> None:
    """Keep the permitted set across the coming setuid() to a non-root user (PR_SET_KEEPCAPS)."""
    _prctl(_PR_SET_KEEPCAPS, 1, what="prctl(PR_SET_KEEPCAPS)")


def apply_capabilities(names: Iterable[str], *, ambient: Iterable[str] = (),
                       keep_sys_admin_until_exec: bool = False) -> None:
    """Limit this process, and what it execs next, to capabilities ``names``.

    Call in the child after setuid/setgid and right before exec: it drops every other
    capability from the bounding set (nothing can regain it, a setuid-root binary included).
    Root keeps ``names`` as its permitted, effective and inheritable sets. A non-root user gets
    only ``ambient`` (which must lie within ``names``): raised as ambient capabilities, the only
    ones that survive its exec; with none it holds no capability at all, as under runc and
    Docker. ``keep_sys_admin_until_exec`` leaves CAP_SYS_ADMIN effective until the exec (which
    drops it, since the bounding and ambient sets lack it) so that a seccomp filter can still
    be loaded without no_new_privs.
    """
    wanted = {CAPABILITIES[canonical_name(n)] for n in names}
    raised = {CAPABILITIES[canonical_name(n)] for n in ambient}
    if not raised <= wanted:
        raise IsolationError("ambient capabilities must be in the bounding set: "
                             f"{sorted(names_of(sum(1 << c for c in raised - wanted)))}")
    granted = wanted if os.geteuid() == 0 else raised
    mask = sum(1 << cap for cap in granted)
    now = mask | (1 << CAPABILITIES["CAP_SYS_ADMIN"] if keep_sys_admin_until_exec else 0)
    _, permitted, inheritable = _capget()
    # Dropping from the bounding set needs CAP_SETPCAP in the effective set.
    _capset(permitted, permitted, inheritable)
    for cap in range(_last_cap() + 1):
        if cap not in wanted and _prctl(_PR_CAPBSET_READ, cap, what="PR_CAPBSET_READ") == 1:
            _prctl(_PR_CAPBSET_DROP, cap, what=f"prctl(PR_CAPBSET_DROP, {cap})")
    _capset(now, now, mask)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")
    if os.geteuid() != 0:
        # exec() of a file without file capabilities gives a non-root user only its ambient set.
        for cap in sorted(raised):
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap,
                   what=f"prctl(PR_CAP_AMBIENT_RAISE, {cap})")


def no_new_privileges() -> None:
    """Set no_new_privs: neither this process nor its children gain privileges via exec."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")


def names_of(mask: int) -> frozenset[str]:
    """Capability names in a bit mask (as /proc/PID/status shows CapBnd, CapEff...)."""
    return frozenset(name for name, cap in CAPABILITIES.items() if mask & (1 << cap))
