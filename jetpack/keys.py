"""The metadata service's secret keys: from the configuration, else generated into the state root.

``mds.signing-key`` signs ``pod/hmac/sign`` content; ``mds.token-key`` derives each pod's token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from jetpack.config import Config
from jetpack.errors import StateError

KEY_FILES = {"mds.signing-key": "mds-signing.key", "mds.token-key": "mds-token.key"}
KEY_BYTES = 32


def ensure_keys(config: Config) -> list[str]:
    """Generate each key the configuration leaves unset; returns the files created."""
    created = []
    for key, filename in KEY_FILES.items():
        if config.get(key):
            continue
        path = config.root / filename
        if path.exists():
            continue
        tmp = path.with_name(f".{filename}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(KEY_BYTES) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            raise StateError(f"cannot write {path}: {exc}") from None
        created.append(str(path))
    return created


def load_key(config: Config, key: str) -> bytes:
    """The key's bytes: the configured hex value, else the generated file's."""
    value = config.get(key)
    if not value:
        path: Path = config.root / KEY_FILES[key]
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise StateError(
                f"{key} is not configured and {path} cannot be read: {exc.strerror}",
                hint="run 'jetpack init'",
            ) from None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise StateError(f"{key}: not a hex string") from None
