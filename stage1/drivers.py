"""The one place that picks an isolation driver: ``isolation.driver`` = ``linux`` | ``jail``.

Both driver modules import on every platform; only the chosen one is ever constructed.
"""

from __future__ import annotations

from jetpack.config import Config
from jetpack.errors import ConfigError
from jetpack.stage1.base import IsolationDriver, NetworkHook


def isolation_driver(config: Config, *, network: NetworkHook | None = None) -> IsolationDriver:
    name = config["isolation.driver"]
    if name == "linux":
        from jetpack.stage1.linux import LinuxDriver

        return LinuxDriver(network=network)
    if name == "jail":
        from jetpack.stage1.jail import JailDriver

        return JailDriver.from_config(config, network=network)
    raise ConfigError(f"isolation.driver: unknown driver {name!r} (linux or jail)")
