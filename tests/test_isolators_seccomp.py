"""Seccomp isolators: plans from appc's sets and wildcards, and filters loaded for real."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jetpack.errors import ValidationError
from jetpack.stage1 import seccomp
from jetpack.stage1.seccomp import DEFAULT_REMOVE_SET, SeccompFilter, seccomp_filter

from conftest import REPO

STATUS = ("s = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() "
          "if ':\\t' in l); print(s['Seccomp'].strip(), s['NoNewPrivs'].strip())")


def run_filtered(setup: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """A fresh python runs ``setup`` (capabilities, seccomp), then execs ``argv``."""
    code = ("import os\nfrom jetpack.stage1 import capabilities, seccomp\n"
            f"{setup}\nos.execv({argv[0]!r}, {argv!r})\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=30)


def test_plans_follow_the_spec() -> None:
    assert seccomp_filter(retain=["read", seccomp.ALL]) is None
    remove = seccomp_filter(remove=["mkdir"], errno="EPERM")
    assert remove == SeccompFilter("remove", frozenset({"mkdir"}) | DEFAULT_REMOVE_SET, "EPERM")
    assert seccomp_filter(remove=[seccomp.EMPTY, "mkdir"]) == \
        SeccompFilter("remove", DEFAULT_REMOVE_SET, None)
    retain = seccomp_filter(retain=["read", "write"])
    assert retain is not None
    assert retain.mode == "retain"
    assert {"read", "write", "execve", "exit_group"} <= retain.syscalls
    assert retain.errno is None
    # No seccomp isolator: jetpack's own set, failing with EPERM.
    assert seccomp_filter() == SeccompFilter("remove", DEFAULT_REMOVE_SET, "EPERM")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"retain": ["read"], "remove": ["write"]}, "cannot be combined"),
    ({"retain": []}, "must not be empty"),
    ({"remove": ["@rkt/default"]}, "unknown wildcard"),
    ({"remove": ["mkdir"], "errno": "EWHATEVER"}, "unknown errno"),
    ({"remove": ["mkdir"], "errno": "eperm"}, "unknown errno"),
])
def test_bad_isolators_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        seccomp_filter(**kwargs)  # type: ignore[arg-type]  # deliberately ill-typed inputs


def test_syscall_names_resolve() -> None:
    assert seccomp.syscall_number("mkdir") is not None
    assert seccomp.syscall_number("no_such_call") is None


@pytest.mark.usefixtures("root")
def test_a_remove_set_with_eperm_makes_mkdir_fail(tmp_path: Path) -> None:
    target = tmp_path / "made"
    setup = ("capabilities.apply_capabilities(capabilities.DEFAULT_CAPABILITIES, "
             "keep_sys_admin_until_exec=True)\n"
             "seccomp.apply_seccomp(seccomp.seccomp_filter(remove=['mkdir', 'mkdirat'], "
             "errno='EPERM'))")
    blocked = run_filtered(setup, ["/bin/busybox", "mkdir", str(target)])
    assert blocked.returncode == 1
    assert "Operation not permitted" in blocked.stderr
    assert not target.exists()
    # Everything else still works, and no_new_privs was not forced on the app.
    probe = run_filtered(setup, ["/usr/bin/python3", "-c", STATUS])
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["2", "0"]
    unfiltered = run_filtered("", ["/bin/busybox", "mkdir", str(target)])
    assert unfiltered.returncode == 0
    assert target.is_dir()


@pytest.mark.usefixtures("root")
def test_without_errno_a_blocked_call_kills_with_sigsys(tmp_path: Path) -> None:
    setup = ("capabilities.no_new_privileges()\n"
             "seccomp.apply_seccomp(seccomp.seccomp_filter(remove=['mkdir', 'mkdirat']), "
             "no_new_privs=True)")
    killed = run_filtered(setup, ["/bin/busybox", "mkdir", str(tmp_path / "x")])
    assert killed.returncode == -signal.SIGSYS
    assert not (tmp_path / "x").exists()


@pytest.mark.usefixtures("root")
def test_a_retain_set_blocks_everything_else() -> None:
    setup = ("seccomp.apply_seccomp(seccomp.seccomp_filter(retain=['write']), "
             "no_new_privs=True)")
    killed = run_filtered(setup, ["/bin/busybox", "echo", "hi"])
    assert killed.returncode == -signal.SIGSYS
    opted_out = seccomp_filter(retain=[seccomp.ALL])
    assert opted_out is None


@pytest.mark.usefixtures("root")
def test_an_unknown_syscall_is_named() -> None:
    setup = ("seccomp.apply_seccomp(seccomp.seccomp_filter(remove=['frobnicate']), "
             "no_new_privs=True)")
    failed = run_filtered(setup, ["/bin/true"])
    assert failed.returncode == 1
    assert "unknown system call 'frobnicate'" in failed.stderr


# Loads ``plan`` in a forked child either way (PLAN and HOW from argv), reads the program back
# from the kernel (PTRACE_SECCOMP_GET_FILTER) and prints it in hex.
LOADED_PROGRAM = """
import ctypes, os, sys, time
from jetpack.stage1 import seccomp
mode, errno, how, *names = sys.argv[1:]
plan = seccomp.SeccompFilter(mode, frozenset(names), None if errno == "-" else errno)
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
compiled = seccomp.compile_filter(plan)
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL should the test end first
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)  # nor hold the test's pipes
    if how == "libseccomp":  # what jetpack did before: libseccomp's own seccomp_load
        with seccomp.filter_context(plan) as ctx:
            lib = seccomp._libseccomp()
            assert lib.seccomp_attr_set(ctx, 3, 1) == 0 and lib.seccomp_load(ctx) == 0
    else:
        compiled.load(no_new_privs=True)
    os.write(write_end, b"x")
    time.sleep(60)
    os._exit(0)
os.close(write_end)
assert os.read(read_end, 1) == b"x"
assert libc.ptrace(16, pid, None, None) == 0, ctypes.get_errno()  # PTRACE_ATTACH
os.waitpid(pid, 0)
count = libc.ptrace(0x420c, pid, None, None)  # PTRACE_SECCOMP_GET_FILTER
buffer = ctypes.create_string_buffer(8 * count)
assert libc.ptrace(0x420c, pid, None, buffer) == count
os.kill(pid, 9)
os.waitpid(pid, 0)
print(buffer.raw.hex())
"""


@pytest.mark.usefixtures("root")
@pytest.mark.parametrize("plan", [
    seccomp_filter(),
    seccomp_filter(remove=["mkdir", "mkdirat"], errno="EXDEV"),
    seccomp_filter(remove=["mkdir"]),
    seccomp_filter(retain=["read", "write", "clock_nanosleep", "nanosleep", "getpid"],
                   errno="EPERM"),
], ids=["default", "remove-errno", "remove-kill", "retain-errno"])
def test_the_precompiled_program_is_the_one_libseccomp_loads(plan: SeccompFilter) -> None:
    """jetpack compiles a plan once and loads it with one prctl in the child: the kernel must
    hold exactly the program libseccomp's own seccomp_load installs, instruction for
    instruction."""
    def loaded(how: str) -> str:
        args = [plan.mode, plan.errno or "-", how, *sorted(plan.syscalls)]
        done = subprocess.run([sys.executable, "-c", LOADED_PROGRAM, *args], capture_output=True,
                              text=True, env={"PYTHONPATH": str(REPO)}, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    ours = loaded("jetpack")
    assert ours == loaded("libseccomp")
    assert len(ours) > 16  # a real program, not an empty read-back
