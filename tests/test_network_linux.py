"""Linux pod networking for real: a bridge, veths, nftables forwards, all inside network
namespaces made for the test (one plays the host), so the machine's own network is never touched.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from jetpack.errors import ConflictError, NetworkError
from jetpack.stage1.network import linux
from jetpack.stage1.network.ports import PortForward

from conftest import REPO, require

pytestmark = pytest.mark.usefixtures("root")

HOST_CIDR = "172.23.0.1/16"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} exited {proc.returncode}: {proc.stderr}")
    return proc


def delete_netns(name: str) -> None:
    pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    sh("ip", "netns", "del", name, check=False)
    assert not Path(f"/run/netns/{name}").exists()


@pytest.fixture(scope="module")
def tools() -> None:
    for tool in ("ip", "nft", "sysctl", "curl"):
        require(shutil.which(tool) is not None, f"{tool} on PATH")


@pytest.fixture
def make_netns(tools: None) -> Iterator[Callable[..., str]]:
    """Makes fresh named network namespaces (lo up); kills their processes and deletes them."""
    made: list[str] = []

    def make(role: str, suffix: str = "") -> str:
        name = f"jp-{role}{suffix or secrets.token_hex(4)}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in reversed(made):
        delete_netns(name)


@pytest.fixture
def host(make_netns: Callable[..., str]) -> str:
    """A namespace playing the host, with an "external" address 198.51.100.1 on a veth whose
    other end (198.51.100.2) sits in a client namespace, named by ``client_of(host)``."""
    suffix = secrets.token_hex(4)
    name = make_netns("h", suffix)
    client = make_netns("c", suffix)
    sh("ip", "-n", name, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0",
       "netns", f"/run/netns/{client}")
    sh("ip", "-n", name, "addr", "add", "198.51.100.1/24", "dev", "ext0")
    sh("ip", "-n", name, "link", "set", "ext0", "up")
    sh("ip", "-n", client, "addr", "add", "198.51.100.2/24", "dev", "eth0")
    sh("ip", "-n", client, "link", "set", "eth0", "up")
    return name


def client_of(host: str) -> str:
    return "jp-c" + host.removeprefix("jp-h")


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def links(ns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(sh("ip", "-n", ns, "-j", "link").stdout)]


def ipv4_of(ns: str) -> list[str]:
    out = json.loads(sh("ip", "-n", ns, "-j", "-4", "addr").stdout)
    return sorted(info["local"] for link in out for info in link.get("addr_info", []))


def tables(ns: str) -> str:
    return in_ns(ns, "nft", "list", "tables").stdout


def attach(host: str, pod_ns: str, ip: str) -> tuple[str, str]:
    pod_uuid = str(uuid.uuid4())
    veth = linux.veth_name(pod_uuid)
    linux.attach_pod(f"/run/netns/{pod_ns}", ip, 16, "172.23.0.1",
                     bridge="jetpack0", veth_name=veth, host_netns=host)
    return pod_uuid, veth


def test_veth_name_is_short_and_derived_from_the_uuid() -> None:
    pod_uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    name = linux.veth_name(pod_uuid)
    assert name == "jp0f1e2d3c4b5a6"
    assert len(name) <= 15


def test_bridge_is_created_reused_and_removed(host: str) -> None:
    address = linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    assert str(address) == HOST_CIDR
    assert "172.23.0.1" in ipv4_of(host)
    route_localnet = in_ns(host, "sysctl", "-n", "net.ipv4.conf.jetpack0.route_localnet")
    assert route_localnet.stdout.strip() == "1"
    # An existing bridge keeps its own address: nothing is added or replaced.
    again = linux.ensure_bridge("jetpack0", "10.99.0.1/24", host_netns=host)
    assert str(again) == HOST_CIDR
    assert "10.99.0.1" not in ipv4_of(host)
    assert linux.remove_bridge("jetpack0", host_netns=host) is True
    assert "jetpack0" not in links(host)
    assert linux.remove_bridge("jetpack0", host_netns=host) is False


def test_a_device_that_is_not_a_bridge_is_refused(host: str) -> None:
    with pytest.raises(NetworkError, match="not a bridge"):
        linux.ensure_bridge("ext0", HOST_CIDR, host_netns=host)


def test_ensure_bridge_in_the_callers_own_namespace(host: str) -> None:
    """host_netns=None acts on the calling process's namespace (run here inside ``host``)."""
    code = ("from jetpack.stage1.network import linux; "
            f"print(linux.ensure_bridge('jpt0', '{HOST_CIDR}'))")
    out = in_ns(host, "env", f"PYTHONPATH={REPO}", sys.executable, "-c", code)
    assert out.stdout.strip() == HOST_CIDR
    assert "jpt0" in links(host)


async def test_two_pods_ping_each_other_and_the_host(host: str,
                                                    make_netns: Callable[..., str]) -> None:
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    pod_a, pod_b = make_netns("p"), make_netns("p")
    _, veth_a = attach(host, pod_a, "172.23.0.2")
    _, veth_b = attach(host, pod_b, "172.23.0.3")

    assert ipv4_of(pod_a) == ["127.0.0.1", "172.23.0.2"]
    assert ipv4_of(pod_b) == ["127.0.0.1", "172.23.0.3"]
    assert sorted(linux.bridge_ports("jetpack0", host_netns=host)) == sorted([veth_a, veth_b])
    for pod, target in ((pod_a, "172.23.0.3"), (pod_b, "172.23.0.2"),
                        (pod_a, "172.23.0.1"), (pod_b, "172.23.0.1")):
        ping = await trio.run_process(
            ["ip", "netns", "exec", pod, "busybox", "ping", "-c", "1", "-W", "3", target],
            capture_stdout=True, capture_stderr=True, check=False)
        assert ping.returncode == 0, (pod, target, ping.stdout, ping.stderr)

    with pytest.raises(ConflictError, match="still has pods attached"):
        linux.remove_bridge("jetpack0", host_netns=host)
    assert linux.detach_pod(veth_a, host_netns=host) is True
    assert linux.detach_pod(veth_a, host_netns=host) is False  # idempotent
    assert ipv4_of(pod_a) == ["127.0.0.1"]
    linux.detach_pod(veth_b, host_netns=host)
    assert not [name for name in links(host) if name.startswith("jp")]
    assert linux.remove_bridge("jetpack0", host_netns=host) is True


def test_forwards_go_with_the_attach_and_the_detach(host: str,
                                                   make_netns: Callable[..., str]) -> None:
    """attach_pod with the pod's forwards, detach_pod with its UUID: only its anti-spoofing
    chain stays (until remove_pod_rules, at destroy), and the caller's thread never left its own
    namespace."""
    own = os.readlink("/proc/thread-self/ns/net")
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    pod_a, pod_b = make_netns("p"), make_netns("p")
    uuid_a, uuid_b = str(uuid.uuid4()), str(uuid.uuid4())
    veth_a, veth_b = linux.veth_name(uuid_a), linux.veth_name(uuid_b)
    linux.attach_pod(f"/run/netns/{pod_a}", "172.23.0.2", 16, "172.23.0.1", bridge="jetpack0",
                     veth_name=veth_a, pod_uuid=uuid_a, forwards=[("tcp", 18080, 80, None)],
                     host_netns=host)
    assert linux.port_forwards(host_netns=host) == {uuid_a: [PortForward("tcp", 18080, 80, None)]}
    assert len(linux.antispoof_rules(veth_a, host_netns=host)) == 5
    routes = json.loads(sh("ip", "-n", pod_a, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in routes] == [("172.23.0.1", "eth0")]
    # A second pod asking for the same host port is refused and leaves nothing behind.
    with pytest.raises(ConflictError, match=uuid_a):
        linux.attach_pod(f"/run/netns/{pod_b}", "172.23.0.3", 16, "172.23.0.1",
                         bridge="jetpack0", veth_name=veth_b, pod_uuid=uuid_b,
                         forwards=[("tcp", 18080, 80, None)], host_netns=host)
    assert veth_b not in links(host)
    assert "eth0" not in links(pod_b)
    assert linux.antispoof_rules(veth_b, host_netns=host) == []
    assert list(linux.port_forwards(host_netns=host)) == [uuid_a]  # the first pod's stays

    assert linux.detach_pod(veth_a, pod_uuid=uuid_a, host_netns=host) is True
    assert linux.port_forwards(host_netns=host) == {}
    assert len(linux.antispoof_rules(veth_a, host_netns=host)) == 5  # kept for its next start
    assert not [name for name in links(host) if name.startswith("jp")]
    assert linux.detach_pod(veth_a, pod_uuid=uuid_a, host_netns=host) is False
    linux.remove_pod_rules(veth_a, "172.23.0.2", host_netns=host)
    assert linux.antispoof_rules(veth_a, host_netns=host) == []
    linux.remove_pod_rules(veth_a, "172.23.0.2", host_netns=host)  # idempotent
    linux.remove_pod_rules(veth_a, host_netns=host)
    assert os.readlink("/proc/thread-self/ns/net") == own


def bridge_handles(host: str) -> dict[str, int]:
    """Every chain and rule of jetpack's bridge table by its handle: a chain deleted and made
    again, or a chain flushed and refilled, shows as new handles."""
    out = json.loads(in_ns(host, "nft", "-j", "-a", "list", "table", "bridge", "jetpack").stdout)
    found = {}
    for item in out["nftables"]:
        if "chain" in item:
            found[f"chain {item['chain']['name']}"] = item["chain"]["handle"]
        elif "rule" in item:
            rule = item["rule"]
            matches = [e for e in rule["expr"] if "counter" not in e]  # not what it counted
            found[f"rule {rule['chain']} {json.dumps(matches)}"] = rule["handle"]
    return found


class Monitor:
    """``nft monitor`` in ``ns``: the ruleset changes it printed between entering and
    ``changes()``, each end found by a marker table added until the monitor printed it (it
    subscribes some time after it started)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.markers: list[str] = []
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "monitor"],
                                     stdout=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _mark(self) -> list[str]:
        """The lines the monitor printed before one of the marker tables made now."""
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            name = f"jpmark{len(self.markers)}"
            self.markers.append(name)
            in_ns(self.ns, "nft", "add", "table", "inet", name)
            until = time.monotonic() + 0.5
            while (left := until - time.monotonic()) > 0:
                try:
                    line = self.lines.get(timeout=left)
                except queue.Empty:
                    break
                if line.startswith("add table inet jpmark"):
                    return seen
                seen.append(line)
        raise AssertionError("nft monitor printed none of its markers")

    def __enter__(self) -> Monitor:
        self._mark()
        return self

    def changes(self) -> list[str]:
        return [line for line in self._mark() if line]

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=10)  # it reads to the end of the pipe, then the pipe closes
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        for name in self.markers:
            in_ns(self.ns, "nft", "delete", "table", "inet", name, check=False)


def removals(changes: list[str]) -> list[str]:
    """What ``nft monitor`` printed that was not an addition (a delete, a flush's deletes)."""
    return [line for line in changes if line.split()[0] not in ("add", "create", "#")]


def test_a_restarted_pod_keeps_its_chain_and_its_start_deletes_nothing(
        host: str, make_netns: Callable[..., str]) -> None:
    """A pod stopped (detach) and started again (attach into a new namespace): its eth0 has the
    MAC its address gives, its chain and the base chain are the very ones of its first start
    (same handles: nothing deleted, flushed or refilled), the attach sent additions only (nft
    monitor), and the pod still cannot send from another address or MAC."""
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    pod_uuid = str(uuid.uuid4())
    veth = linux.veth_name(pod_uuid)

    def start() -> str:
        pod = make_netns("p")
        linux.attach_pod(f"/run/netns/{pod}", "172.23.0.2", 16, "172.23.0.1",
                         bridge="jetpack0", veth_name=veth, pod_uuid=pod_uuid, host_netns=host)
        return pod

    first = start()
    eth0 = json.loads(sh("ip", "-n", first, "-j", "link", "show", "eth0").stdout)[0]
    assert eth0["address"] == linux.pod_mac("172.23.0.2") == "02:4a:ac:17:00:02"
    before = bridge_handles(host)
    assert len(linux.antispoof_rules(veth, host_netns=host)) == 5
    assert linux.detach_pod(veth, pod_uuid=pod_uuid, host_netns=host) is True
    assert veth not in links(host)
    assert bridge_handles(host) == before  # the stop removed nothing
    delete_netns(first)

    # started again by this process, then by another supervisor (which knows no chain: its
    # create is refused, EEXIST, and only the element follows)
    for fresh in (False, True):
        if fresh:
            linux.detach_pod(veth, pod_uuid=pod_uuid, host_netns=host)
            linux._known_chains.clear()
        with Monitor(host) as monitor:
            pod = start()
            changes = monitor.changes()
        # one transaction, and it deleted nothing (re-adding the element changes nothing)
        assert [line for line in changes if line.startswith("# new generation")] != []
        assert len([line for line in changes if line.startswith("#")]) == 1, changes
        assert not removals(changes), changes
        assert bridge_handles(host) == before
    # pruned by another process (another jetpack's supervisor start) while this one still
    # remembers the chain: its element is refused (no such chain), the chain is made again,
    # additions only still
    linux.detach_pod(veth, pod_uuid=pod_uuid, host_netns=host)
    chain = f"port_{veth}_172.23.0.2"
    subprocess.run(["ip", "netns", "exec", host, "nft", "-f", "-"], check=True, text=True,
                   input=f'delete element bridge jetpack ports {{ "{veth}" }}\n'
                         f"flush chain bridge jetpack {chain}\n"
                         f"delete chain bridge jetpack {chain}\n")
    assert ("net:[" + str(os.stat(f"/run/netns/{host}").st_ino) + "]", chain) \
        in linux._known_chains
    with Monitor(host) as monitor:
        pod = start()
        changes = monitor.changes()
    assert not removals(changes), changes
    assert len(linux.antispoof_rules(veth, host_netns=host)) == 5
    ping = in_ns(pod, "busybox", "ping", "-c", "1", "-W", "3", "172.23.0.1", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr  # the legitimate use
    # spoofing from the restarted pod (root in its namespace): another source address, then
    # another MAC; the bridge drops both
    in_ns(pod, "ip", "addr", "add", "172.23.0.77/16", "dev", "eth0")
    ping = in_ns(pod, "busybox", "ping", "-c", "1", "-W", "1", "-I", "172.23.0.77",
                 "172.23.0.1", check=False)
    assert ping.returncode != 0
    in_ns(pod, "ip", "addr", "del", "172.23.0.77/16", "dev", "eth0")
    in_ns(pod, "ip", "link", "set", "eth0", "address", "02:4a:ac:17:00:63")
    in_ns(pod, "ip", "neigh", "flush", "all")
    ping = in_ns(pod, "busybox", "ping", "-c", "1", "-W", "1", "172.23.0.1", check=False)
    assert ping.returncode != 0
    counts = [next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
              for rule in linux.antispoof_rules(veth, host_netns=host)]
    assert sum(counts) > 0, counts

    linux.detach_pod(veth, pod_uuid=pod_uuid, host_netns=host)
    linux.remove_pod_rules(veth, "172.23.0.2", host_netns=host)  # the pod destroyed
    assert linux.antispoof_rules(veth, host_netns=host) == []
    assert not [name for name in bridge_handles(host) if veth in name]


def test_prune_removes_the_rules_of_veths_that_are_gone_only(
        host: str, make_netns: Callable[..., str]) -> None:
    """Supervisor start and gc --network: the chains of stopped or destroyed pods go, a
    running pod's stays; a pruned pod's next start makes its chain again."""
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    _, running = attach(host, make_netns("p"), "172.23.0.2")
    _, stopped = attach(host, make_netns("p"), "172.23.0.3")
    linux.detach_pod(stopped, host_netns=host)
    assert linux.prune_pod_rules(host_netns=host) == [stopped]
    assert linux.antispoof_rules(stopped, host_netns=host) == []
    assert len(linux.antispoof_rules(running, host_netns=host)) == 5
    assert linux.remove_table(host_netns=host) is False  # the running pod's rules are in it
    linux.attach_pod(f"/run/netns/{make_netns('p')}", "172.23.0.3", 16, "172.23.0.1",
                     bridge="jetpack0", veth_name=stopped, host_netns=host)
    assert len(linux.antispoof_rules(stopped, host_netns=host)) == 5
    for veth in (running, stopped):
        linux.detach_pod(veth, host_netns=host)
    assert linux.remove_table(host_netns=host) is True  # pruned first, then the tables
    # a destroy then makes no table (a map without the base chain's rule would filter nothing)
    linux.remove_pod_rules(stopped, "172.23.0.3", host_netns=host)
    linux.remove_pod_rules(stopped, host_netns=host)
    assert "jetpack" not in tables(host)


def test_a_destroys_rule_removal_waits_for_a_prune_in_progress(
        host: str, make_netns: Callable[..., str]) -> None:
    """A prune (gc --network, a supervisor's start, another jetpack's) lists the elements of
    veths that are gone, then deletes them in one transaction, under the rules lock held
    exclusive: a destroy's removal of one of them waits for it, instead of deleting it in
    between (the prune's transaction then failed whole: "No such file or directory")."""
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    _, stopped = attach(host, make_netns("p"), "172.23.0.3")
    linux.detach_pod(stopped, host_netns=host)
    removed = threading.Event()

    def destroy() -> None:
        linux.remove_pod_rules(stopped, "172.23.0.3", host_netns=host)
        removed.set()

    with linux._rules_lock(exclusive=True):  # a prune between its listing and its deletes
        remover = threading.Thread(target=destroy)
        remover.start()
        assert not removed.wait(0.5)
        assert len(linux.antispoof_rules(stopped, host_netns=host)) == 5
    remover.join(30)
    assert removed.is_set()
    assert linux.antispoof_rules(stopped, host_netns=host) == []
    assert linux.prune_pod_rules(host_netns=host) == []


def test_attach_makes_a_missing_table_and_replaces_an_older_chain(
        host: str, make_netns: Callable[..., str]) -> None:
    """Without the table (gc --network of another jetpack removed it) an attach makes it whole;
    an older jetpack's element for the veth (chain ``port_<veth>``, a MAC of the kernel's
    choosing) is replaced and its chain removed."""
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    pod_uuid, veth = attach(host, make_netns("p"), "172.23.0.2")  # no ensure_firewall
    assert len(linux.antispoof_rules(veth, host_netns=host)) == 5
    ports = in_ns(host, "nft", "list", "chain", "bridge", "jetpack", "ports").stdout
    assert "iifname vmap @ports" in ports
    linux.detach_pod(veth, host_netns=host)
    linux.remove_pod_rules(veth, host_netns=host)
    old = f"port_{veth}"
    subprocess.run(["ip", "netns", "exec", host, "nft", "-f", "-"], check=True, text=True,
                   input=f"add chain bridge jetpack {old}\n"
                         f"add rule bridge jetpack {old} ether saddr != 02:00:00:00:00:01 drop\n"
                         f'add element bridge jetpack ports {{ "{veth}" : jump {old} }}\n')
    linux.attach_pod(f"/run/netns/{make_netns('p')}", "172.23.0.2", 16, "172.23.0.1",
                     bridge="jetpack0", veth_name=veth, pod_uuid=pod_uuid, host_netns=host)
    assert len(linux.antispoof_rules(veth, host_netns=host)) == 5
    assert f"chain {old}" not in bridge_handles(host)
    linux.detach_pod(veth, host_netns=host)
    linux.remove_pod_rules(veth, "172.23.0.2", host_netns=host)
    assert not [name for name in bridge_handles(host) if veth in name]


def test_a_failed_attach_leaves_no_veth(host: str, make_netns: Callable[..., str]) -> None:
    pod = make_netns("p")
    with pytest.raises(NetworkError, match="nosuchbr"):
        linux.attach_pod(f"/run/netns/{pod}", "172.23.0.2", 16, "172.23.0.1",
                         bridge="nosuchbr", veth_name="jpfailing", host_netns=host)
    assert "jpfailing" not in links(host)
    assert "eth0" not in links(pod)


def test_a_request_refused_amid_the_pods_batch_is_named_and_nothing_stays(
        host: str, make_netns: Callable[..., str]) -> None:
    """The pod side's requests go out together and their acks are read after: the default
    route, refused after the address and both links went up, still fails the attach by name."""
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    pod = make_netns("p")
    sh("ip", "-n", pod, "link", "set", "lo", "down")  # the attach brings it up
    with pytest.raises(NetworkError) as failed:
        linux.attach_pod(f"/run/netns/{pod}", "172.23.0.2", 16, "10.99.0.1",
                         bridge="jetpack0", veth_name="jprefused", host_netns=host)
    assert str(failed.value) == (f"pod network namespace /run/netns/{pod}: eth0 172.23.0.2/16 "
                                 "via 10.99.0.1: Network is unreachable")
    assert "jprefused" not in links(host)
    assert links(pod) == ["lo"]
    assert linux.bridge_ports("jetpack0", host_netns=host) == []

    # the same namespace then attaches: lo up, the address, the default route out of eth0
    linux.attach_pod(f"/run/netns/{pod}", "172.23.0.2", 16, "172.23.0.1",
                     bridge="jetpack0", veth_name="jprefused", host_netns=host)
    shown = json.loads(sh("ip", "-n", pod, "-j", "link", "show", "lo").stdout)
    assert "UP" in shown[0]["flags"]
    assert ipv4_of(pod) == ["127.0.0.1", "172.23.0.2"]
    route = json.loads(sh("ip", "-n", pod, "-j", "route", "show", "default").stdout)
    assert [(r["gateway"], r["dev"]) for r in route] == [("172.23.0.1", "eth0")]
    assert linux.bridge_ports("jetpack0", host_netns=host) == ["jprefused"]
    assert linux.detach_pod("jprefused", host_netns=host) is True
    linux.remove_pod_rules("jprefused", "172.23.0.2", host_netns=host)
    assert links(pod) == ["lo"]


def test_attach_to_a_missing_namespace_names_it(host: str) -> None:
    with pytest.raises(NetworkError, match="/run/netns/jp-missing"):
        linux.attach_pod("/run/netns/jp-missing", "172.23.0.2", 16, "172.23.0.1",
                         bridge="jetpack0", veth_name="jpmissing", host_netns=host)


async def until_ok(ns: str, url: str) -> None:
    """Wait until ``url`` answers from ``ns`` (callers bound it with fail_after)."""
    while (await curl(ns, url)).returncode != 0:  # noqa: ASYNC110  # polling another process
        await trio.sleep(0.05)


async def curl(ns: str, url: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(["ip", "netns", "exec", ns, "curl", "-sS", "-m", "3", url],
                                  capture_stdout=True, capture_stderr=True, check=False)


async def test_port_forward_reaches_the_pod_on_every_host_address(
        host: str, make_netns: Callable[..., str], tmp_path: Path) -> None:
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, host_netns=host)
    pod = make_netns("p")
    pod_uuid, veth = attach(host, pod, "172.23.0.2")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the pod\n")
    async with trio.open_nursery() as nursery:
        httpd = await nursery.start(partial(
            trio.run_process, ["ip", "netns", "exec", pod, "busybox", "httpd", "-f",
                               "-p", "8080", "-h", str(www)], check=False))
        with trio.fail_after(10):
            await until_ok(pod, "http://127.0.0.1:8080/")

        linux.add_port_forwards(pod_uuid, "172.23.0.2", [("tcp", 18080, 8080, None)],
                                host_netns=host)
        assert linux.port_forwards(host_netns=host) == {
            pod_uuid: [PortForward("tcp", 18080, 8080, None)]}
        for ns, url in ((host, "http://127.0.0.1:18080/"),
                        (host, "http://198.51.100.1:18080/"),
                        (host, "http://172.23.0.1:18080/"),
                        (client_of(host), "http://198.51.100.1:18080/")):
            got = await curl(ns, url)
            assert got.returncode == 0, (ns, url, got.stderr)
            assert got.stdout == b"hello from the pod\n"
        forward = in_ns(host, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        assert forward == "1"

        # Adding again replaces the pod's rules rather than duplicating them.
        linux.add_port_forwards(pod_uuid, "172.23.0.2", [("tcp", 18080, 8080, None)],
                                host_netns=host)
        assert len(linux.port_forwards(host_netns=host)[pod_uuid]) == 1
        # Another pod cannot take the same host port.
        with pytest.raises(ConflictError, match=pod_uuid):
            linux.add_port_forwards(str(uuid.uuid4()), "172.23.0.3",
                                    [("tcp", 18080, 80, None)], host_netns=host)

        # gc --network of another jetpack (another state root) on the machine keeps the
        # table while a pod's forward is in it
        assert linux.remove_table(host_netns=host) is False
        assert len(linux.port_forwards(host_netns=host)[pod_uuid]) == 1
        assert linux.remove_port_forwards(pod_uuid, host_netns=host) == 1
        assert linux.remove_port_forwards(pod_uuid, host_netns=host) == 0
        assert linux.port_forwards(host_netns=host) == {}
        for url in ("http://127.0.0.1:18080/", "http://198.51.100.1:18080/"):
            assert (await curl(host, url)).returncode != 0, url
        httpd.kill()
    linux.detach_pod(veth, host_netns=host)
    assert linux.remove_table(host_netns=host) is True
    assert linux.remove_table(host_netns=host) is False
    assert "jetpack" not in tables(host)


def test_forward_on_one_host_ip_only(host: str) -> None:
    pod_uuid = str(uuid.uuid4())
    linux.add_port_forwards(pod_uuid, "172.23.0.9", [("udp", 5353, 53, "198.51.100.1")],
                            host_netns=host)
    assert linux.port_forwards(host_netns=host) == {
        pod_uuid: [PortForward("udp", 5353, 53, "198.51.100.1")]}
    rules = in_ns(host, "nft", "list", "chain", "ip", "jetpack", "portmap").stdout
    assert "ip daddr 198.51.100.1 udp dport 5353 dnat to 172.23.0.9:53" in rules


@pytest.mark.parametrize("bad", [("sctp", 1, 2, None), ("tcp", 0, 80, None),
                                 ("tcp", 80, 70000, None), ("tcp", 80, 80, "::1")])
def test_malformed_forwards_are_refused(host: str, bad: tuple[str, int, int, str | None]) -> None:
    with pytest.raises(NetworkError, match="port forward"):
        linux.add_port_forwards(str(uuid.uuid4()), "172.23.0.2", [bad], host_netns=host)
    assert "jetpack" not in tables(host)


def test_nat_masquerades_only_the_pod_network_and_leaves_other_tables(host: str) -> None:
    in_ns(host, "nft", "add", "table", "inet", "someoneelse")
    in_ns(host, "nft", "add", "chain", "inet", "someoneelse", "c")
    linux.ensure_firewall(HOST_CIDR, nat=True, host_netns=host)
    outbound = in_ns(host, "nft", "list", "chain", "ip", "jetpack", "outbound").stdout
    assert "ip saddr 172.23.0.0/16 ip daddr != 172.23.0.0/16 masquerade" in outbound
    assert in_ns(host, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    # Switching NAT off again (config reload) empties the chain; idempotent either way.
    linux.ensure_firewall(HOST_CIDR, nat=False, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, nat=False, host_netns=host)
    outbound = in_ns(host, "nft", "list", "chain", "ip", "jetpack", "outbound").stdout
    assert "masquerade" not in outbound
    guard = in_ns(host, "nft", "list", "chain", "ip", "jetpack", "guard").stdout
    assert guard.count("drop") == 1
    linux.remove_table(host_netns=host)
    assert "someoneelse" in tables(host)


def test_nat_reaches_outside_through_the_host(host: str,
                                              make_netns: Callable[..., str]) -> None:
    linux.ensure_bridge("jetpack0", HOST_CIDR, host_netns=host)
    linux.ensure_firewall(HOST_CIDR, nat=True, host_netns=host)
    pod = make_netns("p")
    _, veth = attach(host, pod, "172.23.0.2")
    client = client_of(host)
    # The client has no route back to 172.23/16: only a masqueraded ping gets answered.
    ping = in_ns(pod, "busybox", "ping", "-c", "1", "-W", "3", "198.51.100.2", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    linux.ensure_firewall(HOST_CIDR, nat=False, host_netns=host)
    ping = in_ns(pod, "busybox", "ping", "-c", "1", "-W", "1", "198.51.100.2", check=False)
    assert ping.returncode != 0
    del client
    linux.detach_pod(veth, host_netns=host)


def test_a_supervisor_holding_over_1024_descriptors_still_wires_pods(
        host: str, make_netns: Callable[..., str]) -> None:
    """With a few hundred pods the supervisor holds more than FD_SETSIZE (1024) descriptors.
    Whatever the network code opens then gets a number above 1024, where a select(2)-based
    library (libnftables waits on its netlink socket that way) makes glibc abort the whole
    supervisor: 500 pods once killed it. Attach, list and detach must work there."""
    pod = make_netns("p")
    pod_uuid = str(uuid.uuid4())
    script = f"""
import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
assert max(held) > 1024
from jetpack.stage1.network import linux
linux.ensure_bridge("jetpack0", {HOST_CIDR!r}, host_netns={host!r})
linux.ensure_firewall({HOST_CIDR!r}, host_netns={host!r})
veth = linux.veth_name({pod_uuid!r})
linux.attach_pod("/run/netns/{pod}", "172.23.0.2", 16, "172.23.0.1", bridge="jetpack0",
                 veth_name=veth, pod_uuid={pod_uuid!r}, forwards=[("tcp", 18081, 80, None)],
                 host_netns={host!r})
print(sorted(linux.port_forwards(host_netns={host!r})))
linux.detach_pod(veth, pod_uuid={pod_uuid!r}, host_netns={host!r})
print(sorted(linux.port_forwards(host_netns={host!r})))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == [repr([pod_uuid]), "[]"]


def test_a_refused_script_names_what_it_was_and_carries_nfts_message(host: str) -> None:
    """A script nft refuses raises NetworkError naming the work and nft's own message, and
    applies nothing (one transaction); the same script's valid part then applies alone."""
    ns = f"/run/netns/{host}"
    script = "add table inet jptest\nadd rule ip jpnosuch input counter\n"
    # (libnftables 1.0.6 quotes the first line of a buffer under the message: the column of the
    # refused word is right, its line not; nft -f shows the second line)
    with pytest.raises(NetworkError, match=r"^nftables \(the test's rules\) failed: Error: "
                       r"Could not process rule: No such file or directory\n") as refused:
        linux._in_netns(ns, lambda: linux._nft(script, "the test's rules"))
    assert "^^^^^^^^" in str(refused.value)  # nft's own marker, under the 8 letters of jpnosuch
    assert "jptest" not in tables(host)
    with pytest.raises(NetworkError, match=r"\(a typo\) failed: Error: syntax error"):
        linux._in_netns(ns, lambda: linux._nft("add tabel inet jptest\n", "a typo"))
    linux._in_netns(ns, lambda: linux._nft("add table inet jptest\n", "the table alone"))
    assert "table inet jptest" in tables(host)


def test_a_listing_sees_the_ruleset_of_the_namespace_it_runs_in(
        make_netns: Callable[..., str]) -> None:
    """nftables calls come from threads in several network namespaces (the host's, the one
    ``host_netns`` names) and from several threads at once: each listing shows its own
    namespace's tables, never another's (a context, whose socket stays in the namespace it was
    made in, is never reused)."""
    names = [make_netns("n") for _ in range(2)]
    for ns in names:
        in_ns(ns, "nft", "add", "table", "inet", f"only_{ns.replace('-', '_')}")

    def tables_seen(ns: str | None) -> set[str]:
        def listing() -> str:
            return linux._nft("list tables", "listing tables", listing=True)
        out = json.loads(linux._in_netns(ns and f"/run/netns/{ns}", listing))
        return {item["table"]["name"] for item in out["nftables"] if "table" in item}

    wrong: list[str] = []

    def look(ns: str) -> None:
        for _ in range(15):
            seen = {name for name in tables_seen(ns) if name.startswith("only_")}
            if seen != {f"only_{ns.replace('-', '_')}"}:
                wrong.append(f"{ns} saw {sorted(seen)}")

    look(names[0])
    look(names[1])
    assert not any(name.startswith("only_jp_n") for name in tables_seen(None))
    threads = [threading.Thread(target=look, args=(ns,)) for ns in names * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not wrong, wrong[:4]


def test_a_missing_libnftables_is_a_plain_error_naming_its_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No fallback to another way: without the library every nftables call says which library
    is missing and how to install it."""
    from jetpack.stage1.network import nftables

    monkeypatch.setattr(nftables, "LIBRARY", "libnftables-jp-missing.so.1")
    nftables._library.cache_clear()
    try:
        with pytest.raises(NetworkError, match=r"libnftables-jp-missing\.so\.1: cannot load it") \
                as missing:
            linux._nft("list tables", "listing tables", listing=True)
        assert missing.value.hint is not None
        assert "apt install libnftables1" in missing.value.hint
    finally:
        nftables._library.cache_clear()
