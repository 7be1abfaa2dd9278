"""The tooling is the policy: ruff and mypy (strict, linux and freebsd) pass on the whole tree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=900
    )


def test_ruff() -> None:
    out = tool("ruff", "check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("platform", ["linux", "freebsd"])
def test_mypy_strict(platform: str) -> None:
    out = tool("mypy", "--strict", "--platform", platform, "--cache-dir",
               f"{REPO}/.mypy_cache/{platform}")
    assert out.returncode == 0, out.stdout + out.stderr


# The product's packages (jetpack/<name> symlinks to these top-level folders are skipped).
PRODUCT = ("jetpack", "supervisor", "stage1", "stage2", "mds", "testing")


def _product_modules() -> list[Path]:
    linked = {p.name for p in (REPO / "jetpack").iterdir() if p.is_symlink()}
    found = []
    for package in PRODUCT:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).parts
            if package == "jetpack" and len(parts) > 1 and parts[1] in linked:
                continue
            found.append(path)
    return found


def test_no_class_name_is_defined_in_two_product_modules() -> None:
    # One vocabulary: two ``ExitStatus`` (or ``AppProcess``, ``Volume``) classes in two
    # modules are two ideas with one name, or one idea written twice.
    where: dict[str, list[str]] = {}
    for path in _product_modules():
        for match in re.finditer(r"^class (\w+)", path.read_text(), re.MULTILINE):
            where.setdefault(match.group(1), []).append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


# Where the platform may be asked, and why; everything else asks the drivers (stage1.drivers,
# the one factory) or their capabilities.
PLATFORM_CHECKS = {
    "jetpack/hostinfo.py": "the one place that reads sys.platform (platform_kind)",
    "jetpack/config.py": "per-platform defaults (storage.driver, isolation.driver, paths)",
    "stage1/isolators.py": "which isolators the host can enforce when a plan is made",
    "stage1/seccomp.py": "refuses to load libseccomp off Linux",
    "stage1/capabilities.py": "refuses prctl(2)/capset(2) off Linux",
    "jetpack/storage/dir.py": "cp(1)'s flags and overlayfs differ per platform",
    "jetpack/storage/mounts.py": "the mount table: /proc/self/mountinfo or mount -p",
    # ``if sys.platform`` guards mypy needs to narrow platform-only calls:
    "stage1/identity.py": "mypy narrowing (pidfd on Linux, ps on FreeBSD)",
    "stage1/proc.py": "mypy narrowing (pidfd vs kqueue watch)",
    "stage2/paths.py": "mypy narrowing (openat2 is Linux-only)",
    "stage1/jail_attach.py": "mypy narrowing (jail_attach(2) through libc on FreeBSD only)",
    # what a stand-in does not model goes to the Linux test host's own tool
    "testing/standins/standin_state.py": "stand-ins pass unmodelled calls to the host",
}


def test_one_place_chooses_the_platform() -> None:
    asking = re.compile(r"\bsys\.platform\b|\bplatform_kind\(")
    found = {str(path.relative_to(REPO)) for path in _product_modules()
             if asking.search(path.read_text())}
    assert found - set(PLATFORM_CHECKS) == set()
    # The isolation driver and its network backend are chosen only by the driver registry.
    registry = re.compile(r"(?<!class )\b(LinuxDriver|JailDriver|LinuxNetwork|FreeBSDNetwork)\(")
    constructing = {str(path.relative_to(REPO)) for path in _product_modules()
                    if registry.search(path.read_text())}
    assert constructing <= {"stage1/drivers.py", "stage1/jail.py"}
