"""The one place that picks an isolation driver: ``isolation.driver`` = ``linux`` | ``jail``
(and, for a sandbox one of them made, its process listing).

Both driver modules import on every platform; only the chosen one is ever constructed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jetpack.config import Config
from jetpack.errors import ConfigError
from jetpack.stage1.base import IsolationDriver, NetworkHook, SandboxHandle


def isolation_driver(config: Config, *, network: NetworkHook | None = None) -> IsolationDriver:
    name = config["isolation.driver"]
    if name == "linux":
        from jetpack.stage1.linux import LinuxDriver

        return LinuxDriver(network=network)
    if name == "jail":
        from jetpack.stage1.jail import JailDriver

        return JailDriver.from_config(config, network=network)
    raise ConfigError(f"isolation.driver: unknown driver {name!r} (linux or jail)")


def pod_processes(handle: SandboxHandle, monitors: Mapping[str, int | None]
                  ) -> list[dict[str, Any]]:
    """``jetpack ps``: rows ``{pid, app, command}`` of what runs in the sandbox, listed the way
    the driver that made it (``handle.driver``) can: /proc on Linux, ``jls`` + ``ps -J`` for
    jails. ``monitors`` maps each app to its monitor's pid. Synchronous (runs tools)."""
    if handle.driver == "linux":
        from jetpack.stage1.linux_ps import linux_processes

        return linux_processes(handle.data, monitors)
    if handle.driver == "jail":
        from jetpack.stage1.jail import jail_processes

        return jail_processes(handle.data, list(monitors))
    return []
