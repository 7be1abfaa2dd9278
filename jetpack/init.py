"""``jetpack init``: create the state root, storage, database and keys; clean leftovers.

Idempotent: a second run changes nothing that the first made.
"""

from __future__ import annotations

from jetpack.config import Config
from jetpack.errors import StateError
from jetpack.keys import ensure_keys
from jetpack.state import StateDB
from jetpack.storage import open_storage


def initialize(config: Config) -> list[str]:
    """Set up everything under ``root.path``; returns human-readable lines of what was done."""
    root = config.root
    done = []
    storage = open_storage(config)
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateError(f"cannot create state root {root}: {exc.strerror}") from None
    storage.init()
    try:
        # the storage may have mounted a dataset here (0755): no host user reaches image or
        # pod trees, nor the database, through the root; apps see only their own rootfs
        root.chmod(0o700)
    except OSError as exc:
        raise StateError(f"cannot restrict state root {root}: {exc.strerror}") from None
    # what an interrupted import (Ctrl-C, kill -9) left in the tmp area
    done += [f"removed leftover {path}" for path in storage.cleanup_leftovers()]
    fresh = not (root / "jetpack.db").exists()
    StateDB.for_root(root, create=True).close()
    if fresh:
        done.append(f"created state database {root / 'jetpack.db'}")
    done += [f"generated {path}" for path in ensure_keys(config)]
    done.append(f"jetpack state root {root} ready ({storage.name} storage)")
    return done
