"""Seccomp filters for apps: appc's ``os/linux/seccomp-retain-set`` / ``-remove-set`` isolators
as a plan (``SeccompFilter``), loaded through libseccomp (ctypes) in the child just before exec.

Order in the child (see ``apply_seccomp``): setuid → apply_capabilities → no_new_privileges if
asked → apply_seccomp → exec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_codes
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from jetpack.errors import IsolationError, ValidationError
from jetpack.hostinfo import platform_kind

ALL = "@appc.io/all"
EMPTY = "@appc.io/empty"

# Implementation-specific sets the spec allows (ace.md, seccomp notes 2-3). Blocked for every
# app: calls that act on the whole host rather than the pod. Always allowed under a retain-set:
# what the runtime itself needs between loading the filter and the app running.
DEFAULT_REMOVE_SET: frozenset[str] = frozenset({
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "syslog", "open_by_handle_at", "lookup_dcookie", "bpf", "perf_event_open",
})
BOOTSTRAP_RETAIN_SET: frozenset[str] = frozenset({
    "execve", "exit", "exit_group", "rt_sigreturn",
})

_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_FLTATR_CTL_NNP = 3
_NR_SCMP_ERROR = -1


@dataclass(frozen=True)
class SeccompFilter:
    """``retain``: only ``syscalls`` run; ``remove``: all but ``syscalls`` run. A blocked call
    fails with ``errno`` (a name like ``EPERM``), or kills the app with SIGSYS when None."""

    mode: Literal["retain", "remove"]
    syscalls: frozenset[str]
    errno: str | None = None

    def errno_number(self) -> int | None:
        return None if self.errno is None else _errno_number(self.errno)


def _errno_number(name: str) -> int:
    number = getattr(errno_codes, name, None) if name.isupper() else None
    if not isinstance(number, int):
        raise ValidationError("errno", f"unknown errno code {name!r} (examples: EPERM, ENOSYS)")
    return number


def _checked_set(names: Iterable[str], isolator: str) -> set[str]:
    syscalls = set(names)
    if not syscalls:
        raise ValidationError(f"{isolator}.set", "must not be empty")
    for name in syscalls:
        if name.startswith("@") and name not in (ALL, EMPTY):
            raise ValidationError(f"{isolator}.set", f"unknown wildcard {name!r}")
    return syscalls


def seccomp_filter(
    *,
    retain: Iterable[str] | None = None,
    remove: Iterable[str] | None = None,
    errno: str | None = None,
) -> SeccompFilter | None:
    """The filter an app's seccomp isolator asks for; None means no filtering at all.

    No isolator at all gives jetpack's default (``DEFAULT_REMOVE_SET``, EPERM).
    """
    if retain is not None and remove is not None:
        raise ValidationError(
            "isolators", "os/linux/seccomp-retain-set and -remove-set cannot be combined")
    code = errno or None
    if code is not None:
        _errno_number(code)
    if retain is not None:
        names = _checked_set(retain, "os/linux/seccomp-retain-set")
        if ALL in names:
            return None  # opting out of seccomp filtering
        return SeccompFilter("retain", frozenset((names - {EMPTY}) | BOOTSTRAP_RETAIN_SET), code)
    if remove is not None:
        names = _checked_set(remove, "os/linux/seccomp-remove-set")
        if EMPTY in names:
            names = set()  # masks the rest: only the implementation's own set
        return SeccompFilter("remove", frozenset((names - {ALL}) | DEFAULT_REMOVE_SET), code)
    return SeccompFilter("remove", DEFAULT_REMOVE_SET, "EPERM")


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    """Loaded once (and before pivot_root by linux_init: the app's rootfs has no libseccomp)."""
    if platform_kind() != "linux":
        raise IsolationError("seccomp exists only on Linux")
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(path, use_errno=True)
    except OSError:
        raise IsolationError("libseccomp is missing",
                             hint="install libseccomp2 (Debian) or libseccomp") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def syscall_number(name: str) -> int | None:
    """The native number of syscall ``name`` per libseccomp; None when it does not know it."""
    number = int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))
    return None if number == _NR_SCMP_ERROR else number


def apply_seccomp(plan: SeccompFilter, *, no_new_privs: bool = False) -> None:
    """Load ``plan`` into this process (and what it execs): the last step before exec.

    Without ``no_new_privs`` the kernel requires CAP_SYS_ADMIN in the effective set when the
    filter is loaded: call ``apply_capabilities(names, keep_sys_admin_until_exec=True)`` first.
    Syscall names libseccomp does not know on this architecture are an error.
    """
    lib = _libseccomp()
    blocked = (_SCMP_ACT_KILL_PROCESS if plan.errno is None
               else _SCMP_ACT_ERRNO | (plan.errno_number() or 0) & 0xFFFF)
    default, listed = ((blocked, _SCMP_ACT_ALLOW) if plan.mode == "retain"
                       else (_SCMP_ACT_ALLOW, blocked))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise IsolationError("seccomp_init failed")
    try:
        if lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, int(no_new_privs)) != 0:
            raise IsolationError("seccomp_attr_set(CTL_NNP) failed")
        for name in sorted(plan.syscalls):
            number = int(lib.seccomp_syscall_resolve_name(name.encode()))
            if number == _NR_SCMP_ERROR:
                if name in DEFAULT_REMOVE_SET | BOOTSTRAP_RETAIN_SET:
                    continue  # jetpack's own sets name some calls other architectures lack
                raise ValidationError(f"os/linux/seccomp-{plan.mode}-set.set",
                                      f"unknown system call {name!r}")
            result = int(lib.seccomp_rule_add(ctx, listed, number, 0))
            if result != 0:
                raise IsolationError(f"seccomp rule for {name}: {os.strerror(-result)}")
        result = int(lib.seccomp_load(ctx))
        if result != 0:
            raise IsolationError(
                f"loading the seccomp filter failed: {os.strerror(-result)}",
                hint="without no_new_privs the process needs CAP_SYS_ADMIN when it loads")
    finally:
        lib.seccomp_release(ctx)
