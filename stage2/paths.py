"""Paths inside an app's rootfs, resolved from outside it the way the app will see them.

Symlinks are followed as if the rootfs were ``/`` (chroot semantics), so no resolution escapes it.
"""

from __future__ import annotations

import os
from pathlib import Path

_MAX_SYMLINKS = 40


def resolve_in_root(rootfs: Path, path: str) -> Path:
    """The host path of ``path`` as seen inside ``rootfs``; missing tails are kept as given."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(f"too many levels of symbolic links resolving {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)
