"""FreeBSD resource limits: a pod's jail limited with rctl(8) rules (``jail:<name>:...``).

The rctl counterpart of cgroups.py, taking the same ``Limits``; synchronous, thin.

Rules go on the pod jail and reach its app jails: rctl_rule_add() links a ``jail`` rule to
every process whose prison or any ancestor prison is the rule's subject (sys/kern/kern_rctl.c,
the ``for (pr = cred->cr_prison; pr != NULL; pr = pr->pr_parent)`` loop), and racct accounts a
child jail's usage to each ancestor too (kern_racct.c, racct_add_cred_locked). A linked rule is
measured against the racct of the process's own jail (rctl_proc_rule_to_racct, ``rr_per`` =
jail), so each app jail is held to the pod's amount; see docs/freebsd.md ("rctl").
"""

from __future__ import annotations

import subprocess

from jetpack.errors import IsolationError
from jetpack.stage1.cgroups import Limits
from jetpack.stage1.network.command import run

RACCT_TUNABLE = "kern.racct.enable"


def _subject(jail_name: str) -> str:
    if not jail_name or ":" in jail_name or any(c.isspace() for c in jail_name):
        raise IsolationError(f"jail name {jail_name!r} cannot be an rctl subject")
    return f"jail:{jail_name}"


def rctl_rules(jail_name: str, limits: Limits) -> list[str]:
    """The rules enforcing ``limits`` on jail ``jail_name``: memoryuse (resident memory, as a
    cgroup's memory limit), pcpu, maxproc, and the block I/O throttles."""
    subject = _subject(jail_name)
    rules = []
    if limits.memory_bytes is not None:
        rules.append(f"{subject}:memoryuse:deny={limits.memory_bytes}")
    if limits.cpu_millicores is not None:
        # pcpu is a percentage of one CPU: 500m is 50, 2 cores are 200.
        rules.append(f"{subject}:pcpu:deny={max(1, limits.cpu_millicores // 10)}")
    if limits.pids is not None:
        rules.append(f"{subject}:maxproc:deny={limits.pids}")
    # Block I/O cannot be denied, only throttled (rctl(8), RESOURCES: "throttle" applies to
    # readbps, writebps, readiops, writeiops); appc's one limit applies to reads and writes.
    if limits.block_bps is not None:
        rules += [f"{subject}:readbps:throttle={limits.block_bps}",
                  f"{subject}:writebps:throttle={limits.block_bps}"]
    if limits.block_iops is not None:
        rules += [f"{subject}:readiops:throttle={limits.block_iops}",
                  f"{subject}:writeiops:throttle={limits.block_iops}"]
    return rules


def _limit_names(limits: Limits) -> list[str]:
    names = [name for name, value in (
        ("resource/memory", limits.memory_bytes), ("resource/cpu", limits.cpu_millicores),
        ("resource/block-bandwidth", limits.block_bps),
        ("resource/block-iops", limits.block_iops)) if value is not None]
    if limits.pids is not None:
        names.append(f"the pod's process limit ({limits.pids})")
    return names


def check_racct(limits: Limits) -> None:
    """Refuse ``limits`` when the kernel cannot enforce them: racct disabled (the loader
    tunable kern.racct.enable is 0, the GENERIC default) or not compiled in. Cheap: one
    sysctl(8)."""
    names = _limit_names(limits)
    if not names:
        return
    try:
        found = subprocess.run(["sysctl", "-n", RACCT_TUNABLE], capture_output=True, text=True,
                               check=False)
        value, ok, err = found.stdout.strip(), found.returncode == 0, found.stderr.strip()
    except OSError as exc:  # no sysctl(8) at all: not a FreeBSD host
        value, ok, err = "", False, str(exc)
    if ok and value not in ("", "0"):
        return
    why = (f"racct is disabled ({RACCT_TUNABLE}=0)" if ok
           else f"the kernel has no racct (sysctl {RACCT_TUNABLE}: {err or 'unknown oid'})")
    raise IsolationError(
        f"{', '.join(names)} cannot be enforced: {why}; add {RACCT_TUNABLE}=1 to "
        "/boot/loader.conf and reboot",
        hint="a loader tunable: it cannot be set at run time (rctl(8))")


def apply_limits(jail_name: str, limits: Limits) -> list[str]:
    """Add the rules for ``limits`` (``rctl -a``); on failure none stays. Returns them."""
    rules = rctl_rules(jail_name, limits)
    try:
        for rule in rules:
            run(["rctl", "-a", rule], error=IsolationError)
    except IsolationError:
        remove_limits(jail_name)
        raise
    return rules


def remove_limits(jail_name: str) -> None:
    """Remove every rule of the jail (``rctl -r jail:<name>``); idempotent."""
    try:
        run(["rctl", "-r", _subject(jail_name)], error=IsolationError)
    except IsolationError as exc:
        if "No such process" not in str(exc):  # ESRCH: the jail had no rules left
            raise


def jail_usage(jail_name: str) -> dict[str, int]:
    """The jail's resource usage, ``rctl -u jail:<name>`` (rctl(8): one ``resource=amount`` a
    line; amounts in plain units without ``-h``: bytes, seconds, counts)."""
    from jetpack.stage1.usage import parse_rctl_usage

    return parse_rctl_usage(run(["rctl", "-u", _subject(jail_name)], error=IsolationError,
                                timeout=10))
