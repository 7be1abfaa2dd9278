"""The one place that picks the platform's drivers: the isolation driver (``isolation.driver`` =
``linux`` | ``jail``), the network backend that goes with it, and (for a sandbox one of them
made) its process listing.

Both driver modules import on every platform; only the chosen one is ever constructed. Callers
ask the driver's ``capabilities`` (or the backend) rather than comparing platform names. What
prepare asks (``driver_capabilities``, ``check_limits``) comes from stage1.driver_info, so that
the CLI never imports a driver, trio or a network backend to prepare a pod. The
storage driver's default is the configuration's per-platform default (``storage.driver``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jetpack.config import Config
from jetpack.errors import ConfigError
from jetpack.stage1.base import IsolationCapabilities, IsolationDriver, Limits, SandboxHandle
from jetpack.stage1.driver_info import (
    JAIL_CAPABILITIES,
    LINUX_CAPABILITIES,
    check_jail_limits,
    check_linux_limits,
)
from jetpack.stage1.usage import PodUsage, cgroup_usage, jail_usage

if TYPE_CHECKING:
    from jetpack.stage1.network.hook import FreeBSDNetwork, LinuxNetwork

DRIVERS = ("linux", "jail")


def network_backend(config: Config) -> LinuxNetwork | FreeBSDNetwork:
    """The pod network backend of the configured isolation driver (bridge+nftables, lo1+pf)."""
    from jetpack.stage1.network.hook import FreeBSDNetwork, LinuxNetwork  # trio: not for prepare

    return FreeBSDNetwork(config) if _driver_name(config) == "jail" else LinuxNetwork(config)


def isolation_driver(config: Config, *, setup_host: bool = False) -> IsolationDriver:
    """The configured isolation driver. ``setup_host``: with its network backend, the host side
    made ready (the bridge and firewall, or lo1), as the daemon runs pods; without, pods get
    loopback only (``jetpack build``, ``exec``/``console`` into running pods)."""
    name = _driver_name(config)
    network = None
    if setup_host:
        network = network_backend(config)
        network.setup_host()
    if name == "linux":
        from jetpack.stage1.linux import LinuxDriver

        driver = LinuxDriver(network=network)
        if setup_host:
            driver.forks.start()  # the daemon's first pod need not wait for its imports
        return driver
    from jetpack.stage1.jail import JailDriver

    return JailDriver.from_config(config, network=network)


def driver_capabilities(config: Config) -> IsolationCapabilities:
    """What the configured isolation driver can do, without making one (prepare asks it)."""
    return JAIL_CAPABILITIES if _driver_name(config) == "jail" else LINUX_CAPABILITIES


def check_limits(config: Config, limits: Limits) -> None:
    """The configured driver refuses ``limits`` this host cannot enforce (jail: racct off),
    so that prepare refuses a pod before anything is made; create_sandbox checks again."""
    check = check_jail_limits if _driver_name(config) == "jail" else check_linux_limits
    check(limits)


def _driver_name(config: Config) -> str:
    name = config["isolation.driver"]
    if name not in DRIVERS:
        raise ConfigError(f"isolation.driver: unknown driver {name!r} (linux or jail)")
    return str(name)


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


def pod_usage(handle: SandboxHandle) -> PodUsage | None:
    """What the sandbox uses now (memory, CPU time), read the way the driver that made it can
    (stage1/usage.py): the pod's cgroup on Linux, ``rctl -u`` on the pod jail. None: the
    driver cannot tell. Synchronous (reads files, runs rctl)."""
    if handle.driver == "linux":
        return cgroup_usage(list(handle.data.get("cgroup_dirs") or ()))
    if handle.driver == "jail":
        return jail_usage(handle.data)
    return None
