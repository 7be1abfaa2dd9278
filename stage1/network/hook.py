"""The isolation drivers' network seam, implemented: what to do for a pod when its sandbox is
made (attach) and torn down (detach), on Linux (veth + bridge + nftables) or FreeBSD (an alias
and a pf anchor). The caller announces each pod's address and port forwards first (``expect``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import trio

from jetpack.config import Config
from jetpack.errors import NetworkError
from jetpack.hostinfo import platform_kind
from jetpack.stage1.base import NetworkAttachment

Forward = tuple[str, int, int, str | None]  # (protocol, host port, pod port, host ip)


@dataclass
class PodNetwork:
    ip: str
    forwards: list[Forward] = field(default_factory=list)


class _Hook:
    def __init__(self, config: Config) -> None:
        self.interface = config["jail.interface"]
        self.network = ipaddress.IPv4Interface(config["jail.network"])
        self.nat = config.bool("jail.nat")
        self.pods: dict[str, PodNetwork] = {}
        self.limiter = trio.CapacityLimiter(1)  # ip/nft/pfctl calls one at a time

    def expect(self, pod_uuid: str, ip: str | None, forwards: list[Forward]) -> None:
        """The address and forwards ``attach`` gives this pod (None: loopback only)."""
        if ip is None:
            self.pods.pop(pod_uuid, None)
        else:
            self.pods[pod_uuid] = PodNetwork(ip, forwards)


class LinuxNetwork(_Hook):
    """A veth into the ``jail.interface`` bridge, the pod's address, a default route via the
    host; port forwards in jetpack's own nftables table."""

    def setup_host(self) -> None:
        from jetpack.stage1.network import linux
        from jetpack.tools import require_tool

        for tool in ("ip", "nft", "nsenter"):
            require_tool(tool, NetworkError, "for pod networking")
        linux.ensure_bridge(self.interface, str(self.network))
        linux.ensure_firewall(str(self.network), nat=self.nat)

    async def attach(self, attachment: NetworkAttachment) -> str | None:
        from jetpack.stage1.network import linux

        plan = self.pods.get(attachment.pod_uuid)
        if plan is None:
            return None
        if attachment.netns_path is None:
            raise NetworkError(f"pod {attachment.pod_uuid}: no network namespace to attach")
        veth = linux.veth_name(attachment.pod_uuid)

        def attach() -> None:
            linux.attach_pod(str(attachment.netns_path), plan.ip, self.network.network.prefixlen,
                             str(self.network.ip), bridge=self.interface, veth_name=veth)
            if plan.forwards:
                try:
                    linux.add_port_forwards(attachment.pod_uuid, plan.ip, plan.forwards)
                except BaseException:
                    linux.detach_pod(veth)
                    raise

        await trio.to_thread.run_sync(attach, limiter=self.limiter)
        return plan.ip

    async def detach(self, attachment: NetworkAttachment) -> None:
        from jetpack.stage1.network import linux

        def detach() -> None:
            linux.remove_port_forwards(attachment.pod_uuid)
            linux.detach_pod(linux.veth_name(attachment.pod_uuid))

        await trio.to_thread.run_sync(detach, limiter=self.limiter)


class FreeBSDNetwork(_Hook):
    """The pod's address as an alias on ``jail.interface`` (lo1); NAT and port forwards in the
    pod's own pf anchor ``jetpack/<uuid>``."""

    def setup_host(self) -> None:
        from jetpack.stage1.network import freebsd

        freebsd.ensure_interface(self.interface)

    async def attach(self, attachment: NetworkAttachment) -> str | None:
        from jetpack.stage1.network import freebsd
        from jetpack.stage1.network.ports import as_forwards

        plan = self.pods.get(attachment.pod_uuid)
        if plan is None:
            return None

        def attach() -> None:
            freebsd.add_alias(plan.ip, self.interface)
            try:
                nat = freebsd.default_interface() if self.nat else None
                rules = freebsd.pod_rules(plan.ip, as_forwards(plan.forwards),
                                          interface=self.interface, nat_interface=nat)
                if rules.strip():
                    freebsd.load_pod_rules(attachment.pod_uuid, rules)
            except BaseException:
                freebsd.remove_alias(plan.ip, self.interface)
                raise

        await trio.to_thread.run_sync(attach, limiter=self.limiter)
        return plan.ip

    async def detach(self, attachment: NetworkAttachment) -> None:
        from jetpack.stage1.network import freebsd

        plan = self.pods.get(attachment.pod_uuid)

        def detach() -> None:
            # The alias goes even when pf fails: the next pod given this address needs it gone.
            try:
                if freebsd.flush_pod_rules(attachment.pod_uuid) and plan is not None:
                    freebsd.kill_pod_states(plan.ip)
            finally:
                if plan is not None:
                    freebsd.remove_alias(plan.ip, self.interface)

        await trio.to_thread.run_sync(detach, limiter=self.limiter)


def pod_network(config: Config) -> LinuxNetwork | FreeBSDNetwork:
    """The platform's network hook (chosen here, once)."""
    if platform_kind() == "freebsd":
        return FreeBSDNetwork(config)
    return LinuxNetwork(config)

