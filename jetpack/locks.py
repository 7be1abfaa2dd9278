"""Advisory file locks shared between jetpack's processes (flock(2) on a lock file)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: str | Path, *, exclusive: bool) -> Iterator[None]:
    """Hold an flock on ``path`` (created 0600 if missing), shared or ``exclusive``, for the
    block; the lock goes with the descriptor when the block ends, or with the process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
