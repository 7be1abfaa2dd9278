"""Containment from the attacker's side (issue 15, items 6, 11 and the network part of 12):
security settings in a pod manifest given with ``prepare -f`` are honoured or refused, the state
root is root-only on both storage drivers while setuid binaries still work inside pods, and a pod
with the default CAP_NET_RAW cannot forge another pod's address on the bridge."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jetpack.stage1.network import linux

from acis import aci_from_entries, dir_entry, file_entry, manifest, manifest_entry
from conftest import require
from podhost import Host

BUSYBOX = {"name": "example.com/busybox"}
RUN_LIMITED = ("ping -c1 -W2 {gw}; echo ping=$?; "
               "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo dd=$?")


def pod_manifest(apps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": apps, **extra}


def sh_app(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": BUSYBOX, "app": {
        "exec": ["/bin/sh", "-c", script], "user": "0", "group": "0", **extra.pop("app", {})},
        **extra}


def prepare_f(host: Host, data: dict[str, Any], *, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
    path = host.tmp / "pod.json"
    path.write_text(json.dumps(data))
    return host.jp("prepare", "-f", str(path), check=check)


def app_log(host: Host, pod: str, app: str) -> str:
    return (host.jp.root / "pods" / pod / "logs" / f"{app}.log").read_text()


# --- item 6: prepare -f ----------------------------------------------------------------------


def test_attack_prepare_f_drops_app_and_pod_isolators(host: Host) -> None:
    """A memory limit and a capabilities-remove-set, given per app and for the whole pod in a
    pod manifest, are what the running pod gets (they were dropped: exit 0, no warning)."""
    host.start()
    gateway = host.network.split("/")[0]
    script = RUN_LIMITED.format(gw=gateway)
    limits = [{"name": "resource/memory", "value": {"limit": "64M"}},
              {"name": "os/linux/capabilities-remove-set", "value": {"set": ["CAP_NET_RAW"]}}]
    per_app = prepare_f(host, pod_manifest([sh_app("limited", script,
                                                   app={"isolators": limits})]))
    per_pod = prepare_f(host, pod_manifest([sh_app("limited", script)], isolators=limits))
    for prepared in (per_app, per_pod):
        pod = prepared.stdout.split()[-1]
        out = host.jp("run", pod, check=False)
        assert re.search(r"^ping=[1-9]", out.stdout, re.MULTILINE), out.stdout  # no raw socket
        assert "dd=137" in out.stdout, out.stdout  # the OOM killer at 64M
        reified = json.loads(host.jp("manifest", pod).stdout)
        given = reified["apps"][0]["app"].get("isolators", []) + reified["isolators"]
        assert [i["name"] for i in given] == ["resource/memory",
                                              "os/linux/capabilities-remove-set"]
    # the legitimate use: the same script with the defaults pings and allocates
    default = prepare_f(host, pod_manifest([sh_app("free", script)])).stdout.split()[-1]
    out = host.jp("run", default, check=False)
    assert "ping=0" in out.stdout, out.stdout
    assert "dd=0" in out.stdout, out.stdout


def test_attack_prepare_f_drops_read_only_settings(host: Host, tmp_path: Path) -> None:
    """readOnlyRootFS, a read-only volume and a read-only mount of a writable volume, given in a
    pod manifest, make writes there fail (they were dropped: the app wrote everywhere)."""
    host.start()
    sources = {name: tmp_path / name for name in ("rovol", "rwvol", "scratch")}
    for source in sources.values():
        source.mkdir()
    script = ("for d in / /ro-volume /ro-mount /rw; do touch $d/probe 2>/dev/null "
              "&& echo $d=written || echo $d=refused; done")
    data = pod_manifest(
        [sh_app("writer", script, readOnlyRootFS=True, mounts=[
            {"volume": "rovol", "path": "/ro-volume"},
            {"volume": "rwvol", "path": "/ro-mount", "readOnly": True},
            {"volume": "scratch", "path": "/rw"}])],
        volumes=[{"name": "rovol", "kind": "host", "source": str(sources["rovol"]),
                  "readOnly": True},
                 {"name": "rwvol", "kind": "host", "source": str(sources["rwvol"])},
                 {"name": "scratch", "kind": "host", "source": str(sources["scratch"])}])
    pod = prepare_f(host, data).stdout.split()[-1]
    out = host.jp("run", pod, check=False)
    assert out.stdout.split() == ["/=refused", "/ro-volume=refused", "/ro-mount=refused",
                                  "/rw=written"], out.stdout
    assert [p.name for p in tmp_path.glob("*/probe")] == ["probe"]  # only in scratch
    reified = json.loads(host.jp("manifest", pod).stdout)
    app = reified["apps"][0]
    assert app["readOnlyRootFS"] is True
    assert app["mounts"][1] == {"volume": "rwvol", "path": "/ro-mount", "readOnly": True}
    assert reified["volumes"][0]["readOnly"] is True


@pytest.mark.parametrize(("change", "field"), [
    (lambda m: m["apps"][0]["app"].update(isolators=[
        {"name": "resource/memory", "value": {"limit": "64M"}},
        {"name": "resource/network-bandwidth", "value": {"default": True, "limit": "1G"}}]),
     "apps[0].app.isolators[1]"),
    (lambda m: m.update(isolators=[{"name": "example.com/frobnicate", "value": {}}]),
     "isolators[0]"),
    (lambda m: m["apps"][0]["app"].update(isolators=[
        {"name": "os/unix/sysctl", "value": {"vm.swappiness": "0"}}]),
     "apps[0].app.isolators[0]"),
    (lambda m: m["apps"][0]["app"].update(isolators=[
        {"name": "os/unix/sysctl", "value": {"net.ipv4.ip_forward": "1"}}]),
     "apps[0].app.isolators[0]"),
    (lambda m: (m["apps"][0]["app"].update(isolators=[
        {"name": "resource/memory", "value": {"limit": "64M"}}]),
                m["apps"].append(sh_app("unlimited", "true"))),
     "apps[0].app.isolators[0]"),
    (lambda m: m["apps"][0]["app"].update(ports=[
        {"name": "http", "protocol": "sctp", "port": 80, "socketActivated": True}]),
     "apps[0].app.ports[0].protocol"),
    (lambda m: m.update(ports=[{"name": "http", "hostPort": 8080, "podPort": {
        "name": "http", "protocol": "tcp", "port": 80, "socketActivated": True}}]),
     "ports[0].podPort.socketActivated"),
])
def test_attack_prepare_f_with_an_unsupported_field_is_refused(
        host: Host, change: Any, field: str) -> None:
    """What jetpack cannot enforce is refused, naming the field; nothing is prepared."""
    data = pod_manifest([sh_app("app", "true")])
    change(data)
    out = prepare_f(host, data, check=False)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert field in out.stderr, out.stderr
    assert json.loads(host.jp("list", "--json").stdout) == []


def test_prepare_f_keeps_metadata_and_pod_ports_in_the_reified_manifest(host: Host) -> None:
    data = pod_manifest(
        [sh_app("web", "true", annotations=[{"name": "team", "value": "blue"}],
                mounts=[{"volume": "data", "path": "/data", "appVolume": {
                    "name": "data", "kind": "empty", "mode": "0700", "uid": 1000,
                    "gid": 1000}}])],
        ports=[{"name": "web", "hostPort": 18080,
                "podPort": {"name": "web", "protocol": "tcp", "port": 80}}],
        userAnnotations={"owner": "ops"}, userLabels={"tier": "front"})
    pod = prepare_f(host, data).stdout.split()[-1]
    reified = json.loads(host.jp("manifest", pod).stdout)
    assert reified["apps"][0]["annotations"] == [{"name": "team", "value": "blue"}]
    assert reified["volumes"] == [{"name": "data", "kind": "empty", "mode": "0700",
                                   "uid": 1000, "gid": 1000}]
    assert reified["ports"][0]["podPort"] == {"name": "web", "protocol": "tcp", "port": 80}
    assert reified["userAnnotations"] == {"owner": "ops"}
    assert reified["userLabels"] == {"tier": "front"}


# --- item 11: the state root is root-only ----------------------------------------------------


@pytest.fixture
def traversable(tmp_path: Path) -> Iterator[None]:
    """pytest's own temporary directories are 0700: open them to other users for the test
    (so only jetpack's own modes stand between them and the state), then close them again."""
    saved = []
    path = tmp_path
    while path != path.parent and str(path).startswith("/tmp/"):
        saved.append((path, path.stat().st_mode & 0o7777))
        path.chmod(0o755)
        path = path.parent
    yield
    for path, mode in saved:
        path.chmod(mode)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux)")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           *argv], capture_output=True, text=True, errors="replace", timeout=30)


def suid_image(host: Host) -> Path:
    """busybox as a setuid-root ``busybox-suid`` and a root account without a password: an
    image's ``su``, as a non-root user runs it."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    passwd = (host.jp.root.parent / "rootfs" / "etc" / "passwd").read_text()
    return aci_from_entries(host.tmp / "suid.aci", [
        manifest_entry(manifest("example.com/suid", dependencies=[
            {"imageName": "example.com/busybox"}], app={
                "exec": ["/bin/busybox-suid", "su", "root", "-c", "id -u"],
                "user": "1000", "group": "1000"})),
        dir_entry("rootfs"), dir_entry("rootfs/bin"), dir_entry("rootfs/etc"),
        file_entry("rootfs/bin/busybox-suid", busybox, mode=0o4755),
        file_entry("rootfs/etc/passwd", passwd.replace("root:x:", "root::").encode()),
    ])


@pytest.mark.usefixtures("traversable")
@pytest.mark.parametrize("storage", ["dir", "zfs"], indirect=True)
def test_attack_host_user_reads_the_state_root(host: Host) -> None:
    """A host user other than root reads neither the database (pods' environment) nor an
    image's or a pod's tree; a non-root app and an image's setuid ``su`` still work."""
    host.start()
    root = host.jp.root
    host.jp("prepare", "example.com/busybox", "-e", "SECRET=hunter2")
    assert as_nobody("cat", str(root / "jetpack.db")).returncode != 0
    for sub in ("images", "pods"):
        out = as_nobody("ls", str(root / sub))
        assert out.returncode != 0
        assert "Permission denied" in out.stderr, out
    assert root.stat().st_mode & 0o777 == 0o700
    for name in ("jetpack.db", "jetpack.db-wal", "jetpack.db-shm"):
        if (root / name).exists():
            assert (root / name).stat().st_mode & 0o777 == 0o600, name
    # init fixes a root made world-readable (by an older jetpack)
    root.chmod(0o755)
    (root / "jetpack.db").chmod(0o644)
    host.jp("init")
    assert root.stat().st_mode & 0o777 == 0o700
    assert (root / "jetpack.db").stat().st_mode & 0o777 == 0o600
    # the legitimate uses: a non-root app runs, an image's setuid su elevates inside the pod
    out = host.jp("run", "--rm", "example.com/busybox", "--user", "1000", "--group", "1000",
                  "--exec", "/bin/sh -c 'id -u; ls / >/dev/null && echo listed'")
    assert out.stdout.split() == ["1000", "listed"], out.stdout
    host.jp("import", str(suid_image(host)))
    out = host.jp("run", "--rm", "example.com/suid", check=False)
    assert out.stdout.split() == ["0"], (out.stdout, out.stderr)


# --- item 12: anti-spoofing on the bridge ----------------------------------------------------

ARPSPOOF_C = r"""
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/if_ether.h>
#include <netpacket/packet.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* arpspoof IFACE CLAIMED_IP TARGET_IP: ARP requests claiming CLAIMED_IP with this MAC */
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ARP));
    if (s < 0) { perror("socket"); return 1; }
    struct ifreq ifr; memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    unsigned char mac[6]; memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    if (ioctl(s, SIOCGIFINDEX, &ifr) < 0) { perror("SIOCGIFINDEX"); return 1; }
    unsigned char frame[42]; memset(frame, 0, sizeof frame);
    memset(frame, 0xff, 6); memcpy(frame + 6, mac, 6);
    frame[12] = 0x08; frame[13] = 0x06;
    struct ether_arp *arp = (struct ether_arp *)(frame + 14);
    arp->arp_hrd = htons(ARPHRD_ETHER); arp->arp_pro = htons(ETH_P_IP);
    arp->arp_hln = 6; arp->arp_pln = 4; arp->arp_op = htons(ARPOP_REQUEST);
    memcpy(arp->arp_sha, mac, 6);
    inet_pton(AF_INET, argv[2], arp->arp_spa);
    inet_pton(AF_INET, argv[3], arp->arp_tpa);
    struct sockaddr_ll to; memset(&to, 0, sizeof to);
    to.sll_family = AF_PACKET; to.sll_ifindex = ifr.ifr_ifindex; to.sll_halen = 6;
    memset(to.sll_addr, 0xff, 6);
    for (int i = 0; i < 3; i++) {
        if (sendto(s, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) < 0) {
            perror("sendto"); return 1;
        }
        usleep(100000);
    }
    puts("sent 3");
    return 0;
}
"""


def arpspoof_image(host: Host) -> Path:
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc (to build a static raw-socket attacker)")
    assert gcc is not None
    source = host.tmp / "arpspoof.c"
    source.write_text(ARPSPOOF_C)
    binary = host.tmp / "arpspoof"
    built = subprocess.run([gcc, "-static", "-O2", "-o", str(binary), str(source)],
                           capture_output=True, text=True, timeout=120)
    require(built.returncode == 0, f"a static libc for gcc ({built.stderr.strip()[-200:]})")
    return aci_from_entries(host.tmp / "arpspoof.aci", [
        manifest_entry(manifest("example.com/arpspoof", dependencies=[
            {"imageName": "example.com/busybox"}])),
        dir_entry("rootfs"), dir_entry("rootfs/bin"),
        file_entry("rootfs/bin/arpspoof", binary.read_bytes(), mode=0o755),
    ])


def neighbour_mac(host: Host, ip: str) -> str | None:
    out = subprocess.run(["ip", "-j", "neigh", "show", ip, "dev", host.bridge],
                         capture_output=True, text=True, check=True).stdout
    entries = json.loads(out or "[]")
    return entries[0].get("lladdr") if entries else None


def start_pod(host: Host, *args: str) -> str:
    pod = host.jp("prepare", *args).stdout.split()[-1]
    host.jp("start", pod)
    host.wait_for(f"pod {pod} running", lambda: host.pod(pod)["state"] == "running")
    return pod


def test_attack_pod_poisons_the_host_arp_cache_with_net_raw(host: Host) -> None:
    """With the default CAP_NET_RAW a pod sends ARP requests claiming another pod's address:
    the host's neighbour entry for the victim must keep the victim's MAC, and the bridge's
    anti-spoofing rule counts the forged frames (they poisoned the cache)."""
    poison_the_host_arp_cache(host, restarted=False)


def test_attack_pod_stopped_and_started_again_poisons_the_host_arp_cache(host: Host) -> None:
    """The same attack from a pod stopped and started again: its anti-spoofing chain, kept
    while it was stopped, is the one of its first start (same rule handles: the start deleted
    and flushed nothing) and still drops the forged frames; destroyed, nothing of it stays."""
    poison_the_host_arp_cache(host, restarted=True)


def bridge_chains() -> str:
    return subprocess.run(["nft", "list", "chains", "bridge"], capture_output=True,
                          text=True).stdout


def poison_the_host_arp_cache(host: Host, *, restarted: bool) -> None:
    host.jp("import", str(arpspoof_image(host)))
    host.start()
    gateway = host.network.split("/")[0]
    victim = start_pod(host, "example.com/busybox", "--exec", "/bin/sleep 300")
    victim_ip = str(host.pod(victim)["ip"])
    trigger = host.tmp / "trigger"
    trigger.mkdir()
    attacker = start_pod(
        host, "example.com/arpspoof", "-m", "trigger:/trigger", "--exec",
        f"/bin/sh -c 'while [ ! -e /trigger/go ]; do sleep 0.1; done; "
        f"/bin/arpspoof eth0 {victim_ip} {gateway}; "
        f"ping -c1 -W5 {gateway} >/dev/null && echo ping ok; sleep 300'",
        "-v", f"trigger,kind=host,source={trigger}")
    veth = linux.veth_name(attacker)
    if restarted:
        handles = [rule["handle"] for rule in linux.antispoof_rules(veth)]
        assert len(handles) == 5
        host.jp("stop", attacker)
        assert [rule["handle"] for rule in linux.antispoof_rules(veth)] == handles
        host.jp("start", attacker)
        host.wait_for(f"pod {attacker} running",
                      lambda: host.pod(attacker)["state"] == "running")
        assert [rule["handle"] for rule in linux.antispoof_rules(veth)] == handles
    # the host learns the victim's MAC once every veth is on the bridge (a port joining the
    # bridge may change its address, which flushes the host's neighbour table)
    subprocess.run(["busybox", "ping", "-c1", "-W5", victim_ip], check=True,
                   capture_output=True)
    victim_mac = neighbour_mac(host, victim_ip)
    assert victim_mac is not None
    (trigger / "go").touch()
    # the attacker's ping leaves after its forged frames: once it answered, they were seen
    host.wait_for("the attacker's ping", lambda: "ping ok" in app_log(host, attacker,
                                                                      "arpspoof"))
    assert "sent 3" in app_log(host, attacker, "arpspoof")  # the raw socket sent them
    assert neighbour_mac(host, victim_ip) == victim_mac
    counters = {json.dumps(r["expr"]): next(e["counter"]["packets"] for e in r["expr"]
                                            if "counter" in e)
                for r in linux.antispoof_rules(veth)}
    assert [n for rule, n in counters.items() if '"saddr ip"' in rule] == [3], counters
    # the legitimate use goes on: the victim stays reachable with its own address
    subprocess.run(["busybox", "ping", "-c1", "-W5", victim_ip], check=True, capture_output=True)
    assert neighbour_mac(host, victim_ip) == victim_mac
    host.jp("stop", attacker)
    host.jp("destroy", attacker)
    assert linux.antispoof_rules(veth) == []  # removed with the pod
    assert veth not in bridge_chains()
