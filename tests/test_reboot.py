"""A host reboot, simulated: with pods running (some enabled for boot, with priorities; one with
a port forward and an empty volume), the supervisor and every pod process are SIGKILLed and the
pods' links, nftables rules, mounts, cgroups and the pod bridge removed, as a reboot would; then
the supervisor starts. Every pod that ran is recorded as lost (an event says so), the
boot-enabled ones start again by priority, and nothing stale is left (tests/inventory.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import inventory

from jetpack.stage1.cgroups import PodCgroup
from jetpack.stage1.network.linux import TABLE, veth_name

from podhost import Host, http_get, import_web_image

# name -> boot priority (None: not enabled); "idle" is enabled but was not running
PODS = {"second": 30, "web": 20, "first": 10, "manual": None, "idle": 5}


def _simulate_reboot(host: Host, uuids: list[str]) -> None:
    """What a reboot takes away: every process, mount, link, rule and cgroup of the pods (and
    the pod bridge); the state root, on disk, stays."""
    assert host.daemon is not None
    host.daemon.kill()
    host.daemon.wait(timeout=30)
    host.daemon = None
    cgroups = [PodCgroup.for_pod(u) for u in uuids]
    deadline = time.monotonic() + 30
    while pids := [pid for cgroup in cgroups for pid in cgroup.pids()]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.monotonic() < deadline, f"pod processes survive SIGKILL: {pids}"
        time.sleep(0.05)
    assert inventory.take(host, set(uuids)).processes == {}
    pods_dir = str(host.jp.root / "pods")
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo if line.split()[4].startswith(pods_dir)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    for name in inventory.take(host, set(uuids)).links:
        subprocess.run(["ip", "link", "del", name], check=True)
    subprocess.run(["ip", "link", "del", host.bridge], check=True)
    _delete_rules(uuids)
    for cgroup in cgroups:
        for directory in cgroup.directories():
            if directory.is_dir():
                directory.rmdir()
    left = inventory.take(host, set(uuids))
    assert (left.mounts, left.links, left.rules, left.cgroups) == ((), frozenset(), (),
                                                                   frozenset())


def _delete_rules(uuids: list[str]) -> None:
    """The pods' rules only: the jetpack tables are shared with other hosts on this machine."""
    marks = set(uuids) | {veth_name(u) for u in uuids}
    for family in ("ip", "bridge"):
        out = subprocess.run(["nft", "-j", "list", "table", family, TABLE],
                             capture_output=True, text=True)
        if out.returncode != 0:
            continue
        for item in json.loads(out.stdout)["nftables"]:
            rule = item.get("rule")
            if rule and any(m in rule.get("comment", "") for m in marks):
                subprocess.run(["nft", "delete", "rule", family, TABLE, rule["chain"],
                                "handle", str(rule["handle"])], check=True)


def test_reboot_marks_lost_pods_and_starts_boot_pods_by_priority(host: Host) -> None:
    import_web_image(host)
    host.start()
    port = 20000 + secrets.randbelow(20000)
    uuids = {}
    for name, priority in PODS.items():
        if name == "web":
            args = ["example.com/web", "-p", f"http:{port}", "-v", "data,kind=empty",
                    "-m", "data:/data"]
        else:
            args = ["example.com/busybox", "--exec", "/bin/sleep 600"]
        uuids[name] = host.jp("prepare", *args, "--name", name).stdout.split()[-1]
        if priority is not None:
            host.jp("enable", name, "--priority", str(priority))
        if name != "idle":
            host.jp("start", name)
    assert http_get(f"http://127.0.0.1:{port}/") == b"hello from the pod\n"
    before = max(int(str(e["seq"])) for e in host.events())

    _simulate_reboot(host, list(uuids.values()))
    host.start()

    boot = [n for n, p in sorted(PODS.items(), key=lambda i: i[1] or 0) if p is not None]
    host.wait_for("the boot pods to run",
                  lambda: all(host.pod(n)["state"] == "running" for n in boot), timeout=90)
    assert host.pod("manual")["state"] == "exited"
    after = [e for e in host.events() if int(str(e["seq"])) > before]
    # every pod that ran is recorded lost, with the reason, before any boot pod starts again
    lost = [e for e in after if e["type"] == "pod.exited"]
    assert {e["pod_name"] for e in lost} == {"second", "web", "first", "manual"}
    assert all("pod lost" in str(e["reason"]) for e in lost)
    started = [e["pod_name"] for e in after if e["type"] == "pod.started"]
    assert started == boot  # by priority: idle 5, first 10, web 20, second 30
    first_start = min(int(str(e["seq"])) for e in after if e["type"] == "pod.started")
    assert all(int(str(e["seq"])) < first_start for e in lost)
    # the port forward and the volume are back
    assert http_get(f"http://127.0.0.1:{port}/") == b"hello from the pod\n"
    inv = inventory.take(host)
    assert inventory.problems(inv) == []
    assert len(inv.links) == len(boot)
    assert host.jp("gc").stdout.count("removed") == 0
    assert not any(Path(host.jp.root / "tmp").iterdir())
