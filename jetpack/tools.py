"""The host tools jetpack drives (gpg, zfs, ip, nft, pfctl, ...) and how to install each.

A missing tool is one plain error naming it and the package that brings it on FreeBSD and on
Debian, raised where a command first needs the tool, never a traceback.
"""

from __future__ import annotations

import shutil

from jetpack.errors import JetpackError

# tool -> (FreeBSD package or None when it is in the base system, Debian package)
PACKAGES: dict[str, tuple[str | None, str]] = {
    "gpg": ("gnupg", "gnupg"),
    "zfs": (None, "zfs-fuse or zfsutils-linux"),
    "zpool": (None, "zfs-fuse or zfsutils-linux"),
    "ip": (None, "iproute2"),
    "nft": (None, "nftables"),
    "nsenter": (None, "util-linux"),
    "pfctl": (None, "(none: pf is FreeBSD's)"),
    "ifconfig": (None, "net-tools"),
    "rctl": (None, "(none: rctl is FreeBSD's)"),
    "jail": (None, "(none: jails are FreeBSD's)"),
    "jexec": (None, "(none: jails are FreeBSD's)"),
}


def install_hint(tool: str) -> str:
    """How to get ``tool``: ``pkg install gnupg`` / ``apt install gnupg``, or the base system."""
    freebsd, debian = PACKAGES.get(tool, (tool, tool))
    on_freebsd = f"pkg install {freebsd}" if freebsd else "it is part of FreeBSD's base system"
    on_debian = f"apt install {debian}" if not debian.startswith("(") else debian
    return f"install it: {on_freebsd} (FreeBSD), {on_debian} (Debian)"


def missing_tool(tool: str, error: type[JetpackError] = JetpackError,
                 purpose: str | None = None) -> JetpackError:
    """The error for a tool that is not on PATH."""
    needed = f" (needed {purpose})" if purpose else ""
    return error(f"{tool}: command not found{needed}", hint=install_hint(tool))


def require_tool(tool: str, error: type[JetpackError] = JetpackError,
                 purpose: str | None = None) -> str:
    """The path of ``tool`` on PATH; raise ``missing_tool`` when there is none."""
    found = shutil.which(tool)
    if found is None:
        raise missing_tool(tool, error, purpose)
    return found
