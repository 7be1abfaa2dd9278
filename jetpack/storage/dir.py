"""The ``dir`` storage driver: image trees and pod rootfs as plain directories under the root."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from jetpack.config import Config
from jetpack.errors import StorageError
from jetpack.storage.base import StorageCapabilities


@dataclass
class DirStorage:
    root: Path
    name: str = "dir"
    capabilities: ClassVar[StorageCapabilities] = StorageCapabilities(
        cow_clones=False, snapshots=False
    )

    @classmethod
    def from_config(cls, config: Config) -> DirStorage:
        return cls(root=config.root)

    def init(self) -> None:
        try:
            for sub in ("images", "pods", "tmp"):
                (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create storage directories in {self.root}: {exc}") from None
