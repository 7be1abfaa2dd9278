"""The isolator plan: appc isolators of an app and its pod turned into what stage1 applies."""

from __future__ import annotations

from typing import Any

import pytest

from jetpack.errors import ValidationError
from jetpack.stage1.capabilities import DEFAULT_CAPABILITIES
from jetpack.stage1.cgroups import DEFAULT_PIDS_LIMIT, Limits
from jetpack.stage1.isolators import plan_isolators, pod_limits
from jetpack.stage1.seccomp import DEFAULT_REMOVE_SET, SeccompFilter


def iso(name: str, value: Any) -> dict[str, Any]:
    return {"name": name, "value": value}


def test_no_isolators_gives_the_defaults() -> None:
    plan = plan_isolators(platform="linux")
    assert plan.limits == Limits(None, None, DEFAULT_PIDS_LIMIT)
    assert plan.capabilities == DEFAULT_CAPABILITIES
    assert plan.seccomp == SeccompFilter("remove", DEFAULT_REMOVE_SET, "EPERM")
    assert plan.no_new_privileges is False
    assert plan.warnings == ()


def test_every_supported_isolator() -> None:
    plan = plan_isolators([
        iso("resource/memory", {"request": "32M", "limit": "64M"}),
        iso("resource/cpu", {"request": "250m", "limit": "500m"}),
        iso("os/linux/capabilities-remove-set", {"set": ["CAP_NET_RAW"]}),
        iso("os/linux/no-new-privileges", True),
        iso("os/linux/seccomp-remove-set", {"errno": "EPERM", "set": ["mkdir"]}),
    ], platform="linux", pids_limit=200)
    assert plan.limits == Limits(64_000_000, 500, 200)
    assert plan.capabilities == DEFAULT_CAPABILITIES - {"CAP_NET_RAW"}
    assert plan.seccomp == SeccompFilter("remove", DEFAULT_REMOVE_SET | {"mkdir"}, "EPERM")
    assert plan.no_new_privileges is True
    assert plan.warnings == ()


def test_app_isolators_override_the_pod_s_and_pod_level_app_only_ones_apply_to_apps() -> None:
    plan = plan_isolators(
        [iso("resource/memory", {"limit": "1Gi"})],
        [iso("resource/memory", {"limit": "64M"}), iso("resource/cpu", {"limit": "2"}),
         iso("os/linux/no-new-privileges", True),
         iso("os/linux/capabilities-remove-set", {"set": ["CAP_NET_RAW"]})],
        platform="linux")
    assert plan.limits.memory_bytes == 2**30
    assert plan.limits.cpu_millicores == 2000
    assert plan.no_new_privileges is True
    assert plan.capabilities == DEFAULT_CAPABILITIES - {"CAP_NET_RAW"}
    assert plan.warnings == ()


def test_an_app_s_own_capability_isolator_replaces_the_pod_s() -> None:
    plan = plan_isolators(
        [iso("os/linux/capabilities-retain-set", {"set": ["CAP_KILL"]}),
         iso("os/linux/no-new-privileges", False)],
        [iso("os/linux/capabilities-remove-set", {"set": ["CAP_NET_RAW"]}),
         iso("os/linux/no-new-privileges", True)],
        platform="linux")
    assert plan.capabilities == {"CAP_KILL"}
    assert plan.no_new_privileges is False


def test_unknown_and_unenforced_isolators_are_reported() -> None:
    plan = plan_isolators([
        iso("example.com/frobnicate", {}),
        iso("resource/network-bandwidth", {"default": True, "limit": "1G"}),
        iso("os/unix/sysctl", {"net.ipv4.tcp_keepalive_time": "300", "vm.swappiness": "0"}),
    ], platform="linux")
    assert plan.warnings == (
        "unknown isolator example.com/frobnicate ignored",
        "isolator resource/network-bandwidth is not enforced by jetpack; ignored",
        "sysctl vm.swappiness is not namespaced to the pod; ignored",
    )
    assert plan.sysctls == {"net.ipv4.tcp_keepalive_time": "300"}


def test_linux_isolators_warn_on_freebsd() -> None:
    plan = plan_isolators([iso("os/linux/capabilities-retain-set", {"set": ["CAP_KILL"]}),
                           iso("resource/memory", {"limit": "64M"})], platform="freebsd")
    assert plan.warnings == ("isolator os/linux/capabilities-retain-set is Linux-only; "
                             "ignored on freebsd",)
    assert plan.limits.memory_bytes == 64_000_000


@pytest.mark.parametrize(("isolators", "message"), [
    ([iso("resource/memory", {"limit": "64X"})], r"app\.isolators\[resource/memory\]"),
    ([iso("resource/memory", "64M")], "must be an object"),
    ([iso("resource/cpu", {"limit": "1"}), iso("resource/cpu", {"limit": "2"})], "only once"),
    ([{"name": "resource/cpu"}], "needs a value"),
    ([iso("os/linux/capabilities-remove-set", {"set": []})], "non-empty list"),
    ([iso("os/linux/capabilities-retain-set", {"set": ["CAP_KILL"]}),
      iso("os/linux/capabilities-remove-set", {"set": ["CAP_KILL"]})], "cannot be combined"),
    ([iso("os/linux/seccomp-retain-set", {"set": ["read"]}),
      iso("os/linux/seccomp-remove-set", {"set": ["read"]})], "cannot be combined"),
    ([iso("os/linux/seccomp-remove-set", {"set": ["read"], "errno": "ENOPE"})], "unknown errno"),
    ([iso("os/linux/no-new-privileges", "yes")], "true or false"),
])
def test_malformed_isolators_are_errors(isolators: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        plan_isolators(isolators, platform="linux")


def test_pod_limits() -> None:
    a = plan_isolators([iso("resource/memory", {"limit": "64M"}),
                        iso("resource/cpu", {"limit": "500m"})], platform="linux")
    b = plan_isolators([iso("resource/memory", {"limit": "36M"})], platform="linux")
    assert pod_limits([], [a, b]) == Limits(100_000_000, None, DEFAULT_PIDS_LIMIT)
    assert pod_limits([iso("resource/cpu", {"limit": "1"})], [a, b], pids_limit=None) == \
        Limits(100_000_000, 1000, None)
    assert pod_limits([], []) == Limits(None, None, DEFAULT_PIDS_LIMIT)
