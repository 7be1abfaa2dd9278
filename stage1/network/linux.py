"""Linux pod networking: the bridge, one veth per pod, and jetpack's own nftables table.

Drives ip(8) (iproute2), nft(8) and sysctl(8) as subprocesses; never touches another table.
Every function is synchronous (call it through ``trio.to_thread``) and idempotent where the name
says so. ``host_netns`` names a network namespace under /run/netns that plays the host (the
tests use one so the machine's own networking is never disturbed); None is the caller's own.

nftables layout (``table ip jetpack``)::

    chain prerouting  (nat, dstnat)    fib daddr type local jump portmap   packets from outside
    chain output      (nat, -100)      fib daddr type local jump portmap   the host's own packets
    chain portmap                      one DNAT rule per forward, comment "pod <uuid>"
    chain loopback    (nat, srcnat)    ip saddr 127.0.0.0/8 ct status dnat masquerade
    chain outbound    (nat, srcnat)    ip saddr <pod net> ip daddr != <pod net> masquerade
                                       (only with jail.nat = on)
    chain guard       (filter, raw)    iifname != "lo" ip daddr 127.0.0.0/8 drop

Anti-spoofing (``table bridge jetpack``, chain ``antispoof``, bridge prerouting): a pod's
packets enter the bridge through the host side of its veth; frames from that port must carry the
pod's own MAC, IPv4 packets its own address, ARP its own sender address and MAC, and nothing
else (no IPv6, no other ether type) passes. So CAP_NET_RAW, which stays in the default set for
ping, cannot forge another pod's or the host's address (ARP poisoning, spoofed sources). The
rules are added before the veth joins the bridge, each with a counter and the comment
``veth <name>``, and go with the veth (``detach_pod``).

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

import hashlib
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from jetpack.errors import ConflictError, NetworkError
from jetpack.stage1.network.command import run
from jetpack.stage1.network.ports import PortForward, as_forwards

DEFAULT_BRIDGE = "jetpack0"
TABLE = "jetpack"
_IFNAMSIZ = 15  # the kernel's limit on an interface name, without its NUL


def veth_name(pod_uuid: str) -> str:
    """The host side of a pod's veth: ``jp`` + 13 hex digits of its UUID (15 chars, findable)."""
    return "jp" + pod_uuid.replace("-", "").lower()[:_IFNAMSIZ - 2]


def _in_host(argv: Sequence[str], host_netns: str | None) -> list[str]:
    if host_netns is None:
        return list(argv)
    return ["ip", "netns", "exec", host_netns, *argv]


def _in_pod(argv: Sequence[str], netns: str) -> list[str]:
    # ``ip -n`` only takes names under /run/netns; a pod's namespace is any nsfs file.
    return ["nsenter", f"--net={netns}", *argv]


def _ip_json(args: Sequence[str], host_netns: str | None) -> list[dict[str, Any]]:
    out = run(_in_host(["ip", "-j", *args], host_netns))
    parsed = json.loads(out) if out.strip() else []
    return parsed if isinstance(parsed, list) else []


def _link(name: str, host_netns: str | None) -> dict[str, Any] | None:
    """``ip -d link show NAME`` as a dict, None when there is no such device."""
    try:
        links = _ip_json(["-d", "link", "show", "dev", name], host_netns)
    except NetworkError as exc:
        if "does not exist" in str(exc) or "Cannot find device" in str(exc):
            return None
        raise
    return links[0] if links else None


def _sysctl(setting: str, host_netns: str | None) -> None:
    run(_in_host(["sysctl", "-q", "-w", setting], host_netns))


def _check_ifname(name: str) -> None:
    if not name or len(name) > _IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise NetworkError(f"invalid interface name {name!r} (1-15 characters, no / or spaces)")


def _ipv4_interfaces(name: str, host_netns: str | None) -> list[ipaddress.IPv4Interface]:
    found = []
    for entry in _ip_json(["-4", "addr", "show", "dev", name], host_netns):
        for info in entry.get("addr_info", []):
            if info.get("family") == "inet":
                found.append(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
    return found


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
    link = _link(name, host_netns)
    if link is None:
        try:
            # An address of its own: a bridge without one takes the lowest of its ports' MACs,
            # so every veth that joins could change the gateway's MAC under running pods.
            run(_in_host(["ip", "link", "add", "name", name, "address", bridge_mac(name),
                          "type", "bridge"], host_netns))
        except NetworkError as exc:
            if "File exists" not in str(exc):  # another caller made it meanwhile: reuse
                raise
        link = _link(name, host_netns)
    kind = ((link or {}).get("linkinfo") or {}).get("info_kind")
    if kind != "bridge":
        raise NetworkError(
            f"interface {name} exists but is a {kind or 'plain device'}, not a bridge",
            hint="set jail.interface to a free name or to an existing bridge",
        )
    addresses = _ipv4_interfaces(name, host_netns)
    if not addresses:
        try:
            run(_in_host(["ip", "addr", "add", str(wanted), "dev", name], host_netns))
        except NetworkError as exc:
            if "File exists" not in str(exc):
                raise
        addresses = _ipv4_interfaces(name, host_netns) or [wanted]
    run(_in_host(["ip", "link", "set", "dev", name, "up"], host_netns))
    # Lets the host's own loopback connections to a forwarded port leave through the bridge
    # (see the module docstring); scoped to this bridge, never to "all".
    _sysctl(f"net.ipv4.conf.{name}.route_localnet=1", host_netns)
    return wanted if wanted in addresses else addresses[0]


def bridge_ports(name: str = DEFAULT_BRIDGE, *, host_netns: str | None = None) -> list[str]:
    """Names of the devices attached to bridge ``name`` (empty when it does not exist)."""
    if _link(name, host_netns) is None:
        return []
    return [entry["ifname"] for entry in _ip_json(["link", "show", "master", name], host_netns)]


def remove_bridge(name: str = DEFAULT_BRIDGE, *, host_netns: str | None = None) -> bool:
    """Delete bridge ``name`` (``gc --network``); False when it was not there.

    Refused (ConflictError) while any veth is still attached: a pod is using it.
    """
    _check_ifname(name)
    if _link(name, host_netns) is None:
        return False
    attached = bridge_ports(name, host_netns=host_netns)
    if attached:
        raise ConflictError(
            f"bridge {name} still has pods attached ({', '.join(sorted(attached))})",
            hint="stop or destroy those pods first",
        )
    run(_in_host(["ip", "link", "del", "dev", name], host_netns))
    return True


# ---------------------------------------------------------------- pods


def _pod_mac(netns: str) -> str:
    links = json.loads(run(_in_pod(["ip", "-j", "link", "show", "dev", "eth0"], netns)) or "[]")
    mac = links[0].get("address") if links else None
    if not isinstance(mac, str) or mac.count(":") != 5:
        raise NetworkError(f"pod network namespace {netns}: eth0 has no MAC address")
    return mac.lower()


def attach_pod(
    netns: str,
    pod_ip: str,
    prefixlen: int,
    gateway: str,
    *,
    bridge: str,
    veth_name: str,
    host_netns: str | None = None,
) -> None:
    """Give the pod's network namespace (``netns``: /proc/PID/ns/net or a bind-mounted nsfs
    file) an ``eth0`` on ``bridge`` with ``pod_ip/prefixlen``, lo up, a default route via
    ``gateway``. ``veth_name`` (see ``veth_name()``) is the host side; on failure nothing stays.
    """
    _check_ifname(veth_name)
    try:
        address = ipaddress.IPv4Interface(f"{pod_ip}/{prefixlen}")
        ipaddress.IPv4Address(gateway)
    except ValueError as exc:
        raise NetworkError(f"pod address: {exc}") from None
    if not os.path.exists(netns):
        raise NetworkError(f"pod network namespace {netns} does not exist")
    run(_in_host(["ip", "link", "add", "name", veth_name, "type", "veth",
                  "peer", "name", "eth0", "netns", netns], host_netns))
    try:
        # before the veth joins the bridge: the pod never sends a frame unchecked
        _nft(_antispoof_rules(veth_name, str(address.ip), _pod_mac(netns)), host_netns)
        run(_in_host(["ip", "link", "set", "dev", veth_name, "master", bridge, "up"], host_netns))
        for argv in (["ip", "addr", "add", str(address), "dev", "eth0"],
                     ["ip", "link", "set", "dev", "lo", "up"],
                     ["ip", "link", "set", "dev", "eth0", "up"],
                     ["ip", "route", "replace", "default", "via", gateway, "dev", "eth0"]):
            run(_in_pod(argv, netns))
    except NetworkError:
        detach_pod(veth_name, host_netns=host_netns)
        raise


def detach_pod(veth_name: str, *, host_netns: str | None = None) -> bool:
    """Delete the pod's veth pair by its host side and its anti-spoofing rules; idempotent
    (False when the veth was already gone)."""
    _check_ifname(veth_name)
    remove_antispoof(veth_name, host_netns=host_netns)
    if _link(veth_name, host_netns) is None:
        return False
    try:
        run(_in_host(["ip", "link", "del", "dev", veth_name], host_netns))
    except NetworkError as exc:  # gone meanwhile (its namespace died): that is the goal
        if _link(veth_name, host_netns) is not None:
            raise NetworkError(str(exc)) from None
        return False
    return True


# ---------------------------------------------------------------- nftables


def _nft(script: str, host_netns: str | None) -> None:
    # One `nft -f -` call is one kernel transaction: all of the script applies, or none.
    run(_in_host(["nft", "-f", "-"], host_netns), input=script)


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
    script = _skeleton() + f"flush chain ip {TABLE} outbound\n"
    if nat:
        script += (f"add rule ip {TABLE} outbound ip saddr {net} ip daddr != {net} masquerade\n")
        _sysctl("net.ipv4.ip_forward=1", host_netns)
    _nft(script, host_netns)


def _antispoof_rules(veth_name: str, pod_ip: str, pod_mac: str) -> str:
    t = f"bridge {TABLE}"
    on = f'add rule {t} antispoof iifname "{veth_name}"'
    tail = f'counter drop comment "veth {veth_name}"'
    return "\n".join([
        f"add table {t}",
        f"add chain {t} antispoof {{ type filter hook prerouting priority -200; "
        "policy accept; }",
        f"{on} ether saddr != {pod_mac} {tail}",
        f"{on} ether type != {{ ip, arp }} {tail}",
        f"{on} ether type ip ip saddr != {pod_ip} {tail}",
        f"{on} ether type arp arp saddr ip != {pod_ip} {tail}",
        f"{on} ether type arp arp saddr ether != {pod_mac} {tail}",
        "",
    ])


def antispoof_rules(veth_name: str, *, host_netns: str | None = None) -> list[dict[str, Any]]:
    """The anti-spoofing rules of one pod's veth as nft's JSON objects (with their counters)."""
    try:
        out = run(_in_host(["nft", "-j", "-a", "list", "chain", "bridge", TABLE, "antispoof"],
                           host_netns))
    except NetworkError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    items = json.loads(out).get("nftables", [])
    return [item["rule"] for item in items
            if "rule" in item and item["rule"].get("comment") == f"veth {veth_name}"]


def remove_antispoof(veth_name: str, *, host_netns: str | None = None) -> int:
    """Delete the anti-spoofing rules of one veth; idempotent. Returns how many went."""
    handles = [rule["handle"] for rule in antispoof_rules(veth_name, host_netns=host_netns)]
    if handles:
        _nft("".join(f"delete rule bridge {TABLE} antispoof handle {h}\n" for h in handles),
             host_netns)
    return len(handles)


def _comment(pod_uuid: str) -> str:
    return f"pod {pod_uuid.lower()}"


def _portmap_rules(host_netns: str | None) -> list[dict[str, Any]]:
    """The rules of the portmap chain as nft's JSON objects (empty without the table)."""
    try:
        out = run(_in_host(["nft", "-j", "-a", "list", "chain", "ip", TABLE, "portmap"],
                           host_netns))
    except NetworkError as exc:
        if "No such file or directory" in str(exc):
            return []
        raise
    items = json.loads(out).get("nftables", [])
    return [item["rule"] for item in items if "rule" in item]


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
    return _forwards_by_pod(_portmap_rules(host_netns))


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
    rules = _portmap_rules(host_netns)
    taken = {
        (fwd.proto, fwd.host_port): uuid
        for uuid, fwds in _forwards_by_pod(rules).items()
        if uuid != pod_uuid.lower()
        for fwd in fwds
    }
    # Replacing this pod's earlier rules in the same transaction makes a retry harmless.
    script = _skeleton() + "".join(
        f"delete rule ip {TABLE} portmap handle {rule['handle']}\n"
        for rule in rules if rule.get("comment") == _comment(pod_uuid))
    for fwd in checked:
        other = taken.get((fwd.proto, fwd.host_port))
        if other:
            raise ConflictError(f"host port {fwd.proto}/{fwd.host_port} is already forwarded "
                                f"to pod {other}")
        where = f"ip daddr {fwd.host_ip} " if fwd.host_ip else ""
        script += (f"add rule ip {TABLE} portmap {where}{fwd.proto} dport {fwd.host_port} "
                   f"dnat to {pod_ip}:{fwd.pod_port} comment \"{_comment(pod_uuid)}\"\n")
    # Other machines' connections to the forwarded port are routed from their interface to the
    # bridge: that is forwarding.
    _sysctl("net.ipv4.ip_forward=1", host_netns)
    _nft(script, host_netns)


def remove_port_forwards(pod_uuid: str, *, host_netns: str | None = None) -> int:
    """Delete every forward of ``pod_uuid``; idempotent. Returns how many rules went."""
    handles = [rule["handle"] for rule in _portmap_rules(host_netns)
               if rule.get("comment") == _comment(pod_uuid)]
    if handles:
        _nft("".join(f"delete rule ip {TABLE} portmap handle {h}\n" for h in handles),
             host_netns)
    return len(handles)


def remove_table(*, host_netns: str | None = None) -> bool:
    """Delete jetpack's nftables tables, ``ip`` and ``bridge`` (``gc --network``); False when
    neither was there."""
    removed = False
    for family in ("ip", "bridge"):
        try:
            run(_in_host(["nft", "delete", "table", family, TABLE], host_netns))
        except NetworkError as exc:
            if "No such file or directory" in str(exc):
                continue
            raise
        removed = True
    return removed
