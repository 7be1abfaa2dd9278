"""What the Linux driver and its pod network need from the host: ip, libnftables (a pod's rules
go through it in-process, as do links and addresses through netlink: no nft process, no
nsenter), an nftables-capable kernel, the cgroup controllers limits are enforced with, and
bridges."""

from __future__ import annotations

import shutil

from jetpack.doctor.check import Check, probe, tool_checks

TOOLS = (
    ("ip", "for the bridge and the pods' veths"),
    ("gpg", "to check signatures and manage trusted keys"),
)
# The controllers the driver puts every pod under (stage1/cgroups.py): memory and pids limits,
# the device allow-list.
CONTROLLERS = ("memory", "pids", "devices")
PROBE_BRIDGE = "jpdoctor0"


def linux_checks() -> list[Check]:
    checks = tool_checks(TOOLS, "linux")
    checks += nftables_checks()
    checks += cgroup_checks()
    checks += bridge_checks()
    return checks


def nftables_checks() -> list[Check]:
    """libnftables loads and the kernel answers it (the library jetpack's rules go through)."""
    from jetpack.errors import JetpackError
    from jetpack.stage1.network import nftables

    try:
        nftables.run("list tables")
    except JetpackError as exc:  # the library is missing
        return [Check("missing", f"nftables: {exc}", ("apt install libnftables1",))]
    except nftables.NftablesError as exc:
        return [Check("missing", f"nftables: {exc}",
                      ("modprobe nf_tables", "echo nf_tables > /etc/modules-load.d/jetpack.conf"))]
    return [Check("ok", f"nftables answers ({nftables.LIBRARY}: list tables)")]


def cgroup_checks() -> list[Check]:
    from jetpack.errors import JetpackError
    from jetpack.stage1.cgroups import detect_layout

    try:
        layout = detect_layout()
    except JetpackError as exc:
        return [Check("missing", f"cgroups: {exc}")]
    absent = [c for c in CONTROLLERS if layout.controller_dir(c) is None
              # cgroup v2 has no devices controller: the allow-list is an eBPF program there.
              and not (c == "devices" and layout.unified is not None)]
    if not absent:
        return [Check("ok", f"cgroups ({layout.kind}: {', '.join(CONTROLLERS)})")]
    return [Check("missing", f"cgroup controllers not mounted: {', '.join(absent)} "
                  f"(layout {layout.kind})",
                  ("mount -t cgroup2 none /sys/fs/cgroup   (or the v1 controllers, "
                   "e.g. mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory)",
                   "for cgroup v2 controllers: echo '+memory +pids' > "
                   "/sys/fs/cgroup/cgroup.subtree_control"))]


def bridge_checks() -> list[Check]:
    """Whether the kernel makes bridges: one made and dropped in a throwaway network namespace
    (gone with it), so the host's own links are never touched."""
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return []
    made = probe(["unshare", "--net", "ip", "link", "add", PROBE_BRIDGE, "type", "bridge"])
    if made.ok:
        return [Check("ok", "bridges (a test bridge was made in a throwaway namespace)")]
    return [Check("missing", f"the kernel makes no bridge: {made.error}",
                  ("modprobe bridge", "echo bridge > /etc/modules-load.d/jetpack.conf"))]
