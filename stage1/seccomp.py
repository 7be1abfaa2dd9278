"""Seccomp filters for apps: appc's ``os/linux/seccomp-retain-set`` / ``-remove-set`` isolators
as a plan (``SeccompFilter``), compiled to a BPF program by libseccomp (ctypes) once per plan and
process (``compile_filter``: before the fork, before pivot_root), and loaded by one prctl in the
child just before exec (``load_filter``).

Order in the child (see ``apply_seccomp``): setuid → apply_capabilities → no_new_privileges if
asked → load_filter → exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_codes
import functools
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from jetpack.errors import IsolationError, ValidationError
from jetpack.hostinfo import platform_kind

ALL = "@appc.io/all"
EMPTY = "@appc.io/empty"

# Implementation-specific sets the spec allows (ace.md, seccomp notes 2-3). Blocked for every
# app, after Docker's default profile (moby profiles/seccomp/default.json) for a process without
# CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_TIME, CAP_SYS_MODULE, CAP_SYS_NICE, CAP_SYSLOG and the
# rest of what appc's default set lacks: calls that act on the whole host rather than the pod,
# make new namespaces (user namespaces above all), or expose large kernel attack surface
# (keyrings, io_uring, bpf, perf). ptrace stays allowed, as in Docker on kernels >= 4.8.
DEFAULT_REMOVE_SET: frozenset[str] = frozenset({
    # modules, kexec, reboot, swap, accounting, quotas
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "query_module", "get_kernel_syms", "reboot", "swapon", "swapoff", "acct",
    "quotactl", "quotactl_fd", "nfsservctl",
    # the host's clock and log
    "settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex", "syslog",
    # mounts and namespaces: a pod's root must not rebuild its view of the host
    "mount", "umount", "umount2", "pivot_root", "mount_setattr", "open_tree", "move_mount",
    "fsopen", "fsconfig", "fsmount", "fspick", "unshare", "setns",
    # kernel keyrings, io_uring, bpf, perf, userfaultfd, handles, cross-process comparison
    "keyctl", "add_key", "request_key", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at",
    "name_to_handle_at", "lookup_dcookie", "fanotify_init", "kcmp",
    # NUMA policy (Docker: CAP_SYS_NICE), obsolete or raw-hardware calls
    "mbind", "move_pages", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node",
    "vm86", "vm86old", "uselib", "ustat", "sysfs", "_sysctl", "iopl", "ioperm", "vhangup",
})
BOOTSTRAP_RETAIN_SET: frozenset[str] = frozenset({
    "execve", "exit", "exit_group", "rt_sigreturn",
})
# clone(2) flags that make namespaces (Docker's mask 0x7E020000); their clone is blocked, any
# other clone (fork, threads) runs. clone3 passes its flags in memory, out of seccomp's reach:
# it fails with ENOSYS so that libc falls back to clone, as under Docker.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000)
# personality(2) values Docker allows: Linux, PER_LINUX32 (0x8), UNAME26 (0x20000), both, and
# the 0xffffffff query; never ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC and the like.
ALLOWED_PERSONALITY_BITS = (0x8, 0x20000)

_SCMP_ACT_KILL_PROCESS = 0x80000000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_FLTATR_CTL_NNP = 3
_SCMP_CMP_MASKED_EQ = 7
_NR_SCMP_ERROR = -1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_BPF_INSTRUCTION_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k


class _SockFprog(ctypes.Structure):
    """The kernel's ``struct sock_fprog``: a BPF program's length and its instructions."""

    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


class _ArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``."""

    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64))


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
    import ctypes.util  # here: prepare (in the CLI) imports this module, never loads the library

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
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def syscall_number(name: str) -> int | None:
    """The native number of syscall ``name`` per libseccomp; None when it does not know it."""
    number = int(_libseccomp().seccomp_syscall_resolve_name(name.encode()))
    return None if number == _NR_SCMP_ERROR else number


class CompiledFilter:
    """A plan's BPF program, ready for ``load_filter``: built (and its ``sock_fprog`` laid out)
    before the fork, so that the child makes one prctl and allocates nothing."""

    def __init__(self, program: bytes) -> None:
        self.program = program
        self._buffer = ctypes.create_string_buffer(program, len(program))
        self._fprog = _SockFprog(len(program) // _BPF_INSTRUCTION_SIZE,
                                 ctypes.cast(self._buffer, ctypes.c_void_p))
        self._prctl = _libc().prctl
        self._prctl.restype = ctypes.c_int
        self._prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                                ctypes.c_ulong]

    def load(self, *, no_new_privs: bool) -> None:
        """Install the program in this process (and what it execs): what libseccomp's
        seccomp_load does with this program (no filter flags; no_new_privs first when asked).
        Without ``no_new_privs`` the kernel requires CAP_SYS_ADMIN in the effective set."""
        if no_new_privs and self._prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
            raise IsolationError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if self._prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog),
                       0, 0) != 0:
            raise IsolationError(
                f"loading the seccomp filter failed: {os.strerror(ctypes.get_errno())}",
                hint="without no_new_privs the process needs CAP_SYS_ADMIN when it loads")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def compile_filter(plan: SeccompFilter) -> CompiledFilter:
    """``plan`` as a BPF program (libseccomp's, for this architecture), built once per process:
    the fork server builds the default plan's before it forks any helper.

    Syscall names libseccomp does not know on this architecture are an error.
    """
    lib = _libseccomp()
    with filter_context(plan) as ctx:
        return CompiledFilter(_export_bpf(lib, ctx))


@contextlib.contextmanager
def filter_context(plan: SeccompFilter) -> Iterator[int]:
    """A libseccomp filter context holding ``plan``'s rules, released at the end."""
    lib = _libseccomp()
    blocked = (_SCMP_ACT_KILL_PROCESS if plan.errno is None
               else _SCMP_ACT_ERRNO | (plan.errno_number() or 0) & 0xFFFF)
    default, listed = ((blocked, _SCMP_ACT_ALLOW) if plan.mode == "retain"
                       else (_SCMP_ACT_ALLOW, blocked))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise IsolationError("seccomp_init failed")
    try:
        # Not part of the program: CompiledFilter.load sets no_new_privs itself when asked.
        if lib.seccomp_attr_set(ctx, _SCMP_FLTATR_CTL_NNP, 0) != 0:
            raise IsolationError("seccomp_attr_set(CTL_NNP) failed")
        # A remove plan stored by an older jetpack still gets today's default set.
        names = plan.syscalls | DEFAULT_REMOVE_SET if plan.mode == "remove" else plan.syscalls
        for name in sorted(names):
            number = int(lib.seccomp_syscall_resolve_name(name.encode()))
            if number == _NR_SCMP_ERROR:
                if name in DEFAULT_REMOVE_SET | BOOTSTRAP_RETAIN_SET:
                    continue  # jetpack's own sets name some calls other architectures lack
                raise ValidationError(f"os/linux/seccomp-{plan.mode}-set.set",
                                      f"unknown system call {name!r}")
            _add_rule(lib, ctx, listed, name, number)
        if plan.mode == "remove":
            _add_default_argument_rules(lib, ctx, blocked, names)
        if "clone3" not in names:
            _add_rule(lib, ctx, _SCMP_ACT_ERRNO | errno_codes.ENOSYS, "clone3")
        yield ctx
    finally:
        lib.seccomp_release(ctx)


def _export_bpf(lib: ctypes.CDLL, ctx: int) -> bytes:
    """The program libseccomp's seccomp_load would load for ``ctx`` (both generate it the same
    way, gen_bpf_generate), written into an unnamed temporary file and read back."""
    with tempfile.TemporaryFile() as exported:
        result = int(lib.seccomp_export_bpf(ctx, exported.fileno()))
        if result != 0:
            raise IsolationError(f"seccomp_export_bpf: {os.strerror(-result)}")
        exported.seek(0)
        program = exported.read()
    if not program or len(program) % _BPF_INSTRUCTION_SIZE:
        raise IsolationError(f"seccomp_export_bpf gave {len(program)} bytes, not a program")
    return program


def apply_seccomp(plan: SeccompFilter, *, no_new_privs: bool = False) -> None:
    """Load ``plan`` into this process (and what it execs): the last step before exec.

    Without ``no_new_privs`` the kernel requires CAP_SYS_ADMIN in the effective set when the
    filter is loaded: call ``apply_capabilities(names, keep_sys_admin_until_exec=True)`` first.
    Syscall names libseccomp does not know on this architecture are an error.
    """
    compile_filter(plan).load(no_new_privs=no_new_privs)


def _add_rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, number: int | None = None,
              *comparisons: tuple[int, int, int, int]) -> None:
    """One rule: ``action`` for ``name`` when every comparison (arg, op, a, b) holds."""
    if number is None:
        number = int(lib.seccomp_syscall_resolve_name(name.encode()))
        if number == _NR_SCMP_ERROR:
            return  # not a call of this architecture
    array = (_ArgCmp * max(len(comparisons), 1))(*(_ArgCmp(*c) for c in comparisons))
    result = int(lib.seccomp_rule_add_array(ctx, action, number, len(comparisons), array))
    if result != 0:
        raise IsolationError(f"seccomp rule for {name}: {os.strerror(-result)}")


def _add_default_argument_rules(lib: ctypes.CDLL, ctx: int, blocked: int,
                                names: frozenset[str]) -> None:
    """The default set's argument filters, for calls a remove-set does not block whole."""
    if "clone" not in names:
        # x86-64, arm64 and the rest but s390 pass clone's flags first. One rule per flag:
        # rules are alternatives, the comparisons within one rule all must hold.
        for flag in CLONE_NAMESPACE_FLAGS:
            _add_rule(lib, ctx, blocked, "clone", None, (0, _SCMP_CMP_MASKED_EQ, flag, flag))
    if "personality" not in names:
        # Anything but ALLOWED_PERSONALITIES, from single-bit tests (libseccomp allows one
        # comparison per argument in a rule): a flag other than PER_LINUX32 and UNAME26 with
        # bit 31 clear, or bit 31 set with any other bit clear (so not the 0xffffffff query).
        top = 1 << 31
        for bit in (1 << n for n in range(31)):
            if bit not in ALLOWED_PERSONALITY_BITS:
                _add_rule(lib, ctx, blocked, "personality", None,
                          (0, _SCMP_CMP_MASKED_EQ, bit | top, bit))
            _add_rule(lib, ctx, blocked, "personality", None,
                      (0, _SCMP_CMP_MASKED_EQ, bit | top, top))
