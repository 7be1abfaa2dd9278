"""FreeBSD limits through rctl(8), checked by a stand-in that parses rctl's rule syntax."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from jetpack.errors import IsolationError
from jetpack.stage1 import rctl
from jetpack.stage1.cgroups import Limits, parse_bytes, parse_millicores

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
