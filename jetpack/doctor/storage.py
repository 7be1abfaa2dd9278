"""Checks for what every configuration needs whichever isolation driver runs: the state root
(root-only, initialized), the storage driver's own needs (the ZFS dataset, overlayfs)."""

from __future__ import annotations

import os
import stat

from jetpack.config import Config
from jetpack.doctor.check import Check, probe


def state_root_checks(config: Config) -> list[Check]:
    root = config.root
    try:
        info = os.stat(root)
    except FileNotFoundError:
        return [Check("missing", f"state root {root} does not exist", ("jetpack init",))]
    except OSError as exc:
        return [Check("missing", f"state root {root}: {exc.strerror}")]
    checks = []
    # DESIGN, Security model: the state root and the database are root-only.
    if info.st_uid != 0:
        checks.append(Check("missing", f"state root {root} is owned by uid {info.st_uid}, not "
                            "root", (f"chown root {root}",)))
    if stat.S_IMODE(info.st_mode) & 0o077:
        checks.append(Check("missing", f"state root {root} is mode "
                            f"{stat.S_IMODE(info.st_mode):04o}: other users reach images, pods "
                            "and the database", (f"chmod 0700 {root}",)))
    if not (root / "jetpack.db").exists():
        checks.append(Check("missing", f"state root {root} has no database", ("jetpack init",)))
    if not checks:
        checks.append(Check("ok", f"state root {root} (root-only, initialized)"))
    return checks


def zfs_checks(config: Config) -> list[Check]:
    """``root.zfs`` exists, is mounted, and is mounted on ``root.path``."""
    dataset, root = config["root.zfs"], config.root
    found = probe(["zfs", "list", "-H", "-o", "mounted,mountpoint", dataset])
    if not found.ok:
        pool = dataset.split("/")[0]
        return [Check("missing", f"ZFS dataset {dataset} (root.zfs): {found.error}",
                      (f"jetpack init   (creates {dataset}; the pool must exist: "
                       f"zpool list {pool})",))]
    mounted, _, mountpoint = found.stdout.strip().partition("\t")
    if mountpoint != str(root):
        return [Check("missing", f"ZFS dataset {dataset} is mounted at {mountpoint}, not "
                      f"root.path {root}", (f"zfs set mountpoint={root} {dataset}",))]
    if mounted != "yes":
        return [Check("missing", f"ZFS dataset {dataset} is not mounted",
                      (f"zfs mount {dataset}",))]
    return [Check("ok", f"ZFS dataset {dataset} mounted on {root}")]


def overlay_checks() -> list[Check]:
    """The dir driver works without overlayfs, copying each app's rootfs (slower, bigger)."""
    from jetpack.storage.dir import overlay_available

    if overlay_available():
        return [Check("ok", "overlayfs (dir storage: apps' rootfs are overlays)")]
    return [Check("warning", "overlayfs is not available: the dir storage copies each app's "
                  "rootfs", ("modprobe overlay",
                             "echo overlay > /etc/modules-load.d/jetpack.conf"))]
