"""One host check's result, and the small probes every platform's checks share: is a tool on
PATH, what does a command print. A probe never raises: a failure is what it reports."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from jetpack.hostinfo import PlatformKind
from jetpack.tools import PACKAGES

Status = Literal["ok", "missing", "warning"]
# A probe that hangs (a wedged zfs-fuse, an NFS state root) must not hang the check.
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Check:
    """``missing``: something a configured driver needs; ``fix`` holds the commands or config
    lines that provide it, one per entry. ``warning``: works, but worse than it could."""

    status: Status
    what: str
    fix: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {"status": self.status, "what": self.what, "fix": list(self.fix)}


@dataclass(frozen=True)
class Probe:
    """What a command did: its exit status and output (returncode 127: it could not run)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> str:
        """The command's complaint, on one line."""
        return " ".join(self.stderr.split()) or f"exit status {self.returncode}"


def probe(argv: Sequence[str]) -> Probe:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                              timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Probe(124, "", f"{argv[0]}: no answer within {PROBE_TIMEOUT:.0f}s")
    except OSError as exc:
        return Probe(127, "", f"{argv[0]}: {exc.strerror}")
    return Probe(done.returncode, done.stdout, done.stderr)


def install_command(tool: str, platform: PlatformKind) -> str:
    """The one command that brings ``tool`` on ``platform`` (tools.PACKAGES)."""
    freebsd, debian = PACKAGES.get(tool, (tool, tool))
    if platform == "linux":
        return f"apt install {debian.split()[-1]}" if not debian.startswith("(") else debian
    if freebsd is None:
        return f"{tool} is part of FreeBSD's base system: restore it (freebsd-update fetch install)"
    return f"pkg install {freebsd}"


def tool_checks(tools: Sequence[tuple[str, str]], platform: PlatformKind) -> list[Check]:
    """One check per (tool, what it is needed for): present on PATH, or how to install it."""
    checks = []
    for tool, purpose in tools:
        found = shutil.which(tool)
        if found is not None:
            checks.append(Check("ok", f"{tool} ({found})"))
        else:
            checks.append(Check("missing", f"{tool}: command not found (needed {purpose})",
                                (install_command(tool, platform),)))
    return checks
