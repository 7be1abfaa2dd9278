"""What a jetpack host holds outside its database, and whether the two agree.

``take(host)`` reads, from outside jetpack, everything a pod can leave on the machine: its
directory and dataset in the store, mounts under the host's temporary directory, its veth, its
nftables rules, its cgroups and its processes, plus the supervisor's open descriptors and RSS;
and what an interrupted import or build can leave: image trees and the store's tmp area.
The event log's sequence numbers are read too (a gap is a problem).
``problems(inventory)`` lists each resource that the database does not account for (a pod that
is not running holds nothing but its directory, its dataset and its veth's anti-spoofing rules;
a pod the database does not know holds nothing at all) and each pod stuck in a transitional
state. The crash-consistency tests, the reboot simulation and the soak benchmark share it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jetpack.stage1 import cgroups
from jetpack.stage1.network.linux import TABLE, veth_name

from podhost import Host

TRANSITIONAL = ("starting", "stopping")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Inventory:
    pods: dict[str, str]            # uuid -> state, from `jetpack list --json`
    pod_dirs: frozenset[str]        # entries of <root>/pods
    datasets: frozenset[str]        # pod datasets (zfs storage), by uuid
    mounts: tuple[str, ...]         # mount points under the host's directory (not the store's)
    links: frozenset[str]           # interfaces enslaved to the host's bridge
    rules: tuple[str, ...]          # comments of nftables rules in the jetpack table
    cgroups: frozenset[str]         # pod uuids with a cgroup in any hierarchy
    processes: dict[int, str]       # pid -> pod uuid, for processes whose root is a pod's
    supervisor_fds: int | None
    supervisor_rss_kib: int | None
    images: frozenset[str] = frozenset()        # image IDs, from `jetpack images --json`
    image_trees: frozenset[str] = frozenset()   # entries of <root>/images (less staging locks)
    tmp: frozenset[str] = frozenset()           # entries of <root>/tmp
    event_seqs: tuple[int, ...] = ()            # the event log's sequence numbers, in order

    def summary(self) -> dict[str, int | None]:
        """Counts for a table row (the soak benchmark)."""
        return {"pods": len(self.pods), "mounts": len(self.mounts), "links": len(self.links),
                "rules": len(self.rules), "cgroups": len(self.cgroups),
                "processes": len(self.processes), "fds": self.supervisor_fds,
                "rss_kib": self.supervisor_rss_kib}


def take(host: Host, known: set[str] | None = None) -> Inventory:
    """The host's resources now. ``known``: pod uuids to look for besides the database's (for
    example every pod the event log ever named); cgroups and rules of other hosts on the same
    machine are ignored unless their uuid is known here."""
    pods = {p["uuid"]: p["state"] for p in json.loads(host.jp("list", "--json").stdout)}
    events = host.events()
    uuids = set(pods) | (known or set()) | {str(e["pod"]) for e in events if e.get("pod")}
    store = host.jp.root / "pods"
    pod_dirs = frozenset(p.name for p in store.iterdir()) if store.is_dir() else frozenset()
    daemon = host.daemon.pid if host.daemon is not None and host.daemon.poll() is None else None
    return Inventory(
        pods=pods, pod_dirs=pod_dirs, datasets=_datasets(host), mounts=_mounts(host),
        links=_links(host.bridge), rules=_rules(uuids, {veth_name(u) for u in uuids}),
        cgroups=frozenset(p.name for p in cgroups.leftover_cgroups() if p.name in uuids),
        processes=_processes(uuids),
        supervisor_fds=len(os.listdir(f"/proc/{daemon}/fd")) if daemon else None,
        supervisor_rss_kib=_rss_kib(daemon) if daemon else None,
        images=frozenset(i["id"] for i in json.loads(host.jp("images", "--json").stdout)),
        image_trees=_entries(host.jp.root / "images", skip_locks=True),
        tmp=_entries(host.jp.root / "tmp"),
        event_seqs=tuple(int(str(e["seq"])) for e in events))


def problems(inv: Inventory) -> list[str]:
    """Every disagreement between the database and the machine (empty when consistent)."""
    found = [f"pod {u} stuck in {s}" for u, s in inv.pods.items() if s in TRANSITIONAL]
    running = {u for u, s in inv.pods.items() if s == "running"}
    found += [f"pod directory {d} not in the database" for d in inv.pod_dirs - set(inv.pods)]
    found += [f"pod {u} in the database has no directory" for u in set(inv.pods) - inv.pod_dirs]
    found += [f"dataset of pod {d} not in the database" for d in inv.datasets - set(inv.pods)]
    found += [f"mount {m} of a pod that is not running" for m in inv.mounts
              if _owner(m) not in running]
    live_veths = {veth_name(u) for u in running}
    found += [f"link {name} of a pod that is not running" for name in inv.links
              if name not in live_veths]
    # a port forward lives while its pod runs; a veth's anti-spoofing rules while its pod
    # exists (a stopped pod keeps them for its next start)
    existing = {veth_name(u) for u in inv.pods}
    found += [f"nftables rule '{c}' of a pod that is not running" for c in inv.rules
              if not c.startswith("veth ") and not any(u in c for u in running)]
    found += [f"nftables rule '{c}' of a pod that does not exist" for c in inv.rules
              if c.startswith("veth ") and c.removeprefix("veth ") not in existing]
    found += [f"cgroup of pod {u}, which is not running" for u in inv.cgroups - running]
    found += [f"process {pid} of pod {u}, which is not running"
              for pid, u in inv.processes.items() if u not in running]
    found += [f"image tree {t} not in the database" for t in inv.image_trees - inv.images]
    found += [f"image {i} in the database has no tree" for i in inv.images - inv.image_trees]
    found += [f"leftover {t} in the tmp area" for t in sorted(inv.tmp)]
    found += [f"event log gap: seq {a} then {b}"
              for a, b in zip(inv.event_seqs, inv.event_seqs[1:], strict=False) if b != a + 1]
    return found


def _entries(path: Path, *, skip_locks: bool = False) -> frozenset[str]:
    """Names in ``path``; ``skip_locks``: less a zfs store's staging locks (``tmp-*.lock``,
    which the staging dataset's own entry accompanies)."""
    if not path.is_dir():
        return frozenset()
    return frozenset(p.name for p in path.iterdir()
                     if not (skip_locks and p.name.endswith(".lock")))


def _owner(path: str) -> str | None:
    match = _UUID.search(path)
    return match.group(0) if match else None


def _datasets(host: Host) -> frozenset[str]:
    conf = host.jp.conf.read_text()
    match = re.search(r"^root\.zfs\s*=\s*(\S+)", conf, re.M)
    if not match:
        return frozenset()
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-r", f"{match.group(1)}/pods"],
                         capture_output=True, text=True)
    return frozenset(name.rsplit("/", 1)[1] for name in out.stdout.split()
                     if _UUID.fullmatch(name.rsplit("/", 1)[1]))


def _mounts(host: Host) -> tuple[str, ...]:
    """Mount points under the host's directory, less the store's own zfs datasets (the root and
    images stay mounted while the host lives; a pod's clone is counted)."""
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            point, fstype = fields[4], fields[fields.index("-") + 1]
            if not point.startswith(str(host.tmp)):
                continue
            if fstype == "fuse.zfs" and "/pods/" not in point:
                continue
            found.append(point)
    return tuple(found)


def _links(bridge: str) -> frozenset[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge],
                         capture_output=True, text=True)
    return frozenset(line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines())


def _rules(uuids: set[str], veths: set[str]) -> tuple[str, ...]:
    """Comments of the rules naming one of ``uuids`` (forwards, in ``table ip``) or one of
    ``veths`` (anti-spoofing, in ``table bridge``)."""
    comments = []
    for family in ("ip", "bridge"):
        out = subprocess.run(["nft", "-j", "list", "table", family, TABLE],
                             capture_output=True, text=True)
        if out.returncode == 0:
            comments += [item["rule"].get("comment", "")
                         for item in json.loads(out.stdout)["nftables"] if "rule" in item]
    return tuple(c for c in comments
                 if any(u in c for u in uuids) or any(v in c for v in veths))


def _processes(uuids: set[str]) -> dict[int, str]:
    """Live processes in the cgroup of one of ``uuids`` (a pod's processes live in their own
    mount namespace, so their root directory says nothing from here; their cgroup does). A
    zombie is not counted: it holds nothing but its pid, and once reparented to the host's init
    it is reaped there, a moment after its pod's cgroup is gone."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as membership:
                text = membership.read()
            with open(f"/proc/{entry}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        for match in _UUID.finditer(text):
            if match.group(0) in uuids and f"{cgroups.PARENT}/{match.group(0)}" in text:
                found[int(entry)] = match.group(0)
                break
    return found


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
