"""Facts about the host that pick platform defaults: appc os/arch names and the platform kind.

The one place that asks ``sys.platform``: everything platform-specific is chosen from here.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the CLI's start-up)
if TYPE_CHECKING:
    from typing import Literal

    PlatformKind = Literal["freebsd", "linux"]
else:
    def __getattr__(name: str) -> object:
        """``PlatformKind`` made when a module imports it at run time."""
        if name == "PlatformKind":
            from typing import Literal

            return Literal["freebsd", "linux"]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# appc's arch names (spec/aci.md, "os/arch" table) for what platform.machine() reports.
_ARCH_NAMES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "i386",
    "i686": "i386",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7l": "armv7l",
    "armv6l": "armv6l",
    "ppc64": "ppc64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def platform_kind() -> PlatformKind:
    """``freebsd`` on FreeBSD, ``linux`` everywhere else we run."""
    return "freebsd" if sys.platform.startswith("freebsd") else "linux"


def appc_os() -> str:
    """The host's ``os`` label value as appc spells it."""
    return platform_kind()


def appc_arch() -> str:
    """The host's ``arch`` label value as appc spells it."""
    import platform  # here: the CLI's start-up needs only platform_kind()

    machine = platform.machine().lower()
    return _ARCH_NAMES.get(machine, machine)
