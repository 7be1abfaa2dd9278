"""The devices a pod may use (Linux): the nodes of the /dev jetpack builds, the allow-list that
covers them, and the cgroup v2 form of that list (an eBPF program, cgroup v1 takes it as text).

A device node made in a pod (CAP_MKNOD stays, as in appc and Docker) or shipped in an image
opens nothing outside this list. Standard library only: linux_init imports it.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jetpack.errors import IsolationError
from jetpack.stage1 import linux_sys as sysc

# (name, major, minor): the minimal /dev of ace.md and the OCI runtime spec.
POD_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
               ("urandom", 1, 9), ("tty", 5, 0))


@dataclass(frozen=True)
class DeviceRule:
    """One allowed (kind, major, minor) and the access it grants; None is any number."""

    kind: Literal["c", "b"]
    major: int | None
    minor: int | None
    access: str  # a subset of "rwm": read, write, mknod

    def v1_line(self) -> str:
        """The rule as cgroup v1's ``devices.allow`` takes it (``c 1:3 rwm``)."""
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor} {self.access}"


# runc's AllowedDevices (libcontainer/specconv/spec_linux.go) without /dev/net/tun: mknod of any
# node (so CAP_MKNOD keeps its meaning), and open only of the nodes every /dev holds, the pty
# multiplexer and the pty slaves of the pod's own devpts.
ALLOWED_DEVICES = (
    DeviceRule("c", None, None, "m"),
    DeviceRule("b", None, None, "m"),
    *(DeviceRule("c", major, minor, "rwm") for _, major, minor in POD_DEVICES),
    DeviceRule("c", 5, 2, "rwm"),  # /dev/ptmx
    DeviceRule("c", 136, None, "rwm"),  # /dev/pts/*
)


# --- cgroup v2: BPF_PROG_TYPE_CGROUP_DEVICE --------------------------------------------------

# include/uapi/linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4

# Instruction opcodes (class | size/op | source) used by the filter.
_LDX_MEM_W = 0x61  # dst = *(u32 *)(src + off)
_ALU32_AND_K = 0x54  # dst &= imm
_ALU32_RSH_K = 0x74  # dst >>= imm
_ALU32_MOV_K = 0xB4  # dst = imm
_ALU32_MOV_X = 0xBC  # dst = src
_JMP_JNE_K = 0x55  # if dst != imm: pc += off
_JMP_JNE_X = 0x5D  # if dst != src: pc += off
_JMP_EXIT = 0x95

_ACCESS_BITS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    # struct bpf_insn: u8 code, u8 dst_reg:4 src_reg:4 (little-endian bitfields), s16, s32.
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def device_filter_program(rules: Sequence[DeviceRule] = ALLOWED_DEVICES) -> bytes:
    """The eBPF program allowing exactly ``rules``: 1 (allow) when a rule covers the request,
    else 0. Its context is ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}``
    with ``access_type = access << 16 | type``."""
    # r2 = type, r3 = access, r4 = major, r5 = minor; r1 (the context) is scratch afterwards.
    program = [
        _insn(_LDX_MEM_W, dst=2, src=1, off=0), _insn(_ALU32_AND_K, dst=2, imm=0xFFFF),
        _insn(_LDX_MEM_W, dst=3, src=1, off=0), _insn(_ALU32_RSH_K, dst=3, imm=16),
        _insn(_LDX_MEM_W, dst=4, src=1, off=4),
        _insn(_LDX_MEM_W, dst=5, src=1, off=8),
    ]
    for rule in rules:
        # A jump (code, dst, src, imm) leaves for the next rule on a mismatch: its offset, known
        # once the block is complete, counts from the jump to the end of this rule's block.
        kind = BPF_DEVCG_DEV_CHAR if rule.kind == "c" else BPF_DEVCG_DEV_BLOCK
        block: list[bytes | tuple[int, int, int, int]] = [(_JMP_JNE_K, 2, 0, kind)]
        access = 0
        for letter in rule.access:
            access |= _ACCESS_BITS[letter]
        if access != _ALL_ACCESS:
            # Every access asked for must be granted: (asked & granted) == asked.
            block += [_insn(_ALU32_MOV_X, dst=1, src=3), _insn(_ALU32_AND_K, dst=1, imm=access),
                      (_JMP_JNE_X, 1, 3, 0)]
        if rule.major is not None:
            block.append((_JMP_JNE_K, 4, 0, rule.major))
        if rule.minor is not None:
            block.append((_JMP_JNE_K, 5, 0, rule.minor))
        block += [_insn(_ALU32_MOV_K, dst=0, imm=1), _insn(_JMP_EXIT)]
        for index, item in enumerate(block):
            if isinstance(item, tuple):
                code, dst, src, imm = item
                program.append(_insn(code, dst=dst, src=src, off=len(block) - index - 1,
                                     imm=imm))
            else:
                program.append(item)
    program += [_insn(_ALU32_MOV_K, dst=0, imm=0), _insn(_JMP_EXIT)]
    return b"".join(program)


def _attr(size: int, *fields: tuple[str, int, int]) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(size)
    for fmt, offset, value in fields:
        struct.pack_into(fmt, attr, offset, value)
    return attr


def load_device_filter(rules: Sequence[DeviceRule] = ALLOWED_DEVICES) -> int:
    """Load the filter for ``rules`` into the kernel; the program's fd (the caller closes it)."""
    code = device_filter_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    log = ctypes.create_string_buffer(65536)
    # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf.
    attr = _attr(128, ("<I", 0, BPF_PROG_TYPE_CGROUP_DEVICE), ("<I", 4, len(code) // 8),
                 ("<Q", 8, ctypes.addressof(insns)), ("<Q", 16, ctypes.addressof(license_)),
                 ("<I", 24, 1), ("<I", 28, len(log)), ("<Q", 32, ctypes.addressof(log)))
    try:
        return sysc.bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        verifier = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise IsolationError(
            f"cannot load the device filter: {exc.strerror}"
            + (f" (verifier: {' / '.join(verifier)})" if verifier else ""),
            hint="the kernel needs CONFIG_CGROUP_BPF and CONFIG_BPF_SYSCALL") from None


def attach_device_filter(cgroup_dir: Path, rules: Sequence[DeviceRule] = ALLOWED_DEVICES
                         ) -> None:
    """Attach the filter for ``rules`` to a cgroup v2 directory, replacing one attached before
    (no BPF_F_ALLOW_MULTI: one program, and nothing below may override it)."""
    program = load_device_filter(rules)
    try:
        cgroup = os.open(cgroup_dir, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        os.close(program)
        raise IsolationError(f"cannot open cgroup {cgroup_dir}: {exc.strerror}") from None
    try:
        # union bpf_attr for BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, flags.
        sysc.bpf(BPF_PROG_ATTACH, _attr(32, ("<I", 0, cgroup), ("<I", 4, program),
                                        ("<I", 8, BPF_CGROUP_DEVICE)))
    except OSError as exc:
        raise IsolationError(f"cannot attach the device filter to {cgroup_dir}: "
                             f"{exc.strerror}") from None
    finally:
        # The cgroup holds the program from now on; it goes with the cgroup.
        os.close(cgroup)
        os.close(program)


def attached_device_filters(cgroup_dir: Path) -> int:
    """How many device programs are attached to a cgroup v2 directory itself."""
    cgroup = os.open(cgroup_dir, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        # union bpf_attr for BPF_PROG_QUERY: target_fd, attach_type, query_flags, attach_flags,
        # prog_ids (NULL: count only), prog_cnt.
        attr = _attr(40, ("<I", 0, cgroup), ("<I", 4, BPF_CGROUP_DEVICE))
        sysc.bpf(BPF_PROG_QUERY, attr)
        return int(struct.unpack_from("<I", attr, 24)[0])
    finally:
        os.close(cgroup)
