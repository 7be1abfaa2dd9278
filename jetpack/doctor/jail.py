"""What the jail driver and the FreeBSD pod network need from the host: their tools, lo1 with
the host address of ``jail.network``, pf loaded, enabled and evaluating jetpack's anchors,
racct for rctl(8), the devfs ruleset the jails use. Each missing piece comes with the
command and the rc.conf / loader.conf / pf.conf line that makes it last across reboots."""

from __future__ import annotations

import ipaddress

from jetpack.config import Config
from jetpack.doctor.check import Check, probe, tool_checks
from jetpack.stage1.jail import DEFAULT_PARAMS, jail_params
from jetpack.stage1.network.freebsd import ANCHOR_HOOKS, PF_ABSENT

TOOLS = (
    ("jail", "to make and remove jails"),
    ("jls", "to find jails"),
    ("ps", "for jetpack ps"),
    ("mount_nullfs", "to mount volumes"),
    ("ifconfig", "for pod addresses on jail.interface"),
    ("pfctl", "for port forwards and NAT"),
    ("sysctl", "to read kernel settings"),
    ("devfs", "to check devfs rulesets"),
    ("rctl", "for resource isolators"),
    ("gpg", "to check signatures and manage trusted keys"),
)


def jail_checks(config: Config) -> list[Check]:
    checks = tool_checks(TOOLS, "freebsd")
    checks += interface_checks(config["jail.interface"],
                               ipaddress.IPv4Interface(config["jail.network"]))
    checks += pf_checks()
    checks += racct_checks()
    ruleset = jail_params(DEFAULT_PARAMS, config.prefixed("jail.param."), {}).get(
        "devfs_ruleset")
    if ruleset is not None:
        checks += devfs_checks(ruleset)
    return checks


def interface_checks(interface: str, host: ipaddress.IPv4Interface) -> list[Check]:
    """The pods' interface exists and holds the host's address (the metadata service listens
    there, and pods reach the host through it)."""
    persist = (f'sysrc cloned_interfaces+="{interface}"',
               f'sysrc ifconfig_{interface}="inet {host.with_prefixlen}"')
    shown = probe(["ifconfig", interface])
    if not shown.ok:
        return [Check("missing", f"interface {interface} (jail.interface): {shown.error}",
                      (f"ifconfig {interface} create inet {host.with_prefixlen}", *persist))]
    addresses = [line.split()[1] for line in shown.stdout.splitlines()
                 if line.split()[:1] == ["inet"] and len(line.split()) > 1]
    if str(host.ip) not in addresses:
        return [Check("missing", f"interface {interface} does not hold the host address "
                      f"{host.ip} of jail.network {host.with_prefixlen}",
                      (f"ifconfig {interface} inet {host.with_prefixlen} alias", *persist))]
    return [Check("ok", f"interface {interface} holds {host.ip}")]


def pf_checks() -> list[Check]:
    """pf is loaded and enabled, and the main ruleset hooks jetpack's anchors."""
    info = probe(["pfctl", "-s", "info"])
    if not info.ok:
        if PF_ABSENT in info.stderr:
            return [Check("missing", "pf is not loaded (/dev/pf does not exist)",
                          ("kldload pf", "sysrc pf_enable=YES", "service pf start"))]
        return [Check("missing", f"pf: {info.error}")]
    # pfctl -s info's first line: "Status: Enabled for ..." or "Status: Disabled for ..."
    # (sbin/pfctl/pfctl_parser.c, print_status).
    if "Status: Enabled" not in info.stdout:
        return [Check("missing", "pf is loaded but not enabled",
                      ("pfctl -e", "sysrc pf_enable=YES"))]
    checks = [Check("ok", "pf loaded and enabled")]
    shown = {kind: probe(["pfctl", "-s", kind]) for kind in ("nat", "rules")}
    hooked = {tuple(line.split()[:2]) for result in shown.values() if result.ok
              for line in result.stdout.splitlines()}
    missing = [hook for hook in ANCHOR_HOOKS.splitlines()
               if tuple(hook.split()[:2]) not in hooked]
    if missing:
        checks.append(Check(
            "missing", "pf's running ruleset does not evaluate jetpack's anchors "
            f"({', '.join(missing)}): port forwards and NAT would not apply",
            (*(f"{hook}   (/etc/pf.conf: translation anchors before filter rules)"
               for hook in missing), "service pf reload")))
    else:
        checks.append(Check("ok", 'pf evaluates jetpack\'s anchors ("jetpack/*")'))
    return checks


def racct_checks() -> list[Check]:
    """rctl(8) limits, the resource/* isolators, need racct, a boot-time tunable."""
    value = probe(["sysctl", "-n", "kern.racct.enable"])
    fix = ("echo kern.racct.enable=1 >> /boot/loader.conf", "shutdown -r now")
    if not value.ok:
        return [Check("missing", "the kernel has no racct (options RACCT and RCTL): "
                      f"{value.error}", ("use a kernel with options RACCT and RCTL (GENERIC "
                                         "has them)", *fix))]
    if value.stdout.strip() != "1":
        return [Check("missing", "racct is disabled (kern.racct.enable=0): resource "
                      "isolators cannot be enforced", fix)]
    return [Check("ok", "racct enabled (kern.racct.enable=1)")]


def devfs_checks(ruleset: str) -> list[Check]:
    """The devfs ruleset every jail's /dev gets must be loaded, or jails see every device."""
    shown = probe(["devfs", "rule", "-s", ruleset, "show"])
    if shown.ok and shown.stdout.strip():
        return [Check("ok", f"devfs ruleset {ruleset} loaded")]
    where = ("/etc/defaults/devfs.rules defines it (devfsrules_jail)" if ruleset == "4"
             else f"define [name={ruleset}] in /etc/devfs.rules")
    return [Check("missing", f"devfs ruleset {ruleset} (jail devfs_ruleset) is not loaded: "
                  f"{where}", ("service devfs restart",))]
