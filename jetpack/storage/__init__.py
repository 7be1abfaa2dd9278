"""Storage drivers: where image trees and pod app rootfs clones live (ZFS datasets or directories).

``open_storage(config)`` is the one place that picks a driver from ``storage.driver``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jetpack.config import Config
    from jetpack.storage.base import StorageDriver


def open_storage(config: Config) -> StorageDriver:
    driver = config["storage.driver"]
    if driver == "zfs":
        from jetpack.storage.zfs import ZfsStorage

        return ZfsStorage.from_config(config)
    from jetpack.storage.dir import DirStorage

    return DirStorage.from_config(config)
