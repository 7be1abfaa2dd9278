"""The isolation drivers' network backends: what to do for a pod when its sandbox is made
(attach) and torn down (detach), on Linux (veth + bridge + nftables) or FreeBSD (an alias and a
pf anchor). The pod's address and port forwards come in the attachment's plan, from the
sandbox spec; the driver registry (stage1.drivers) picks the backend with the driver.
"""

from __future__ import annotations

import ipaddress

import trio

from jetpack.config import Config
from jetpack.errors import NetworkError
from jetpack.stage1.base import NetworkAttachment


class _Hook:
    def __init__(self, config: Config) -> None:
        self.interface = config["jail.interface"]
        self.network = ipaddress.IPv4Interface(config["jail.network"])
        self.nat = config.bool("jail.nat")
        self.limiter = trio.CapacityLimiter(1)  # netlink/nft/pfctl work one at a time


class LinuxNetwork(_Hook):
    """A veth into the ``jail.interface`` bridge, the pod's address, a default route via the
    host; port forwards in jetpack's own nftables table. Netlink in-process, and one libnftables
    transaction (in-process too) of additions only for the pod's anti-spoofing rules at attach;
    none at detach for a pod without forwards: its chain stays while the pod exists
    (``forget`` at destroy).

    Pods attach and detach four at a time: each nft script is one kernel transaction whatever
    runs beside it, and veths have names of their own; one at a time, 500 pods' nft
    transactions (a process each then) ran in a row."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.limiter = trio.CapacityLimiter(4)

    def setup_host(self) -> None:
        from jetpack.stage1.network import linux

        linux.ensure_bridge(self.interface, str(self.network))
        linux.ensure_firewall(str(self.network), nat=self.nat)
        # what a destroy cut short left (and stopped pods' chains, made again at their start)
        linux.prune_pod_rules()

    def teardown_host(self) -> list[str]:
        """Remove jetpack's nftables table and the bridge (``gc``, no pod running); the rules
        of veths that are gone (stopped or destroyed pods) go first, the table only when no
        other jetpack's pod still uses it."""
        from jetpack.stage1.network import linux

        done = []
        if linux.remove_table():
            done.append("removed nftables table jetpack")
        if linux.remove_bridge(self.interface):
            done.append(f"removed bridge {self.interface}")
        return done

    async def attach(self, attachment: NetworkAttachment) -> None:
        from jetpack.stage1.network import linux

        plan = attachment.plan
        if plan is None:
            return
        if attachment.netns_path is None:
            raise NetworkError(f"pod {attachment.pod_uuid}: no network namespace to attach")
        veth = linux.veth_name(attachment.pod_uuid)

        def attach() -> None:
            # the veth, its anti-spoofing rules and the forwards in one call (one nft batch)
            linux.attach_pod(str(attachment.netns_path), plan.ip4, self.network.network.prefixlen,
                             str(self.network.ip), bridge=self.interface, veth_name=veth,
                             pod_uuid=attachment.pod_uuid, forwards=list(plan.forwards))

        await trio.to_thread.run_sync(attach, limiter=self.limiter)

    async def detach(self, attachment: NetworkAttachment) -> None:
        from jetpack.stage1.network import linux

        # Its port forwards are looked up (a listing of the portmap chain) only when its plan
        # had some: a pod without any runs no nft at all (its anti-spoofing chain stays, inert
        # while no interface has its veth's name, until ``forget``).
        plan = attachment.plan
        forwards = plan is None or bool(plan.forwards)

        def detach() -> None:
            linux.detach_pod(linux.veth_name(attachment.pod_uuid),
                             pod_uuid=attachment.pod_uuid if forwards else None)

        await trio.to_thread.run_sync(detach, limiter=self.limiter)

    def forget(self, pod_uuid: str, ip4: str | None = None) -> None:
        """Remove what the network keeps of a pod between its starts (its anti-spoofing chain
        and map element): call once the pod is destroyed, never while it runs. Synchronous
        (one nft transaction; with ``ip4``, the pod's address, no listing first); idempotent."""
        from jetpack.stage1.network import linux

        linux.remove_pod_rules(linux.veth_name(pod_uuid), ip4)


class FreeBSDNetwork(_Hook):
    """The pod's address as an alias on ``jail.interface`` (lo1); NAT and port forwards in the
    pod's own pf anchor ``jetpack/<uuid>``."""

    def setup_host(self) -> None:
        from jetpack.stage1.network import freebsd

        freebsd.ensure_interface(self.interface)

    def teardown_host(self) -> list[str]:
        """Nothing: lo1 stays (rc.conf's), and each pod's pf anchor goes with its sandbox."""
        return []

    def forget(self, pod_uuid: str, ip4: str | None = None) -> None:
        """Nothing: a pod's pf anchor is flushed at each detach, its alias removed with it."""

    async def attach(self, attachment: NetworkAttachment) -> None:
        from jetpack.stage1.network import freebsd

        plan = attachment.plan
        if plan is None:
            return

        def attach() -> None:
            freebsd.add_alias(plan.ip4, self.interface)
            try:
                nat = freebsd.default_interface() if self.nat else None
                rules = freebsd.pod_rules(plan.ip4, list(plan.forwards),
                                          interface=self.interface, nat_interface=nat)
                if rules.strip():
                    freebsd.load_pod_rules(attachment.pod_uuid, rules)
            except BaseException:
                freebsd.remove_alias(plan.ip4, self.interface)
                raise

        await trio.to_thread.run_sync(attach, limiter=self.limiter)

    async def detach(self, attachment: NetworkAttachment) -> None:
        from jetpack.stage1.network import freebsd

        plan = attachment.plan

        def detach() -> None:
            # The alias goes even when pf fails: the next pod given this address needs it gone.
            try:
                if freebsd.flush_pod_rules(attachment.pod_uuid) and plan is not None:
                    freebsd.kill_pod_states(plan.ip4)
            finally:
                if plan is not None:
                    freebsd.remove_alias(plan.ip4, self.interface)

        await trio.to_thread.run_sync(detach, limiter=self.limiter)
