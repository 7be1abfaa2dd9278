"""Pod volumes on the host side: host sources checked as ace.md asks, empty volumes created.

Both isolation drivers use this; mounting them into apps is each driver's own business.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from jetpack.errors import IsolationError
from jetpack.stage1.base import PodVolume


def check_host_volume(volume: PodVolume) -> Path:
    """ace.md: a missing source is an error, and so is a symlink anywhere along its path."""
    source = Path(volume.source)
    if not source.is_absolute():
        raise IsolationError(f"volume {volume.name}: source {volume.source!r} is not absolute")
    current = Path("/")
    for part in source.parts[1:]:
        current = current / part
        if current.is_symlink():
            raise IsolationError(f"volume {volume.name}: {current} is a symbolic link",
                                 hint="name the real path as the volume's source")
    if not source.exists():
        raise IsolationError(f"volume {volume.name}: source {source} does not exist")
    return source


def prepare_empty_volume(volumes_dir: Path, volume: PodVolume) -> Path:
    """The pod's directory for an empty volume, kept across restarts of the pod.

    Its owner and mode are set through a descriptor opened without following a symlink: the
    pod writes in there, and whatever it left must not redirect a chown or chmod on restart."""
    path = volumes_dir / volume.name
    volumes_dir.mkdir(parents=True, exist_ok=True)
    parent = os.open(volumes_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(volume.name, 0o700, dir_fd=parent)
        try:
            fd = os.open(volume.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
                raise
            raise IsolationError(f"volume {volume.name}: {path} is not a directory (a symbolic "
                                 "link or a file)", hint="remove it; jetpack makes it anew") \
                from None
    finally:
        os.close(parent)
    try:
        os.fchown(fd, volume.uid, volume.gid)
        os.fchmod(fd, volume.mode)  # chmod after chown: chown clears set-id bits
    finally:
        os.close(fd)
    return path
