"""FreeBSD limits through rctl(8), checked by a stand-in that parses rctl's rule syntax."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import trio

from jetpack.errors import IsolationError
from jetpack.stage1 import rctl
from jetpack.stage1.base import AppSpec, SandboxSpec
from jetpack.stage1.cgroups import Limits, parse_bytes, parse_millicores
from jetpack.stage1.jail import JailDriver
from jetpack.testing import freebsd_standins

from conftest import REPO

pytestmark = pytest.mark.freebsd

STANDINS = REPO / "testing" / "standins"


@pytest.fixture
def standin_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "standin"
    state.mkdir()
    monkeypatch.setenv("JETPACK_STANDIN_STATE", str(state))
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    return state


def loaded() -> list[str]:
    return subprocess.run(["rctl"], capture_output=True, text=True, check=True).stdout.split()


def test_rules_for_limits() -> None:
    limits = Limits(memory_bytes=parse_bytes("64M"), cpu_millicores=parse_millicores("500m"),
                    pids=1024)
    assert rctl.rctl_rules("jetpack/abc", limits) == [
        "jail:jetpack/abc:memoryuse:deny=64000000",
        "jail:jetpack/abc:pcpu:deny=50",
        "jail:jetpack/abc:maxproc:deny=1024",
    ]
    assert rctl.rctl_rules("p", Limits(pids=None)) == []
    with pytest.raises(IsolationError, match="rctl subject"):
        rctl.rctl_rules("a:b", Limits())


def test_apply_and_remove(standin_state: Path) -> None:
    rctl.apply_limits("pod1", Limits(memory_bytes=64 * 2**20, cpu_millicores=250, pids=100))
    rctl.apply_limits("pod2", Limits())
    assert loaded() == ["jail:pod1:memoryuse:deny=67108864", "jail:pod1:pcpu:deny=25",
                        "jail:pod1:maxproc:deny=100", "jail:pod2:maxproc:deny=1024"]
    rctl.remove_limits("pod1")
    rctl.remove_limits("pod1")  # idempotent: rctl's ESRCH is not an error here
    assert loaded() == ["jail:pod2:maxproc:deny=1024"]
    argvs = [json.loads(line)["argv"] for line in
             (standin_state / "calls.log").read_text().splitlines()]
    assert ["-a", "jail:pod1:memoryuse:deny=67108864"] in argvs
    assert argvs.count(["-r", "jail:pod1"]) == 2


@pytest.mark.parametrize("bad", [
    "jail:x:memoryuse:deny=64Q", "jail:x:nosuch:deny=1", "jail:x:memoryuse:explode=1",
    "jail::memoryuse:deny=1", "jail:x:wallclock:deny=10", "box:x:maxproc:deny=1",
    "jail:x:pcpu:deny=50k", "jail:x:maxproc",
])
def test_the_stand_in_rejects_what_rctl_rejects(standin_state: Path, bad: str) -> None:
    proc = subprocess.run(["rctl", "-a", bad], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"failed to add rule '{bad}'" in proc.stderr
    assert loaded() == []


def test_the_stand_in_accepts_rctl_forms(standin_state: Path) -> None:
    for rule in ("jail:x:memoryuse:deny=64m", "user:1001:maxproc:sigterm=10",
                 "jail:x:readbps:throttle=1g", "loginclass:l:openfiles:log=100/user"):
        assert subprocess.run(["rctl", "-a", rule]).returncode == 0
    assert "jail:x:memoryuse:deny=67108864" in loaded()
    assert "loginclass:l:openfiles:log=100/user" in loaded()


def test_a_failed_rule_leaves_none_behind(standin_state: Path) -> None:
    (standin_state / "rctl.refuse").write_text("pcpu\n")
    with pytest.raises(IsolationError, match="failed to add rule 'jail:pod3:pcpu:deny=10'"):
        rctl.apply_limits("pod3", Limits(memory_bytes=1, cpu_millicores=100, pids=5))
    assert loaded() == []


# --- wired on the jail driver (issue 17, finding 7) -------------------------------------------

POD = "0f8e2c1a-5b7d-4e9f-8a6b-000000000007"
JAIL = f"jetpack/{POD}"


def usage(jail: str) -> dict[str, int]:
    out = subprocess.run(["rctl", "-u", f"jail:{jail}"], capture_output=True, text=True,
                         check=True).stdout
    return {k: int(v) for k, v in (line.split("=") for line in out.split())}


async def test_jail_driver_limits_the_pod_jail_and_its_app_jails(
    standins: Path, tmp_path: Path, busybox_rootfs: Path
) -> None:
    driver = JailDriver()
    assert driver.capabilities.limits
    limits = Limits(memory_bytes=64_000_000, cpu_millicores=1500, pids=100,
                    block_bps=10_000_000, block_iops=500)
    handle = await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod", limits=limits))
    try:
        assert loaded() == [
            f"jail:{JAIL}:memoryuse:deny=64000000", f"jail:{JAIL}:pcpu:deny=150",
            f"jail:{JAIL}:maxproc:deny=100",
            f"jail:{JAIL}:readbps:throttle=10000000", f"jail:{JAIL}:writebps:throttle=10000000",
            f"jail:{JAIL}:readiops:throttle=500", f"jail:{JAIL}:writeiops:throttle=500"]
        with trio.fail_after(20):
            process = await driver.start_app(handle, AppSpec("a", busybox_rootfs,
                                                             ("sleep", "60")))
            # the app runs in the child jail; racct charges it to the pod jail too
            while usage(JAIL)["maxproc"] < 1:  # noqa: ASYNC110 - the stand-in's table
                await trio.sleep(0.05)
            assert usage(f"{JAIL}.a")["maxproc"] >= 1
            await driver.stop(handle, process, grace=5)
        process.close()
    finally:
        await driver.destroy_sandbox(handle)
    assert loaded() == []
    # a create that fails after the rules were added leaves none behind
    with pytest.raises(IsolationError, match=r"unknown parameter: no\.such"):
        await driver.create_sandbox(SandboxSpec(POD, "p", tmp_path / "pod", limits=limits,
                                                annotations={"jetpack/jail.conf/no.such": "1"}))
    assert loaded() == []


async def test_jail_driver_refuses_limits_with_racct_disabled(
    standins: Path, tmp_path: Path
) -> None:
    freebsd_standins.set_sysctl(standins, "kern.racct.enable", "0")
    driver = JailDriver()
    spec = SandboxSpec(POD, "p", tmp_path / "pod", limits=Limits(memory_bytes=64_000_000))
    with pytest.raises(IsolationError) as refused:
        await driver.create_sandbox(spec)
    message = str(refused.value)
    assert "resource/memory" in message
    assert "kern.racct.enable=1" in message
    assert "/boot/loader.conf" in message
    # refused before anything was made
    assert not (tmp_path / "pod/run").exists()
    state = json.loads((standins / "state.json").read_text()) \
        if (standins / "state.json").exists() else {"jails": {}}
    assert state["jails"] == {}
    calls = (standins / "calls.jsonl").read_text()
    assert '"jail"' not in calls


def test_the_stand_in_reports_usage_and_refuses_like_rctl(standins: Path) -> None:
    assert usage("never-made") == dict.fromkeys(usage("never-made"), 0)
    assert list(usage("x"))[:7] == ["cputime", "datasize", "stacksize", "coredumpsize",
                                    "memoryuse", "memorylocked", "maxproc"]
    both = subprocess.run(["rctl", "-a", "-r", "jail:x"], capture_output=True, text=True)
    assert (both.returncode, both.stderr.strip()) == (
        1, "rctl: at most one of -a, -l, -r, or -u may be specified")
    throttle = subprocess.run(["rctl", "-a", "jail:x:memoryuse:throttle=1"],
                              capture_output=True, text=True)
    assert throttle.stderr.strip() == (
        "rctl: failed to add rule 'jail:x:memoryuse:throttle=1': Operation not supported")
    freebsd_standins.set_sysctl(standins, "kern.racct.enable", "0")
    disabled = subprocess.run(["rctl", "-u", "jail:x"], capture_output=True, text=True)
    assert disabled.stderr.strip() == (
        "rctl: RACCT/RCTL present, but disabled; enable using kern.racct.enable=1 tunable")
