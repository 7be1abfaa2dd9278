"""A plain NETLINK_ROUTE socket for a pod's attach and detach: requests sent together, one ack
read back for each; pyroute2 builds the messages, this module only moves them.

Why not pyroute2's IPRoute here: its synchronous API runs an asyncio event loop for every call
(pyroute2 0.9's sync wrapper over its async core), ~0.4 ms of CPU to make and close one and
~0.65 ms a call, all of it holding the GIL in a worker thread while the pod's start goes on
beside it. The kernel handles rtnetlink requests synchronously, in the sender's sendmsg(2), and
handles every message of one datagram in order, acking each (an error does not stop the ones
after it): so several independent requests go in one send and their acks are all queued when
it returns. Bridges, dumps and other cold paths keep IPRoute (``linux._rtnl``).

The messages are pyroute2's own classes (``ifinfmsg``, ``ifaddrmsg``, ``rtmsg``), encoded by
it; only the ack (``struct nlmsgerr``: a header and an errno) is read here, as the kernel ABI
fixes it. An error ack raises pyroute2's NetlinkError as IPRoute would, without the extended
ack text (IPRoute's default too), so callers translate both the same way.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

_AF_NETLINK = 16  # <linux/socket.h> (the socket module has no name for it off Linux)
_NETLINK_ROUTE = 0  # <linux/netlink.h>
_IFF_UP = 0x1  # <linux/if.h>
LOOPBACK_INDEX = 1  # <net/net_namespace.h>: lo is 1 in every network namespace
_RT_TABLE_MAIN = 254  # <linux/rtnetlink.h>
_RTPROT_BOOT = 3  # what `ip route` and IPRoute give a route by default
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, port
_ERROR = struct.Struct("=i")  # struct nlmsgerr's error, right after its header
_RECV_SIZE = 65536
_ACK_TIMEOUT = 10.0  # seconds


class RouteSocket:
    """A NETLINK_ROUTE socket, made in the calling thread's network namespace (it stays in the
    namespace it was made in), that sends requests and checks their acks."""

    def __init__(self) -> None:
        self._sock = socket.socket(_AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
        # The acks are queued before send() returns; a missing one is an error, not a hang
        # (a timeout waits with poll(2), fine past FD_SETSIZE).
        self._sock.settimeout(_ACK_TIMEOUT)
        self._seq = 0
        self._pending: list[int] = []

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def submit(self, messages: Iterable[Any]) -> None:
        """Send ``messages`` (unencoded pyroute2 messages) in one datagram, each asking for an
        ack; ``collect()`` reads the acks."""
        data = bytearray()
        for msg in messages:
            self._seq += 1
            msg["header"]["flags"] |= NLM_F_REQUEST | NLM_F_ACK
            msg["header"]["sequence_number"] = self._seq
            msg.encode()
            data += msg.data[:msg["header"]["length"]]
            data += bytes(-len(data) % 4)  # NLMSG_ALIGN: where the kernel reads the next one
            self._pending.append(self._seq)
        self._sock.send(data)

    def collect(self) -> None:
        """Read the ack of every message submitted; raise NetlinkError for the first (in the
        order sent) that failed, once all are read."""
        failed: dict[int, int] = {}
        while self._pending:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                if kind == NLMSG_ERROR and seq in self._pending:
                    self._pending.remove(seq)
                    code = -_ERROR.unpack_from(data, offset + _HEADER.size)[0]
                    if code:
                        failed[seq] = code
                offset += (length + 3) & ~3
        if failed:
            raise NetlinkError(failed[min(failed)])

    def request(self, *messages: Any) -> None:
        """``submit`` then ``collect``."""
        self.submit(messages)
        self.collect()


# ---------------------------------------------------------------- messages


def _message(cls: Any, kind: int, request_flags: int = 0, **fields: Any) -> Any:
    msg = cls()
    msg["header"] = {"type": kind, "flags": request_flags}
    for key, value in fields.items():
        msg[key] = value
    return msg


def new_veth(name: str, peer: str, *, peer_netns_fd: int, peer_mac: str) -> Any:
    """Create the veth pair ``name`` (here) and ``peer`` (in the namespace of the open nsfs
    ``peer_netns_fd``, with MAC ``peer_mac``), both down; refused when ``name`` exists. (Not
    up in the same request: veth refuses to open a device before its peer is linked.)"""
    peer_msg = {"attrs": [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", peer_netns_fd),
                          ("IFLA_ADDRESS", peer_mac)]}
    info = [("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_msg)]})]
    return _message(ifinfmsg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                    attrs=[("IFLA_IFNAME", name), ("IFLA_LINKINFO", {"attrs": info})])


def link_up(*, index: int = 0, name: str | None = None, master: int | None = None) -> Any:
    """Set the device (by ``index``, or by ``name``) up, with ``master`` (an ifindex) too."""
    attrs: list[tuple[str, Any]] = []
    if name is not None:
        attrs.append(("IFLA_IFNAME", name))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    return _message(ifinfmsg, RTM_NEWLINK, index=index, flags=_IFF_UP, change=_IFF_UP,
                    attrs=attrs)


def del_link(name: str) -> Any:
    """Delete the device ``name`` (a veth: its peer too); ENODEV when there is none."""
    return _message(ifinfmsg, RTM_DELLINK, attrs=[("IFLA_IFNAME", name)])


def add_address(index: int, address: ipaddress.IPv4Interface) -> Any:
    """Add ``address`` (with its prefix) to device ``index``; EEXIST when it holds it."""
    # IFA_ADDRESS (the peer address) defaults to IFA_LOCAL: one attribute less to encode
    return _message(ifaddrmsg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, family=socket.AF_INET,
                    prefixlen=address.network.prefixlen, index=index,
                    attrs=[("IFA_LOCAL", str(address.ip))])


def replace_default_route(gateway: str, oif: int) -> Any:
    """The main table's IPv4 default route via ``gateway`` out of device ``oif``, made or
    replaced."""
    return _message(rtmsg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, family=socket.AF_INET,
                    dst_len=0, table=_RT_TABLE_MAIN, proto=_RTPROT_BOOT,
                    scope=_RT_SCOPE_UNIVERSE, type=_RTN_UNICAST,
                    attrs=[("RTA_GATEWAY", gateway), ("RTA_OIF", oif)])


def index_of(name: str) -> int | None:
    """The ifindex of device ``name`` in the calling thread's network namespace (an ioctl, no
    netlink dump); None when there is none."""
    # libc's own: socket.if_nametoindex drops the errno that tells "none" from a failure
    index = int(_libc().if_nametoindex(name.encode()))
    if index:
        return index
    code = ctypes.get_errno()
    if code in (errno.ENODEV, errno.ENXIO):
        return None
    raise OSError(code, os.strerror(code))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)

