"""From an app's and its pod's appc isolators to what stage1 applies: the ``IsolatorPlan``.

Pure: it validates and decides, the drivers apply (cgroups/rctl, capabilities, seccomp). An
isolator jetpack does not know or does not enforce becomes a warning, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jetpack.errors import ValidationError
from jetpack.hostinfo import PlatformKind, platform_kind
from jetpack.stage1.capabilities import capability_set
from jetpack.stage1.cgroups import DEFAULT_PIDS_LIMIT, Limits, parse_bytes, parse_millicores
from jetpack.stage1.seccomp import SeccompFilter, seccomp_filter

MEMORY = "resource/memory"
CPU = "resource/cpu"
CAPS_RETAIN = "os/linux/capabilities-retain-set"
CAPS_REMOVE = "os/linux/capabilities-remove-set"
NO_NEW_PRIVILEGES = "os/linux/no-new-privileges"
SECCOMP_RETAIN = "os/linux/seccomp-retain-set"
SECCOMP_REMOVE = "os/linux/seccomp-remove-set"
SYSCTL = "os/unix/sysctl"

BLOCK_BANDWIDTH = "resource/block-bandwidth"
BLOCK_IOPS = "resource/block-iops"
# Enforced only by a driver whose capabilities say ``block_io_limits`` (rctl throttles).
BLOCK_IO = (BLOCK_BANDWIDTH, BLOCK_IOPS)

RESOURCES = (MEMORY, CPU)
APP_ONLY = (CAPS_RETAIN, CAPS_REMOVE, NO_NEW_PRIVILEGES, SECCOMP_RETAIN, SECCOMP_REMOVE)
LINUX_ONLY = APP_ONLY
# Known to appc, not enforced by jetpack (yet): reported, never silently dropped.
NOT_ENFORCED = ("resource/block-bandwidth", "resource/block-iops",
                "resource/network-bandwidth", "os/linux/selinux-context",
                "os/linux/apparmor-profile")
KNOWN = (*RESOURCES, *APP_ONLY, SYSCTL, *NOT_ENFORCED)
# Only namespaced sysctls: a pod's network namespace owns net.*, its IPC namespace these.
SYSCTL_PREFIXES = ("net.", "kernel.msg", "kernel.sem", "kernel.shm", "fs.mqueue.")


@dataclass(frozen=True)
class IsolatorPlan:
    """What stage1 applies for one app (limits also feed the pod's cgroup or rctl rules)."""

    limits: Limits
    capabilities: frozenset[str]  # the bounding set, and what a root app holds
    seccomp: SeccompFilter | None
    no_new_privileges: bool = False
    sysctls: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # What a non-root app holds (as ambient capabilities): only an explicit retain-set.
    ambient_capabilities: frozenset[str] = frozenset()


def _by_name(isolators: Iterable[Mapping[str, Any]], path: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for index, isolator in enumerate(isolators):
        where = f"{path}[{index}]"
        name = isolator.get("name") if isinstance(isolator, Mapping) else None
        if not isinstance(name, str) or not name:
            raise ValidationError(f"{where}.name", "an isolator needs a name")
        if "value" not in isolator:
            raise ValidationError(f"{where}.value", f"isolator {name} needs a value")
        if name in found and name in KNOWN:
            raise ValidationError(where, f"isolator {name} may appear only once")
        found[name] = isolator["value"]
    return found


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(where, "must be an object")
    return value


def _names(value: Any, where: str) -> list[str]:
    items = _object(value, where).get("set")
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise ValidationError(f"{where}.set", "must be a non-empty list of strings")
    return list(items)


def _limit(value: Any, where: str) -> str | int | float | None:
    limit = _object(value, where).get("limit")
    if limit is not None and not isinstance(limit, str | int | float):
        raise ValidationError(f"{where}.limit", "must be a quantity")
    return limit


def isolator_problems(
    isolators: Sequence[Mapping[str, Any]],
    path: str,
    *,
    platform: PlatformKind | None = None,
    block_io: bool = False,
) -> list[tuple[str, str]]:
    """``(where, why)`` for each isolator (or sysctl key) jetpack would not enforce: unknown,
    known but not enforced, Linux-only elsewhere, a sysctl not namespaced to the pod. ``where``
    is the JSON path (``apps[0].app.isolators[1]``). The plan turns these into warnings for an
    image's isolators; prepare refuses them when a pod manifest asks for them. ``block_io``:
    the driver enforces resource/block-bandwidth and block-iops (its capabilities say so)."""
    platform = platform or platform_kind()
    problems: list[tuple[str, str]] = []
    for index, isolator in enumerate(isolators):
        where = f"{path}[{index}]"
        name = isolator.get("name") if isinstance(isolator, Mapping) else None
        if name not in KNOWN:
            problems.append((where, f"unknown isolator {name} ignored"))
        elif name in NOT_ENFORCED and not (block_io and name in BLOCK_IO):
            problems.append((where, f"isolator {name} is not enforced by jetpack; ignored"))
        elif platform != "linux" and name in LINUX_ONLY:
            problems.append((where, f"isolator {name} is Linux-only; ignored on {platform}"))
        elif name == SYSCTL and isinstance(isolator.get("value"), Mapping):
            problems += [(f"{where}.value.{key}",
                          f"sysctl {key} is not namespaced to the pod; ignored")
                         for key, value in isolator["value"].items()
                         if not key.startswith(SYSCTL_PREFIXES) or not isinstance(value, str)]
    return problems


def plan_isolators(
    app_isolators: Sequence[Mapping[str, Any]] = (),
    pod_isolators: Sequence[Mapping[str, Any]] = (),
    *,
    pids_limit: int | None = DEFAULT_PIDS_LIMIT,
    platform: PlatformKind | None = None,
    path: str = "app.isolators",
    block_io: bool = False,
) -> IsolatorPlan:
    """The plan for one app: app isolators override the pod's. A pod-level capabilities,
    seccomp or no-new-privileges isolator applies to every app that has none of that kind."""
    platform = platform or platform_kind()
    app = _by_name(app_isolators, path)
    _by_name(pod_isolators, "isolators")  # validates them
    inherited = [i for i in pod_isolators
                 if i["name"] not in app and not _overridden(i["name"], app)]
    pod = _by_name(inherited, "isolators")
    merged = {**pod, **app}
    app = {**{k: v for k, v in pod.items() if k in APP_ONLY}, **app}
    warnings = [why for _, why in
                isolator_problems(inherited, "isolators", platform=platform, block_io=block_io)
                + isolator_problems(app_isolators, path, platform=platform, block_io=block_io)]

    where = {name: f"{path}[{name}]" if name not in pod else f"isolators[{name}]"
             for name in merged}
    memory = _limit(merged[MEMORY], where[MEMORY]) if MEMORY in merged else None
    cpu = _limit(merged[CPU], where[CPU]) if CPU in merged else None
    block: dict[str, int | None] = {}
    for name in BLOCK_IO:
        limit = _limit(merged[name], where[name]) if block_io and name in merged else None
        block[name] = None if limit is None else parse_bytes(limit, path=where[name])
    limits = Limits(
        memory_bytes=None if memory is None else parse_bytes(memory, path=where[MEMORY]),
        cpu_millicores=None if cpu is None else parse_millicores(cpu, path=where[CPU]),
        pids=pids_limit, block_bps=block[BLOCK_BANDWIDTH], block_iops=block[BLOCK_IOPS],
    )

    capabilities = capability_set(
        retain=_names(app[CAPS_RETAIN], where[CAPS_RETAIN]) if CAPS_RETAIN in app else None,
        remove=_names(app[CAPS_REMOVE], where[CAPS_REMOVE]) if CAPS_REMOVE in app else None,
    )
    # A non-root app gets no capability unless its retain-set names it (rkt, runc, Docker);
    # the bounding set still lets a setuid-root binary of the image (su) work as usual.
    ambient = capabilities if CAPS_RETAIN in app else frozenset()
    no_new_privileges = app.get(NO_NEW_PRIVILEGES, False)
    if not isinstance(no_new_privileges, bool):
        raise ValidationError(where[NO_NEW_PRIVILEGES], "must be true or false")

    seccomp_value = app.get(SECCOMP_RETAIN, app.get(SECCOMP_REMOVE))
    errno = None
    if seccomp_value is not None:
        errno_where = where.get(SECCOMP_RETAIN, where.get(SECCOMP_REMOVE, path))
        errno = _object(seccomp_value, errno_where).get("errno") or None
        if errno is not None and not isinstance(errno, str):
            raise ValidationError(f"{errno_where}.errno", "must be an errno name")
    seccomp = seccomp_filter(
        retain=_names(app[SECCOMP_RETAIN], where[SECCOMP_RETAIN])
        if SECCOMP_RETAIN in app else None,
        remove=_names(app[SECCOMP_REMOVE], where[SECCOMP_REMOVE])
        if SECCOMP_REMOVE in app else None,
        errno=errno,
    )

    sysctls: dict[str, str] = {}
    if SYSCTL in merged:
        for key, value in _object(merged[SYSCTL], where[SYSCTL]).items():
            if not key.startswith(SYSCTL_PREFIXES) or not isinstance(value, str):
                continue  # reported by isolator_problems
            sysctls[key] = value
    return IsolatorPlan(limits, capabilities, seccomp, no_new_privileges, sysctls,
                        tuple(warnings), ambient)


# Isolators of one kind: an app's own replaces the pod's whole kind (a retain-set of the app's
# is not combined with a remove-set of the pod's).
_KINDS = ((CAPS_RETAIN, CAPS_REMOVE), (SECCOMP_RETAIN, SECCOMP_REMOVE), (NO_NEW_PRIVILEGES,))


def _overridden(name: str, app: Mapping[str, Any]) -> bool:
    return any(name in kind and any(k in app for k in kind) for kind in _KINDS)


def pod_limits(pod_isolators: Sequence[Mapping[str, Any]],
               app_plans: Sequence[IsolatorPlan],
               *, pids_limit: int | None = DEFAULT_PIDS_LIMIT, block_io: bool = False) -> Limits:
    """The pod-wide cgroup/rctl limits: the pod's own resource isolators, else the sum of its
    apps' limits when every app has one (one unlimited app leaves the pod unlimited)."""
    pod = _by_name(pod_isolators, "isolators")
    memory = _limit(pod[MEMORY], f"isolators[{MEMORY}]") if MEMORY in pod else None
    cpu = _limit(pod[CPU], f"isolators[{CPU}]") if CPU in pod else None
    memory_bytes = None if memory is None else parse_bytes(memory)
    millicores = None if cpu is None else parse_millicores(cpu)
    if app_plans and memory_bytes is None and \
            all(p.limits.memory_bytes is not None for p in app_plans):
        memory_bytes = sum(p.limits.memory_bytes or 0 for p in app_plans)
    if app_plans and millicores is None and \
            all(p.limits.cpu_millicores is not None for p in app_plans):
        millicores = sum(p.limits.cpu_millicores or 0 for p in app_plans)
    block: dict[str, int | None] = {}
    for name, field_name in ((BLOCK_BANDWIDTH, "block_bps"), (BLOCK_IOPS, "block_iops")):
        limit = _limit(pod[name], f"isolators[{name}]") if block_io and name in pod else None
        total = None if limit is None else parse_bytes(limit)
        per_app = [getattr(p.limits, field_name) for p in app_plans]
        if app_plans and total is None and all(v is not None for v in per_app):
            total = sum(per_app)
        block[field_name] = total
    return Limits(memory_bytes=memory_bytes, cpu_millicores=millicores, pids=pids_limit,
                  **block)
