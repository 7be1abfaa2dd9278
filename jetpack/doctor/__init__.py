"""``jetpack doctor``: what the configured drivers need from this host, each missing piece with
the command or config line that fixes it.

The checks live per platform (``jail``: FreeBSD, ``linux``) and per storage (``storage``); this
is the one place that picks them from ``isolation.driver`` and ``storage.driver``.
"""

from __future__ import annotations

from jetpack.config import Config
from jetpack.doctor.check import Check
from jetpack.hostinfo import PlatformKind

__all__ = ["Check", "host_checks"]


def host_checks(config: Config) -> list[Check]:
    from jetpack.doctor import storage

    checks = []
    driver = config["isolation.driver"]
    if driver == "jail":
        from jetpack.doctor.jail import jail_checks

        checks += jail_checks(config)
    elif driver == "linux":
        from jetpack.doctor.linux import linux_checks

        checks += linux_checks()
    if config["storage.driver"] == "zfs":
        from jetpack.doctor.check import tool_checks

        platform: PlatformKind = "freebsd" if driver == "jail" else "linux"
        zfs_tool = tool_checks((("zfs", "for root.zfs"),), platform)
        checks += zfs_tool
        if zfs_tool[0].status == "ok":
            checks += storage.zfs_checks(config)
    elif driver == "linux":
        checks += storage.overlay_checks()
    checks += storage.state_root_checks(config)
    return checks
