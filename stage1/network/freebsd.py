"""FreeBSD pod networking: the pod's address as an alias on ``jail.interface`` (lo1) and its NAT
and port forwards in a pf anchor of jetpack's own, ``jetpack/<pod uuid>``.

The host's main ruleset is never rewritten: it must hook jetpack's anchors once (the admin's
one-time step, printed by ``ANCHOR_HOOKS``); jetpack only loads and flushes its own anchors.
Synchronous; call through ``trio.to_thread``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from jetpack.errors import NetworkError
from jetpack.stage1.network.command import run
from jetpack.stage1.network.ports import as_forwards

DEFAULT_INTERFACE = "lo1"
ANCHOR_ROOT = "jetpack"

# What /etc/pf.conf needs once so that pf evaluates jetpack's per-pod anchors.
ANCHOR_HOOKS = (
    f'nat-anchor "{ANCHOR_ROOT}/*"\n'
    f'rdr-anchor "{ANCHOR_ROOT}/*"\n'
    f'anchor "{ANCHOR_ROOT}/*"\n'
)

_IFNAME = re.compile(r"^[a-z][a-z0-9_.]{0,14}$")


def _check_ifname(name: str) -> None:
    if not _IFNAME.match(name):
        raise NetworkError(f"invalid interface name {name!r}")


def _ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise NetworkError(f"not an IPv4 address: {text!r}") from None


def pod_anchor(pod_uuid: str) -> str:
    """The pf anchor holding one pod's rules: ``jetpack/<uuid>``."""
    return f"{ANCHOR_ROOT}/{pod_uuid.lower()}"


def _interface_exists(interface: str) -> bool:
    try:
        run(["ifconfig", interface])
    except NetworkError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return True


def ensure_interface(interface: str = DEFAULT_INTERFACE) -> bool:
    """Create the cloned interface (``ifconfig lo1 create``) unless it exists; True if made."""
    _check_ifname(interface)
    if _interface_exists(interface):
        return False
    run(["ifconfig", interface, "create"])
    run(["ifconfig", interface, "up"])
    return True


def add_alias(pod_ip: str, interface: str = DEFAULT_INTERFACE) -> None:
    """``ifconfig lo1 alias 172.23.0.2/32``: the address the pod's jail gets as ip4.addr."""
    _check_ifname(interface)
    address = _ipv4(pod_ip)
    run(["ifconfig", interface, "alias", f"{address}/32"])


def remove_alias(pod_ip: str, interface: str = DEFAULT_INTERFACE) -> bool:
    """``ifconfig lo1 -alias 172.23.0.2``; idempotent (False when the alias was not there)."""
    _check_ifname(interface)
    address = _ipv4(pod_ip)
    try:
        run(["ifconfig", interface, "-alias", str(address)])
    except NetworkError as exc:
        if "Can't assign requested address" in str(exc) or "does not exist" in str(exc):
            return False
        raise
    return True


def pod_rules(
    pod_ip: str,
    forwards: Iterable[tuple[str, int, int, str | None]],
    *,
    interface: str = DEFAULT_INTERFACE,
    nat_interface: str | None = None,
) -> str:
    """The pf rules of one pod's anchor: its forwards as ``rdr``, and when ``nat_interface``
    (the host's external interface) is given, outbound ``nat`` of the pod's address."""
    address = _ipv4(pod_ip)
    lines = []
    if nat_interface is not None:
        _check_ifname(nat_interface)
        lines.append(f"nat on {nat_interface} inet from {address} to any -> ({nat_interface})")
    for fwd in as_forwards(forwards):
        target = fwd.host_ip or "any"
        # "on ! lo1": from anywhere but the pods' own interface, lo0 included (127.0.0.1:PORT).
        lines.append(f"rdr pass on ! {interface} inet proto {fwd.proto} from any "
                     f"to {target} port {fwd.host_port} -> {address} port {fwd.pod_port}")
    return "".join(f"{line}\n" for line in lines)


def load_pod_rules(pod_uuid: str, rules: str) -> None:
    """Replace the rules of the pod's anchor with ``rules`` (``pfctl -a jetpack/<uuid> -f -``)."""
    run(["pfctl", "-a", pod_anchor(pod_uuid), "-f", "-"], input=rules)


PF_ABSENT = "/dev/pf: No such file or directory"


def flush_pod_rules(pod_uuid: str) -> bool:
    """Empty the pod's anchor (``pfctl -a jetpack/<uuid> -F all``); idempotent. False when pf
    is not loaded at all: then no anchor holds anything to flush."""
    try:
        run(["pfctl", "-a", pod_anchor(pod_uuid), "-F", "all"])
    except NetworkError as exc:
        if PF_ABSENT in str(exc):
            return False
        raise
    return True


def kill_pod_states(pod_ip: str) -> None:
    """Kill pf's states from and to the pod's address: flushing an anchor leaves the states its
    rules made (the state table is global), and a forwarded connection would live on."""
    address = str(_ipv4(pod_ip))
    run(["pfctl", "-k", address])
    run(["pfctl", "-k", "0.0.0.0/0", "-k", address])


def parse_default_interface(route_output: str) -> str | None:
    """The ``interface:`` line of ``route -n get default`` (the NAT's external interface)."""
    for line in route_output.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "interface" and value.strip():
            return value.strip()
    return None


def default_interface() -> str:
    """The interface of the host's default route, for ``nat_interface``."""
    found = parse_default_interface(run(["route", "-n", "get", "default"]))
    if found is None:
        raise NetworkError("the host has no default route, so jail.nat has nowhere to go")
    return found
