"""FreeBSD resource limits: a pod's jail limited with rctl(8) rules (``jail:<name>:...``).

The rctl counterpart of cgroups.py, taking the same ``Limits``; synchronous, thin.
"""

from __future__ import annotations

from jetpack.errors import IsolationError
from jetpack.stage1.cgroups import Limits
from jetpack.stage1.network.command import run


def _subject(jail_name: str) -> str:
    if not jail_name or ":" in jail_name or any(c.isspace() for c in jail_name):
        raise IsolationError(f"jail name {jail_name!r} cannot be an rctl subject")
    return f"jail:{jail_name}"


def rctl_rules(jail_name: str, limits: Limits) -> list[str]:
    """The rules enforcing ``limits`` on jail ``jail_name`` (memory, pcpu, maxproc)."""
    subject = _subject(jail_name)
    rules = []
    if limits.memory_bytes is not None:
        rules.append(f"{subject}:memoryuse:deny={limits.memory_bytes}")
    if limits.cpu_millicores is not None:
        # pcpu is a percentage of one CPU: 500m is 50, 2 cores are 200.
        rules.append(f"{subject}:pcpu:deny={max(1, limits.cpu_millicores // 10)}")
    if limits.pids is not None:
        rules.append(f"{subject}:maxproc:deny={limits.pids}")
    return rules


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
