"""The tooling is the policy: ruff and mypy (strict, linux and freebsd) pass on the whole tree."""

from __future__ import annotations

import subprocess
import sys

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
