"""The port forwarding record shared by the Linux (nftables) and FreeBSD (pf) backends.

A forward maps a host port (on every host address, or on one ``host_ip``) to a pod port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal, NamedTuple

from jetpack.errors import NetworkError

Protocol = Literal["tcp", "udp"]
_PROTOCOLS: dict[str, Protocol] = {"tcp": "tcp", "udp": "udp"}


class PortForward(NamedTuple):
    """``host_port`` on ``host_ip`` (None: every host address, loopback included) → ``pod_port``."""

    proto: Protocol
    host_port: int
    pod_port: int
    host_ip: str | None = None


def as_forwards(items: Iterable[tuple[str, int, int, str | None]]) -> list[PortForward]:
    """``(proto, host_port, pod_port, host_ip|None)`` tuples as PortForwards, each checked."""
    forwards = []
    for proto, host_port, pod_port, host_ip in items:
        checked_proto = _PROTOCOLS.get(proto)
        if checked_proto is None:
            raise NetworkError(f"port forward protocol must be tcp or udp, not {proto!r}")
        for port in (host_port, pod_port):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise NetworkError(f"port forward port must be 1-65535, not {port!r}")
        checked_ip = None
        if host_ip is not None:
            try:
                checked_ip = str(ipaddress.IPv4Address(host_ip))
            except ValueError:
                raise NetworkError(f"port forward host IP is not IPv4: {host_ip!r}") from None
        forwards.append(PortForward(checked_proto, host_port, pod_port, checked_ip))
    return forwards
