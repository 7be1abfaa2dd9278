"""Capabilities and no_new_privs applied for real in child processes that then exec."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jetpack.errors import ValidationError
from jetpack.stage1 import capabilities
from jetpack.stage1.capabilities import DEFAULT_CAPABILITIES, capability_set

from conftest import REPO

pytestmark = pytest.mark.usefixtures("root")
# The system's python: a non-root user may not be able to reach the test venv's.
PROBE = "/usr/bin/python3"

RAW_SOCKET = """
import socket, sys
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
except PermissionError:
    print("denied")
else:
    print("opened")
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
              if ":\\t" in l)
print(status["CapBnd"].strip(), status["CapEff"].strip(), status["NoNewPrivs"].strip())
"""


def run_child(setup: str) -> tuple[str, frozenset[str], frozenset[str], str]:
    """Run ``setup`` in a fresh python, which then execs a second one probing a raw socket."""
    code = (f"import os, sys\nfrom jetpack.stage1 import capabilities\n{setup}\n"
            f"os.execv({PROBE!r}, [{PROBE!r}, '-c', {RAW_SOCKET!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    verdict, masks = proc.stdout.splitlines()
    bounding, effective, nnp = masks.split()
    return (verdict, capabilities.names_of(int(bounding, 16)),
            capabilities.names_of(int(effective, 16)), nnp)


def test_the_default_set_is_appc_s_fourteen_with_net_raw() -> None:
    assert len(DEFAULT_CAPABILITIES) == 14
    assert "CAP_NET_RAW" in DEFAULT_CAPABILITIES
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    assert capability_set() == DEFAULT_CAPABILITIES


def test_retain_and_remove_sets() -> None:
    assert capability_set(remove=["CAP_SYS_CHROOT", "CAP_MKNOD"]) == \
        DEFAULT_CAPABILITIES - {"CAP_SYS_CHROOT", "CAP_MKNOD"}
    # Removing one that is not in the default set has no effect (ace.md).
    assert capability_set(remove=["CAP_SYS_ADMIN"]) == DEFAULT_CAPABILITIES
    assert capability_set(retain=["CAP_NET_ADMIN", "net_bind_service"]) == \
        {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    with pytest.raises(ValidationError, match="cannot be combined"):
        capability_set(retain=["CAP_KILL"], remove=["CAP_KILL"])
    with pytest.raises(ValidationError, match="CAP_FLY"):
        capability_set(remove=["CAP_FLY"])


def test_the_default_set_lets_root_open_a_raw_socket() -> None:
    verdict, bounding, effective, nnp = run_child(
        "capabilities.apply_capabilities(capabilities.DEFAULT_CAPABILITIES)")
    assert verdict == "opened"
    assert bounding == DEFAULT_CAPABILITIES
    assert effective == DEFAULT_CAPABILITIES
    assert nnp == "0"


def test_without_net_raw_root_cannot_open_a_raw_socket_even_after_exec() -> None:
    verdict, bounding, effective, _ = run_child(
        "capabilities.apply_capabilities(capabilities.capability_set(remove=['CAP_NET_RAW']))")
    assert verdict == "denied"
    assert "CAP_NET_RAW" not in bounding | effective
    assert "CAP_SYS_ADMIN" not in bounding


def test_a_non_root_app_keeps_only_its_ambient_set() -> None:
    become_user = ("capabilities.keep_capabilities()\nos.setgroups([])\nos.setgid(1000)\n"
                   "os.setuid(1000)\n")
    # the default: the bounding set stays (for setuid-root binaries), nothing is held
    verdict, bounding, effective, _ = run_child(
        become_user + "capabilities.apply_capabilities(capabilities.DEFAULT_CAPABILITIES)")
    assert verdict == "denied"
    assert effective == frozenset()
    assert bounding == DEFAULT_CAPABILITIES
    # a retain-set's capabilities survive the exec as ambient ones
    verdict, _, effective, _ = run_child(
        become_user + "capabilities.apply_capabilities(['CAP_NET_RAW'], ambient=['CAP_NET_RAW'])")
    assert verdict == "opened"
    assert effective == {"CAP_NET_RAW"}
    verdict, _, effective, _ = run_child(
        become_user + "capabilities.apply_capabilities(['CAP_CHOWN'], ambient=['CAP_CHOWN'])")
    assert verdict == "denied"
    assert effective == {"CAP_CHOWN"}


def test_no_new_privileges_shows_in_proc_status() -> None:
    _, _, _, nnp = run_child("capabilities.no_new_privileges()")
    assert nnp == "1"
