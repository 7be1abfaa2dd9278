"""Pod IPv4 addresses from ``jail.network``: allocated inside the pod's insert transaction.

Never an address another pod holds (the pods.ip column is UNIQUE and the write transaction is
serialized), never the host's own, never one already configured on any host interface (the
original jetpack's issue #22).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from collections.abc import Iterable

from jetpack.errors import NetworkError
from jetpack.state import Transaction


def allocate_address(
    tx: Transaction, network: str, host_addresses: Iterable[ipaddress.IPv4Address] = ()
) -> str:
    """The lowest free pod address of ``network`` (``172.23.0.1/16``: the host keeps .0.1)."""
    iface = ipaddress.IPv4Interface(network)
    taken = {row[0] for row in tx.execute("SELECT ip FROM pods WHERE ip IS NOT NULL")}
    excluded = {iface.ip, *host_addresses}
    for candidate in iface.network.hosts():
        if candidate in excluded or str(candidate) in taken:
            continue
        return str(candidate)
    raise NetworkError(
        f"no free pod address left in {iface.network} ({len(taken)} pods hold one)",
        hint="destroy unused pods, or widen jail.network",
    )


class _SockAddr(ctypes.Structure):
    _fields_ = (("head", ctypes.c_uint8 * 2), ("port", ctypes.c_uint16),
                ("addr", ctypes.c_uint8 * 4))


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = (
    ("ifa_next", ctypes.POINTER(_IfAddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_SockAddr)),
    ("ifa_netmask", ctypes.POINTER(_SockAddr)),
    ("ifa_ifu", ctypes.c_void_p),
    ("ifa_data", ctypes.c_void_p),
)


def _family(addr: _SockAddr) -> int:
    # Linux: a 16-bit sa_family in host order; BSD: an 8-bit sa_len, then an 8-bit sa_family.
    if addr.head[1] == socket.AF_INET and addr.head[0] >= 16:
        return int(addr.head[1])
    return int.from_bytes(bytes(addr.head), "little")


def host_ipv4_addresses() -> set[ipaddress.IPv4Address]:
    """Every IPv4 address configured on any interface of the host (getifaddrs(3))."""
    # The process's own symbols hold libc's: ctypes.util.find_library would run ldconfig(8)
    # (a process, and the ctypes.util/tempfile imports) on every prepare.
    libc = ctypes.CDLL(None, use_errno=True)
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        errno = ctypes.get_errno()
        raise NetworkError(f"getifaddrs failed: {os.strerror(errno) if errno else 'error'}")
    found: set[ipaddress.IPv4Address] = set()
    try:
        node = head
        while node:
            entry = node.contents
            if entry.ifa_addr and _family(entry.ifa_addr.contents) == socket.AF_INET:
                found.add(ipaddress.IPv4Address(bytes(entry.ifa_addr.contents.addr)))
            node = entry.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found
