"""Mount-table helpers shared by the storage drivers: what is mounted under a path, and
unmounting it before anything below is removed (never rm -rf through a live mount)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from jetpack.errors import StorageError
from jetpack.hostinfo import platform_kind


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/")
    found: list[Path] = []
    if platform_kind() == "linux":
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            target = _unescape(line.split()[4])
            if target == prefix or target.startswith(prefix + "/"):
                found.append(Path(target))
    else:
        out = subprocess.run(["mount", "-p"], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) > 1 and (parts[1] == prefix or parts[1].startswith(prefix + "/")):
                found.append(Path(parts[1]))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all(path: Path) -> None:
    """Unmount everything at or below ``path``; raise if anything stays mounted."""
    targets = mounts_under(path)
    if not targets:
        return  # the mount table was read once: nothing to unmount, nothing to look for again
    for target in targets:
        if platform_kind() == "linux":
            _unmount_linux(target)
            continue
        proc = subprocess.run(["umount", str(target)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 and target in mounts_under(target):
            subprocess.run(["umount", "-f", str(target)], capture_output=True, check=False)
    left = mounts_under(path)
    if left:
        raise StorageError(f"cannot unmount {', '.join(map(str, left))}")


def _unmount_linux(target: Path) -> None:
    """umount(2), then a lazy detach if it is busy: no umount(8) process per mount (a pod's
    teardown unmounts every app's rootfs)."""
    from jetpack.stage1 import linux_sys  # Linux only

    try:
        linux_sys.umount2(str(target))
    except OSError:
        if target in mounts_under(target):
            with contextlib.suppress(OSError):
                linux_sys.umount2(str(target), linux_sys.MNT_DETACH)


def is_mountpoint(path: Path) -> bool:
    return os.path.ismount(path)
