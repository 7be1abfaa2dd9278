"""Linux pod networking: the bridge, one veth per pod, and jetpack's own nftables table.

No tool per step: links, addresses and routes through netlink in-process (pyroute2), a pod's
nftables rules as one transaction through libnftables in-process (``nftables``, see ``_nft``),
sysctls as writes under /proc/sys; never touches another table. Every function is synchronous
(call it through ``trio.to_thread``) and idempotent where the name says so. ``host_netns`` names
a network namespace under /run/netns (or any nsfs path) that plays the host (the tests use one so
the machine's own networking is never disturbed); None is the caller's own. Another namespace is
entered by a short-lived thread of its own (setns(2) moves only the calling thread), never by the
caller's thread.

nftables layout (``table ip jetpack``)::

    chain prerouting  (nat, dstnat)    fib daddr type local jump portmap   packets from outside
    chain output      (nat, -100)      fib daddr type local jump portmap   the host's own packets
    chain portmap                      one DNAT rule per forward, comment "pod <uuid>"
    chain loopback    (nat, srcnat)    ip saddr 127.0.0.0/8 ct status dnat masquerade
    chain outbound    (nat, srcnat)    ip saddr <pod net> ip daddr != <pod net> masquerade
                                       (only with jail.nat = on)
    chain guard       (filter, raw)    iifname != "lo" ip daddr 127.0.0.0/8 drop

Anti-spoofing (``table bridge jetpack``): a pod's packets enter the bridge through the host
side of its veth; frames from that port must carry the pod's own MAC, IPv4 packets its own
address, ARP its own sender address and MAC, and nothing else (no IPv6, no other ether type)
passes. So CAP_NET_RAW, which stays in the default set for ping, cannot forge another pod's or
the host's address (ARP poisoning, spoofed sources). The pod's eth0 gets a MAC derived from its
address (``pod_mac``), fixed from prepare to destroy like the address. Each veth has a chain of
its own, ``port_<veth>_<address>`` (its rules, each with a counter and the comment
``veth <name>``), reached from the base chain ``ports`` (bridge prerouting) through the verdict
map ``ports`` (iifname -> jump); the base chain, its one rule and the map are made together at
supervisor start (``ensure_firewall``). The chain and its map element go in before the veth
joins the bridge, in one transaction of additions only, and stay when the pod stops (inert: no
interface has that name until the pod starts again, and the next start finds them as they
are); they go when the pod is destroyed (``remove_pod_rules``) or, for veths that are gone,
at supervisor start and ``gc --network`` (``prune_pod_rules``). Why: an nftables transaction
that deletes or flushes anything waits for an RCU grace period (12-20 ms here) where one that
only adds costs ~0.1 ms, so neither a pod's start nor its stop deletes anything. (An older
supervisor's per-rule chain ``antispoof`` is left as it is; ``gc --network`` removes it with
the table; its per-veth ``port_<veth>`` chains are replaced at their pod's next start.)

Loopback forwards (``curl 127.0.0.1:PORT``, as with docker): the output chain rewrites the
destination of the host's own packets; the source stays 127.0.0.1, which the kernel refuses to
route out of a non-loopback device unless ``net.ipv4.conf.<bridge>.route_localnet=1``
(set by ``ensure_bridge``, on the bridge only), and which the pod could not answer, hence the
masquerade of DNAT'ed loopback sources. route_localnet would also let a pod send packets to the
host's 127.0.0.0/8 services (CVE-2020-8558); the guard chain drops those.

``net.ipv4.ip_forward`` is switched on only when something needs routing between interfaces:
outbound NAT (``ensure_firewall(nat=True)``) or a port forward reachable from other machines
(``add_port_forwards``). Pods on the bridge reach each other and the host without it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import ipaddress
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from jetpack.errors import ConflictError, NetworkError
from jetpack.locks import file_lock
from jetpack.stage1.network import nftables, rtnl
from jetpack.stage1.network.ports import PortForward, as_forwards
from jetpack.stage1.own_thread import Beside, in_own_thread

T = TypeVar("T")

DEFAULT_BRIDGE = "jetpack0"
TABLE = "jetpack"
_IFNAMSIZ = 15  # the kernel's limit on an interface name, without its NUL
_CLONE_NEWNET = 0x40000000  # <sched.h>
_AF_NETLINK = 16  # <linux/socket.h> (the socket module has no name for it off Linux)
_NETLINK_ROUTE = 0  # <linux/netlink.h>


def veth_name(pod_uuid: str) -> str:
    """The host side of a pod's veth: ``jp`` + 13 hex digits of its UUID (15 chars, findable)."""
    return "jp" + pod_uuid.replace("-", "").lower()[:_IFNAMSIZ - 2]


def _check_ifname(name: str) -> None:
    if not name or len(name) > _IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise NetworkError(f"invalid interface name {name!r} (1-15 characters, no / or spaces)")


# ---------------------------------------------------------------- namespaces, netlink, sysctl


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enter(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkError(f"network namespace {path}: {exc.strerror}") from None
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            reason = os.strerror(ctypes.get_errno())
            raise NetworkError(f"network namespace {path}: setns: {reason}")
    finally:
        os.close(fd)


def _in_netns(path: str | None, work: Callable[[], T]) -> T:
    """``work()`` in the network namespace at ``path``; None: the caller's, in its own thread.

    setns(2) moves only the calling thread, so another namespace gets a thread of its own that
    ends with the work: the caller's thread never changes namespace.
    """
    if path is None:
        return work()

    def entered() -> T:
        _enter(path)
        return work()

    return in_own_thread(entered, f"jetpack netns {path}")


def _host_path(host_netns: str | None) -> str | None:
    if host_netns is None or "/" in host_netns:
        return host_netns
    return f"/run/netns/{host_netns}"


def _reason(exc: NetlinkError) -> str:
    return str(exc.args[1]) if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)


@contextmanager
def _failing(what: str) -> Iterator[None]:
    """Netlink's and the system's errors as a NetworkError naming what failed."""
    try:
        yield
    except NetlinkError as exc:
        raise NetworkError(f"{what}: {_reason(exc)}") from None
    except OSError as exc:
        raise NetworkError(f"{what}: {exc.strerror or exc}") from None


@contextmanager
def _rtnl(netns: str | None = None) -> Iterator[Any]:
    """pyroute2's IPRoute on a netlink socket made in the calling thread's network namespace,
    or in the one at ``netns`` (a socket stays in the namespace it was made in). For the cold
    paths only: each IPRoute call runs an asyncio loop (see rtnl.py, ``_host_socket``)."""
    def make() -> int:
        return socket.socket(_AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE).detach()

    with _failing(f"netlink socket in {netns or 'the host network namespace'}"):
        fd = _in_netns(netns, make)
        try:
            ipr = IPRoute(fileno=fd)
        except BaseException:
            os.close(fd)
            raise
    try:
        yield ipr
    finally:
        ipr.close()


def _link(ipr: Any, name: str) -> Any | None:
    """The netlink message of device ``name``, None when there is no such device."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise NetworkError(f"interface {name}: {_reason(exc)}") from None


def _sysctl(*key: str, value: str = "1") -> None:
    """Set sysctl ``key`` (its /proc/sys path parts) in the calling thread's network namespace:
    /proc/sys/net is the namespace of the thread that opens it."""
    try:
        with open(os.path.join("/proc/sys", *key), "w") as knob:
            knob.write(value)
    except OSError as exc:
        raise NetworkError(f"sysctl {'.'.join(key)}={value}: {exc.strerror}") from None


def _ipv4_interfaces(ipr: Any, index: int) -> list[ipaddress.IPv4Interface]:
    return [ipaddress.IPv4Interface(f"{msg.get('local') or msg.get('address')}/{msg['prefixlen']}")
            for msg in ipr.addr("dump", index=index, family=socket.AF_INET)]


# ---------------------------------------------------------------- bridge


def bridge_mac(name: str) -> str:
    """A stable, locally administered unicast MAC for the bridge ``name``."""
    digest = hashlib.sha256(f"jetpack bridge {name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def ensure_bridge(
    name: str = DEFAULT_BRIDGE, host_cidr: str = "172.23.0.1/16", *,
    host_netns: str | None = None,
) -> ipaddress.IPv4Interface:
    """The bridge ``name`` up, holding the host's address; returns the address it holds.

    An existing bridge is reused as it is, with its own address (``host_cidr`` is added only
    when it has none); a non-bridge device of that name is an error.
    """
    _check_ifname(name)
    wanted = ipaddress.IPv4Interface(host_cidr)
    return _in_netns(_host_path(host_netns), lambda: _ensure_bridge(name, wanted))


def _ensure_bridge(name: str, wanted: ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
    with _rtnl() as ipr:
        link = _link(ipr, name)
        if link is None:
            try:
                # An address of its own: a bridge without one takes the lowest of its ports'
                # MACs, so every veth that joins could change the gateway's MAC under running
                # pods.
                ipr.link("add", ifname=name, kind="bridge", address=bridge_mac(name))
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # another caller made it meanwhile: reuse
                    raise NetworkError(f"creating bridge {name}: {_reason(exc)}") from None
            link = _link(ipr, name)
        kind = None if link is None else link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        if link is None or kind != "bridge":
            raise NetworkError(
                f"interface {name} exists but is a {kind or 'plain device'}, not a bridge",
                hint="set jail.interface to a free name or to an existing bridge",
            )
        index = link["index"]
        with _failing(f"bridge {name}"):
            addresses = _ipv4_interfaces(ipr, index)
            if not addresses:
                try:
                    ipr.addr("add", index=index, address=str(wanted.ip),
                             prefixlen=wanted.network.prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise
                addresses = _ipv4_interfaces(ipr, index) or [wanted]
            ipr.link("set", index=index, state="up")
    # Lets the host's own loopback connections to a forwarded port leave through the bridge
    # (see the module docstring); scoped to this bridge, never to "all".
    _sysctl("net", "ipv4", "conf", name, "route_localnet")
    return wanted if wanted in addresses else addresses[0]


def bridge_ports(name: str = DEFAULT_BRIDGE, *, host_netns: str | None = None) -> list[str]:
    """Names of the devices attached to bridge ``name`` (empty when it does not exist)."""
    return _in_netns(_host_path(host_netns), lambda: _bridge_ports(name))


def _bridge_ports(name: str) -> list[str]:
    with _rtnl() as ipr:
        link = _link(ipr, name)
        if link is None:
            return []
        with _failing(f"the ports of bridge {name}"):
            return [str(port.get("ifname")) for port in ipr.get_links()
                    if port.get("master") == link["index"]]


def remove_bridge(name: str = DEFAULT_BRIDGE, *, host_netns: str | None = None) -> bool:
    """Delete bridge ``name`` (``gc --network``); False when it was not there.

    Refused (ConflictError) while any veth is still attached: a pod is using it.
    """
    _check_ifname(name)
    return _in_netns(_host_path(host_netns), lambda: _remove_bridge(name))


def _remove_bridge(name: str) -> bool:
    attached = _bridge_ports(name)
    if attached:
        raise ConflictError(
            f"bridge {name} still has pods attached ({', '.join(sorted(attached))})",
            hint="stop or destroy those pods first",
        )
    with _rtnl() as ipr:
        link = _link(ipr, name)
        if link is None:
            return False
        with _failing(f"deleting bridge {name}"):
            ipr.link("del", index=link["index"])
    return True


# ---------------------------------------------------------------- pods


def attach_pod(
    netns: str,
    pod_ip: str,
    prefixlen: int,
    gateway: str,
    *,
    bridge: str,
    veth_name: str,
    pod_uuid: str | None = None,
    forwards: Iterable[tuple[str, int, int, str | None]] = (),
    host_netns: str | None = None,
) -> None:
    """Give the pod's network namespace (``netns``: /proc/PID/ns/net or a bind-mounted nsfs
    file) an ``eth0`` on ``bridge`` with ``pod_ip/prefixlen``, lo up, a default route via
    ``gateway``. ``veth_name`` (see ``veth_name()``) is the host side; on failure nothing stays.

    The pod's port ``forwards`` (as for ``add_port_forwards``, which needs ``pod_uuid``) go into
    the same nftables transaction as its anti-spoofing rules.
    """
    _check_ifname(veth_name)
    try:
        address = ipaddress.IPv4Interface(f"{pod_ip}/{prefixlen}")
        ipaddress.IPv4Address(gateway)
    except ValueError as exc:
        raise NetworkError(f"pod address: {exc}") from None
    checked = as_forwards(forwards)
    if checked and pod_uuid is None:
        raise NetworkError("port forwards need the pod's UUID")
    if not os.path.exists(netns):
        raise NetworkError(f"pod network namespace {netns} does not exist")
    _in_netns(_host_path(host_netns), lambda: _attach_pod(
        netns, address, gateway, bridge=bridge, veth=veth_name, pod_uuid=pod_uuid or "",
        forwards=checked))


def _attach_pod(netns: str, address: ipaddress.IPv4Interface, gateway: str, *, bridge: str,
                veth: str, pod_uuid: str, forwards: list[PortForward]) -> None:
    pod_ip = str(address.ip)
    # Listed (and a conflict refused) before anything of the pod goes into nftables.
    forward_script = _skeleton() + _forward_rules(pod_uuid, pod_ip, forwards) if forwards else ""
    # The anti-spoofing rules need only the veth's name and the address (the MAC follows from
    # it): their nftables transaction runs beside the netlink work that makes the veth, and the veth
    # joins the bridge only once they are in place.
    rules = Beside(lambda: _ensure_antispoof(veth, pod_ip), f"jetpack rules {veth}")
    try:
        with _host_socket() as host:
            with _failing(f"creating veth {veth} into pod network namespace {netns}"):
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    host.request(rtnl.new_veth(veth, "eth0", peer_netns_fd=fd,
                                               peer_mac=pod_mac(pod_ip)))
                finally:
                    os.close(fd)
            try:
                pod, eth0 = _pod_socket(netns)
                with pod:
                    # before the veth joins the bridge: the pod never sends a frame unchecked
                    rules.result()
                    if forward_script:
                        _sysctl("net", "ipv4", "ip_forward")  # see add_port_forwards
                        _nft(forward_script, f"the port forwards of pod {pod_uuid}")
                    joined = f"attaching veth {veth} to bridge {bridge}"
                    with _failing(joined):
                        master = rtnl.index_of(bridge)
                    if master is None:
                        raise NetworkError(f"attaching veth {veth}: bridge {bridge} does not "
                                           "exist")
                    # Both sides' requests go out before either's acks are read: the kernel
                    # has done all of them when the sends return.
                    configured = f"pod network namespace {netns}: eth0 {address} via {gateway}"
                    with _failing(joined):
                        host.submit([rtnl.link_up(name=veth, master=master)])
                    with _failing(configured):
                        pod.submit([rtnl.add_address(eth0, address),
                                    rtnl.link_up(index=rtnl.LOOPBACK_INDEX),
                                    rtnl.link_up(index=eth0),
                                    rtnl.replace_default_route(gateway, eth0)])
                    with _failing(joined):
                        host.collect()
                    with _failing(configured):
                        pod.collect()
            except BaseException:
                rules.join()
                _detach_pod(veth, pod_uuid or None)
                raise
    finally:
        rules.join()


def _host_socket() -> rtnl.RouteSocket:
    """A plain route socket (see rtnl.py) in the calling thread's network namespace."""
    with _failing("netlink socket in the host network namespace"):
        return rtnl.RouteSocket()


def _pod_socket(netns: str) -> tuple[rtnl.RouteSocket, int]:
    """A plain route socket made in the network namespace at ``netns`` by a thread of its own,
    and the ifindex of the pod's ``eth0`` there (an ioctl in that thread: no netlink dump)."""
    def make() -> tuple[rtnl.RouteSocket, int | None]:
        sock = rtnl.RouteSocket()
        try:
            return sock, rtnl.index_of("eth0")
        except BaseException:
            sock.close()
            raise

    with _failing(f"netlink socket in {netns}"):
        sock, eth0 = _in_netns(netns, make)
    if eth0 is None:
        sock.close()
        raise NetworkError(f"pod network namespace {netns}: eth0: {os.strerror(errno.ENODEV)}")
    return sock, eth0


def detach_pod(veth_name: str, *, pod_uuid: str | None = None,
               host_netns: str | None = None) -> bool:
    """Delete the pod's veth pair by its host side, with ``pod_uuid`` its port forwards too;
    idempotent (False when the veth was already gone). Its anti-spoofing chain stays (see
    ``remove_pod_rules``): no nftables transaction at all for a pod without forwards."""
    _check_ifname(veth_name)
    return _in_netns(_host_path(host_netns), lambda: _detach_pod(veth_name, pod_uuid))


def _detach_pod(veth: str, pod_uuid: str | None) -> bool:
    if pod_uuid is not None:
        script = _portmap_deletes(pod_uuid)
        if script:
            _nft(script, f"removing the port forwards of pod {pod_uuid}")
    with _host_socket() as host, _failing(f"deleting veth {veth}"):
        try:
            host.request(rtnl.del_link(veth))
        except NetlinkError as exc:
            # none, or gone meanwhile (its namespace died): that is the goal
            if exc.code == errno.ENODEV or rtnl.index_of(veth) is None:
                return False
            raise
    return True


# ---------------------------------------------------------------- nftables


def _nft(script: str, what: str, *, listing: bool = False) -> str:
    """Run an nft script in-process through libnftables (``nftables.run``), in the calling
    thread's network namespace: one script is one kernel transaction, all of it applies or
    none. Returns what nft prints (JSON with rule handles when ``listing``)."""
    try:
        return nftables.run(script, listing=listing)
    except nftables.NftablesError as exc:
        raise NetworkError(f"nftables ({what}) failed: {exc}") from None


def _chain_rules(family: str, chain: str) -> list[dict[str, Any]]:
    """The rules of one of jetpack's chains as nft's JSON objects (empty without the table)."""
    try:
        out = _nft(f"list chain {family} {TABLE} {chain}", f"listing {family} {chain}",
                   listing=True)
    except NetworkError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    items = json.loads(out).get("nftables", []) if out.strip() else []
    return [item["rule"] for item in items if "rule" in item]


def _skeleton() -> str:
    """The table and its fixed chains; safe to apply again (chains are flushed and refilled)."""
    t = f"ip {TABLE}"
    return "\n".join([
        f"add table {t}",
        f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {t} loopback {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add chain {t} outbound {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add chain {t} guard {{ type filter hook prerouting priority raw; policy accept; }}",
        f"add chain {t} portmap",
        f"flush chain {t} prerouting",
        f"add rule {t} prerouting fib daddr type local jump portmap",
        f"flush chain {t} output",
        f"add rule {t} output fib daddr type local jump portmap",
        f"flush chain {t} loopback",
        f"add rule {t} loopback ip saddr 127.0.0.0/8 ct status dnat masquerade",
        f"flush chain {t} guard",
        f'add rule {t} guard iifname != "lo" ip daddr 127.0.0.0/8 drop',
        "",
    ])


def ensure_firewall(
    network: str = "172.23.0.1/16", *, nat: bool = False, host_netns: str | None = None
) -> None:
    """jetpack's table with its fixed chains; outbound masquerade of ``network`` iff ``nat``.

    Call at supervisor start and on config reload; pods' forwards are kept as they are.
    """
    net = ipaddress.IPv4Interface(network).network
    script = _skeleton() + _bridge_skeleton() + f"flush chain ip {TABLE} outbound\n"
    if nat:
        script += (f"add rule ip {TABLE} outbound ip saddr {net} ip daddr != {net} masquerade\n")

    def apply() -> None:
        if nat:
            _sysctl("net", "ipv4", "ip_forward")
        _nft(script, "jetpack's table")

    _in_netns(_host_path(host_netns), apply)


def _bridge_skeleton() -> str:
    """The bridge table, its base chain ``ports`` with its one rule and the map the rule reads;
    safe to apply again (the base chain is flushed and gets its rule back). Made once at
    supervisor start (``ensure_firewall``) and by an attach that finds it missing, always in
    one transaction: the map there means the rule that reads it is there too."""
    t = f"bridge {TABLE}"
    return "\n".join([
        f"add table {t}",
        f"add chain {t} ports {{ type filter hook prerouting priority -200; policy accept; }}",
        f"add map {t} ports {{ type ifname : verdict; }}",
        f"flush chain {t} ports",
        f"add rule {t} ports iifname vmap @ports",
        "",
    ])


def pod_mac(pod_ip: str) -> str:
    """The MAC of a pod's eth0: locally administered unicast ``02:4a:`` + its IPv4 address (as
    docker's ``02:42:``), so unique on the bridge as addresses are, and the same at every start
    of the pod (its address is fixed from prepare to destroy)."""
    packed = ipaddress.IPv4Address(pod_ip).packed
    return ":".join(f"{b:02x}" for b in (0x02, 0x4A, *packed))


def _port_chain(veth_name: str, pod_ip: str) -> str:
    """The veth's chain, named after everything its rules depend on (the MAC derives from the
    address): a chain of that name that exists holds exactly the rules ``_port_chain_script``
    makes, so an attach can take it as it is. (Change the name if the rules ever change.)"""
    return f"port_{veth_name}_{ipaddress.IPv4Address(pod_ip)}"


def _element(veth_name: str, chain: str) -> str:
    return f'add element bridge {TABLE} ports {{ "{veth_name}" : jump {chain} }}\n'


def _port_chain_script(veth_name: str, pod_ip: str, *, create: bool) -> str:
    """The veth's chain with its rules, then its map element. ``create``: additions only,
    refused (EEXIST) when the chain is there already; else the chain is made empty first."""
    t = f"bridge {TABLE}"
    chain = _port_chain(veth_name, pod_ip)
    mac = pod_mac(pod_ip)
    on = f"add rule {t} {chain}"
    tail = f'counter drop comment "veth {veth_name}"'
    made = [f"create chain {t} {chain}"] if create else [
        f"add chain {t} {chain}", f"flush chain {t} {chain}"]
    return "\n".join([
        *made,
        f"{on} ether saddr != {mac} {tail}",
        f"{on} ether type != {{ ip, arp }} {tail}",
        f"{on} ether type ip ip saddr != {pod_ip} {tail}",
        f"{on} ether type arp arp saddr ip != {pod_ip} {tail}",
        f"{on} ether type arp arp saddr ether != {mac} {tail}",
        "",
    ]) + _element(veth_name, chain)


# Chains this process made or found, by (network namespace, chain): a start of the same pod
# then sends its map element alone. Only a guess: a chain gone meanwhile fails that element
# (ENOENT), and a chain of that name is the right one whoever made it (``_port_chain``).
# Pods destroyed by another process (the CLI) are never discarded here: bounded by starting
# over.
_known_chains: set[tuple[str, str]] = set()
_KNOWN_CHAINS_MAX = 4096


def _known(host: str, chain: str) -> None:
    if len(_known_chains) >= _KNOWN_CHAINS_MAX:
        _known_chains.clear()
    _known_chains.add((host, chain))


_LOCK_PATH = "/run/jetpack-nftables.lock"


def _rules_lock(*, exclusive: bool) -> AbstractContextManager[None]:
    """Between an attach that takes an existing chain as it is (shared) and a removal of the
    chains whose veth is gone (exclusive), across every jetpack on the machine (the table is
    the machine's): a removal that listed a stopped pod's element must not delete it after
    that pod's start found it there."""
    return file_lock(_LOCK_PATH, exclusive=exclusive)


def _netns_key() -> str:
    """The calling thread's network namespace (``net:[inode]``)."""
    return os.readlink("/proc/thread-self/ns/net")


def _nft_refused(exc: NetworkError) -> str | None:
    """Why an nft transaction was refused: "exists", "missing", or None (another failure)."""
    if "File exists" in str(exc):
        return "exists"
    if "No such file or directory" in str(exc):
        return "missing"
    return None


def _ensure_antispoof(veth_name: str, pod_ip: str) -> None:
    """The veth's chain and map element in place, with additions only when the table is there:
    ONE transaction (the chain, its rules and its element, or the element alone for a chain
    this process knows) costs ~0.1 ms in the kernel where any deletion or flush waits for an
    RCU grace period (12-20 ms). Only a missing table or map, or an element that names another
    chain (an older jetpack's ``port_<veth>``), takes ``_replace_antispoof`` (deletions)."""
    chain = _port_chain(veth_name, pod_ip)
    what = f"the rules of veth {veth_name}"
    host = _netns_key()
    scripts = {"create": _port_chain_script(veth_name, pod_ip, create=True),
               "element": _element(veth_name, chain)}
    # the chain refused as there: its element; the element refused for a missing chain: the
    # chain (gone since this process saw it); anything else: the slow path
    follow = {("create", "exists"): "element", ("element", "missing"): "create"}
    with _rules_lock(exclusive=False):
        tried: list[str] = []
        step: str | None = "element" if (host, chain) in _known_chains else "create"
        while step is not None and step not in tried:
            tried.append(step)
            try:
                _nft(scripts[step], what)
            except NetworkError as exc:
                why = _nft_refused(exc)
                if why is None:
                    raise
                step = follow.get((step, why))
                continue
            _known(host, chain)
            return
        _replace_antispoof(veth_name, pod_ip)
        _known(host, chain)


def _replace_antispoof(veth_name: str, pod_ip: str) -> None:
    """The slow path: the table's skeleton again, the veth's element and another chain it
    names removed, its own chain made anew; one transaction."""
    t = f"bridge {TABLE}"
    chain = _port_chain(veth_name, pod_ip)
    script = _bridge_skeleton()
    other = _port_elements().get(veth_name)
    if other is not None:
        script += f'delete element {t} ports {{ "{veth_name}" }}\n'
        if other != chain:
            script += f"flush chain {t} {other}\ndelete chain {t} {other}\n"
    _nft(script + _port_chain_script(veth_name, pod_ip, create=False),
         f"the rules of veth {veth_name}")


def _port_elements() -> dict[str, str]:
    """The ``ports`` map now: veth -> the chain its element jumps to (empty without it)."""
    try:
        out = _nft(f"list map bridge {TABLE} ports", "listing bridge ports", listing=True)
    except NetworkError as exc:
        if _nft_refused(exc) == "missing":
            return {}
        raise
    found: dict[str, str] = {}
    for item in json.loads(out).get("nftables", []) if out.strip() else []:
        for elem in item.get("map", {}).get("elem", []):
            if isinstance(elem, list) and len(elem) == 2 and isinstance(elem[0], str):
                target = elem[1].get("jump", {}).get("target")
                if isinstance(target, str):
                    found[elem[0]] = target
    return found


def _pod_rules_deletes(elements: dict[str, str]) -> str:
    t = f"bridge {TABLE}"
    return "".join(f'delete element {t} ports {{ "{veth}" }}\n'
                   f"flush chain {t} {chain}\ndelete chain {t} {chain}\n"
                   for veth, chain in elements.items())


def _forget(elements: dict[str, str]) -> None:
    host = _netns_key()
    for chain in elements.values():
        _known_chains.discard((host, chain))


def remove_pod_rules(veth_name: str, pod_ip: str | None = None, *,
                     host_netns: str | None = None) -> None:
    """Delete the anti-spoofing chain and map element of one veth: when its pod is destroyed
    (a stopped pod keeps them, see ``_ensure_antispoof``); idempotent. With the pod's address,
    one transaction (the chain's name is known; the chain and element are added first, a no-op
    when there, so the deletes always find them); without, or when the element names another
    chain, one listing first.

    Never makes the table or the map: a map without the base chain's rule that reads it would
    let a later attach take its additions-only path and filter nothing. Under the rules lock,
    exclusive: a prune (``gc --network``, a supervisor's start, another jetpack's) that listed
    this veth's element as gone must not find it deleted under it (its transaction would fail
    whole on the missing element)."""
    _check_ifname(veth_name)

    def remove() -> None:
        with _rules_lock(exclusive=True):
            removing()

    def removing() -> None:
        if pod_ip is not None:
            chain = _port_chain(veth_name, pod_ip)
            _forget({veth_name: chain})
            try:
                _nft(f"add chain bridge {TABLE} {chain}\n" + _element(veth_name, chain)
                     + _pod_rules_deletes({veth_name: chain}),
                     f"removing the rules of veth {veth_name}")
                return
            except NetworkError as exc:
                if _nft_refused(exc) == "missing":  # no table or no map: nothing to remove
                    return
                if _nft_refused(exc) != "exists":
                    raise
        found = {veth: chain for veth, chain in _port_elements().items() if veth == veth_name}
        _forget(found)
        if found:
            _nft(_pod_rules_deletes(found), f"removing the rules of veth {veth_name}")

    _in_netns(_host_path(host_netns), remove)


def prune_pod_rules(*, host_netns: str | None = None) -> list[str]:
    """Delete the anti-spoofing chains and elements of every veth that does not exist on the
    host now (pods stopped, destroyed, or of another jetpack): what a destroy cut short left.
    A stopped pod's next start makes its chain again, additions only. Returns the veths."""
    return _in_netns(_host_path(host_netns), _prune_pod_rules)


def _prune_pod_rules() -> list[str]:
    with _rules_lock(exclusive=True):
        return _prune_locked()


def _prune_locked() -> list[str]:
    elements = _port_elements()
    if not elements:
        return []
    with _rtnl() as ipr, _failing("listing interfaces"):
        present = {str(link.get("ifname")) for link in ipr.get_links()}
    gone = {veth: chain for veth, chain in elements.items() if veth not in present}
    _forget(gone)
    if gone:
        _nft(_pod_rules_deletes(gone), "removing the rules of veths that are gone")
    return sorted(gone)


def _antispoof_rules_of(veth_name: str) -> list[dict[str, Any]]:
    chain = _port_elements().get(veth_name)
    if chain is None:
        return []
    return [rule for rule in _chain_rules("bridge", chain)
            if rule.get("comment") == f"veth {veth_name}"]


def antispoof_rules(veth_name: str, *, host_netns: str | None = None) -> list[dict[str, Any]]:
    """The anti-spoofing rules of one pod's veth as nft's JSON objects (with their counters)."""
    return _in_netns(_host_path(host_netns), lambda: _antispoof_rules_of(veth_name))


def _comment(pod_uuid: str) -> str:
    return f"pod {pod_uuid.lower()}"


def _rule_port(rule: dict[str, Any]) -> tuple[str, int, str | None] | None:
    """(proto, host port, host ip or None) that a portmap rule matches."""
    proto, port, host_ip = None, None, None
    for expr in rule.get("expr", []):
        match = expr.get("match")
        if not match:
            continue
        payload = match.get("left", {}).get("payload", {})
        if payload.get("field") == "dport":
            proto, port = payload.get("protocol"), match.get("right")
        elif payload.get("protocol") == "ip" and payload.get("field") == "daddr":
            host_ip = match.get("right")
    if proto is None or not isinstance(port, int):
        return None
    return str(proto), port, host_ip


def port_forwards(*, host_netns: str | None = None) -> dict[str, list[PortForward]]:
    """The forwards loaded now, by pod UUID (what ``add_port_forwards`` put there)."""
    return _in_netns(_host_path(host_netns),
                     lambda: _forwards_by_pod(_chain_rules("ip", "portmap")))


def _forwards_by_pod(rules: list[dict[str, Any]]) -> dict[str, list[PortForward]]:
    found: dict[str, list[PortForward]] = {}
    for rule in rules:
        comment, matched = rule.get("comment", ""), _rule_port(rule)
        if not comment.startswith("pod ") or matched is None:
            continue
        dnat: dict[str, Any] = next(
            (e["dnat"] for e in rule.get("expr", []) if "dnat" in e), {})
        proto, port, host_ip = matched
        found.setdefault(comment[4:], []).extend(
            as_forwards([(proto, port, int(dnat.get("port", 0)) or port, host_ip)]))
    return found


def _forward_rules(pod_uuid: str, pod_ip: str, forwards: list[PortForward]) -> str:
    """The nft lines that replace the pod's forwards (after ``_skeleton()``); ConflictError
    when another pod forwards one of these host ports."""
    rules = _chain_rules("ip", "portmap")
    taken = {
        (fwd.proto, fwd.host_port): uuid
        for uuid, fwds in _forwards_by_pod(rules).items()
        if uuid != pod_uuid.lower()
        for fwd in fwds
    }
    # Replacing this pod's earlier rules in the same transaction makes a retry harmless.
    script = "".join(f"delete rule ip {TABLE} portmap handle {rule['handle']}\n"
                     for rule in rules if rule.get("comment") == _comment(pod_uuid))
    for fwd in forwards:
        other = taken.get((fwd.proto, fwd.host_port))
        if other:
            raise ConflictError(f"host port {fwd.proto}/{fwd.host_port} is already forwarded "
                                f"to pod {other}")
        where = f"ip daddr {fwd.host_ip} " if fwd.host_ip else ""
        script += (f"add rule ip {TABLE} portmap {where}{fwd.proto} dport {fwd.host_port} "
                   f"dnat to {pod_ip}:{fwd.pod_port} comment \"{_comment(pod_uuid)}\"\n")
    return script


def add_port_forwards(
    pod_uuid: str,
    pod_ip: str,
    forwards: Iterable[tuple[str, int, int, str | None]],
    *,
    host_netns: str | None = None,
) -> None:
    """DNAT each ``(proto, host_port, pod_port, host_ip|None)`` to ``pod_ip:pod_port``.

    Without a host_ip the port answers on every host address, loopback included. A host port
    another pod already forwards is a ConflictError; all rules are added in one transaction.
    """
    checked = as_forwards(forwards)
    try:
        ipaddress.IPv4Address(pod_ip)
    except ValueError as exc:
        raise NetworkError(f"pod address: {exc}") from None
    if not checked:
        return

    def add() -> None:
        script = _skeleton() + _forward_rules(pod_uuid, pod_ip, checked)
        # Other machines' connections to the forwarded port are routed from their interface to
        # the bridge: that is forwarding.
        _sysctl("net", "ipv4", "ip_forward")
        _nft(script, f"the port forwards of pod {pod_uuid}")

    _in_netns(_host_path(host_netns), add)


def _portmap_deletes(pod_uuid: str) -> str:
    return "".join(f"delete rule ip {TABLE} portmap handle {rule['handle']}\n"
                   for rule in _chain_rules("ip", "portmap")
                   if rule.get("comment") == _comment(pod_uuid))


def remove_port_forwards(pod_uuid: str, *, host_netns: str | None = None) -> int:
    """Delete every forward of ``pod_uuid``; idempotent. Returns how many rules went."""
    def remove() -> int:
        script = _portmap_deletes(pod_uuid)
        if script:
            _nft(script, f"removing the port forwards of pod {pod_uuid}")
        return script.count("\n")

    return _in_netns(_host_path(host_netns), remove)


def remove_table(*, host_netns: str | None = None) -> bool:
    """Delete jetpack's nftables tables, ``ip`` and ``bridge`` (``gc --network``); False when
    neither was there, or when a pod's forwards or the rules of an existing veth are still in
    them. The rules of veths that are gone (stopped pods keep theirs) go first
    (``prune_pod_rules``), under the same lock: a start in between makes them again.

    The tables are the machine's, not one state root's: ``gc --network`` runs when none of its
    own pods runs, so rules left in them are another jetpack's (another state root, e.g. a
    test host beside a benchmark), and deleting the tables cut that jetpack's running pods
    off their forwarded ports (the soak's ports that never answered)."""
    def in_use() -> bool:
        return bool(_chain_rules("ip", "portmap")) or bool(_port_elements())

    def remove() -> bool:
        with _rules_lock(exclusive=True):
            _prune_locked()
            return False if in_use() else delete()

    def delete() -> bool:
        removed = False
        for family in ("ip", "bridge"):
            try:
                _nft(f"delete table {family} {TABLE}", f"deleting table {family} {TABLE}")
            except NetworkError as exc:
                if "No such file or directory" in str(exc):
                    continue
                raise
            removed = True
        return removed

    return _in_netns(_host_path(host_netns), remove)
