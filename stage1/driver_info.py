"""What each isolation driver can do, and the limit check prepare makes before anything exists,
as data and light functions: prepare runs in the CLI (``jetpack run``, ``prepare``), which must
not import the drivers (trio, the network backends, the fork server) only to ask them.

The one source of truth: the driver classes take their ``capabilities`` and ``check_limits``
from here, and stage1.drivers (the one place that picks the platform's driver) chooses between
them.
"""

from __future__ import annotations

from jetpack.stage1.base import IsolationCapabilities, Limits

LINUX_CAPABILITIES = IsolationCapabilities(
    name="linux", pid_namespace_per_app=True, enter=True, recover=True,
    network_namespace=True, limits=True, socket_activation=True,
)
JAIL_CAPABILITIES = IsolationCapabilities(
    name="jail", pid_namespace_per_app=False, enter=True, recover=True,
    network_namespace=False, limits=True, block_io_limits=True,  # rctl(8) on the pod jail
)


def check_linux_limits(limits: Limits) -> None:
    """Nothing to ask before prepare: the pod's cgroup refuses a missing controller at
    create_sandbox, before it makes anything (PodCgroup.create)."""
    del limits


def check_jail_limits(limits: Limits) -> None:
    """Refuse ``limits`` when this host's kernel cannot enforce them (racct off)."""
    from jetpack.stage1.rctl import check_racct  # sysctl(8): only where jails are configured

    check_racct(limits)
