"""cgroup limits for real on this host's (hybrid v1) layout: an OOM kill at 64M, a fork bomb
stopped at the pids limit, CPU throttling, and nothing left under jetpack/ afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from jetpack.errors import IsolationError, ValidationError
from jetpack.stage1 import cgroups, devices
from jetpack.stage1.cgroups import Limits, PodCgroup

from conftest import require


@pytest.mark.parametrize(("text", "expected"), [
    ("64M", Decimal(64_000_000)), ("123Mi", Decimal(123 * 2**20)), ("125952Ki", Decimal(128974848)),
    ("128974848", Decimal(128974848)), ("500m", Decimal("0.5")), ("0.3", Decimal("0.3")),
    ("1G", Decimal(10**9)), ("2Gi", Decimal(2 * 2**30)), (3, Decimal(3)),
])
def test_appc_quantities(text: str | int, expected: Decimal) -> None:
    assert cgroups.parse_quantity(text) == expected


def test_bytes_and_millicores() -> None:
    assert cgroups.parse_bytes("64M") == 64_000_000
    assert cgroups.parse_bytes("0.5Ki") == 512
    assert cgroups.parse_millicores("500m") == 500
    assert cgroups.parse_millicores("1.5") == 1500
    assert cgroups.parse_millicores("250m") == 250


@pytest.mark.parametrize("bad", ["", "M", "12X", "-5M", "1.2.3", "5 MB", "nan"])
def test_malformed_quantities_name_the_path(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"^app\.isolators\[0\]"):
        cgroups.parse_quantity(bad, path="app.isolators[0]")


def test_detects_v2_and_hybrid_from_mountinfo(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.write_text("30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n")
    assert cgroups.detect_layout(v2).kind == "v2"
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "30 23 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "31 23 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 23 0:28 / /sys/fs/cgroup/cpu\\040x rw - cgroup cgroup rw,cpu,cpuacct\n")
    layout = cgroups.detect_layout(hybrid)
    assert layout.kind == "hybrid"
    assert layout.v1 == {"memory": Path("/sys/fs/cgroup/memory"),
                         "cpu": Path("/sys/fs/cgroup/cpu x")}
    assert layout.controller_dir("pids") is None


@pytest.fixture
def layout(root: None) -> cgroups.Layout:
    found = cgroups.detect_layout()
    for controller in cgroups.CONTROLLERS:
        if controller != "devices":  # v2 has none: an eBPF filter stands in for it
            require(found.controller_dir(controller) is not None,
                    f"the {controller} cgroup controller")
    return found


@pytest.fixture
def pod_cgroup(layout: cgroups.Layout) -> Iterator[PodCgroup]:
    cgroup = PodCgroup.for_pod(str(uuid.uuid4()), layout)
    yield cgroup
    cgroup.remove()
    assert not cgroup.exists()
    assert not [p for p in cgroups.leftover_cgroups(layout) if p.name == cgroup.name.split("/")[1]]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll state owned by another process, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def start_gated(cgroup: PodCgroup, argv: list[str], *,
                quiet: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` blocked on a line of stdin, put it in ``cgroup``, then let it run."""
    proc = subprocess.Popen(["/bin/sh", "-c", 'read _ && exec "$@"', "gate", *argv],
                            stdin=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None)
    cgroup.add_process(proc.pid)
    assert proc.pid in cgroup.pids()
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc


def test_limits_are_written_where_the_layout_says(pod_cgroup: PodCgroup,
                                                  layout: cgroups.Layout) -> None:
    pod_cgroup.create(Limits(memory_bytes=64 * 2**20, cpu_millicores=500, pids=77))
    memory = layout.v1["memory"] / pod_cgroup.name
    assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 * 2**20)
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(64 * 2**20)
    cpu = layout.v1["cpu"] / pod_cgroup.name
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (layout.v1["pids"] / pod_cgroup.name / "pids.max").read_text().strip() == "77"
    # Lifting limits again (None) writes "unlimited", memsw first.
    pod_cgroup.set_limits(Limits(memory_bytes=None, cpu_millicores=None, pids=None))
    assert (layout.v1["pids"] / pod_cgroup.name / "pids.max").read_text().strip() == "max"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert pod_cgroup.oom_events() == 0
    if "devices" in layout.v1:  # the device allow-list, whatever the limits
        allowed = (layout.v1["devices"] / pod_cgroup.name / "devices.list").read_text().split("\n")
        assert sorted(filter(None, allowed)) == sorted(
            rule.v1_line() for rule in devices.ALLOWED_DEVICES)


def test_allocating_200M_under_a_64M_limit_is_oom_killed(pod_cgroup: PodCgroup) -> None:
    pod_cgroup.create(Limits(memory_bytes=cgroups.parse_bytes("64M")))
    hog = start_gated(pod_cgroup, [sys.executable, "-c",
                                   "data = b'x' * (200 << 20); print('survived')"])
    assert hog.wait(timeout=60) == -9
    assert (pod_cgroup.oom_events() or 0) >= 1
    # The host is unaffected: the same allocation outside the cgroup succeeds.
    ok = subprocess.run([sys.executable, "-c", "data = b'x' * (200 << 20); print('survived')"],
                        capture_output=True, text=True, timeout=60)
    assert ok.stdout == "survived\n"


def test_a_fork_bomb_stops_at_the_pids_limit(pod_cgroup: PodCgroup,
                                             layout: cgroups.Layout) -> None:
    pod_cgroup.create(Limits(pids=40))
    pids_dir = layout.v1["pids"] / pod_cgroup.name

    def refused_forks() -> int:
        events = dict(line.split() for line in (pids_dir / "pids.events").read_text().splitlines())
        return int(events.get("max", 0))

    bomb = start_gated(pod_cgroup, ["/bin/busybox", "sh", "-c", "f() { f | f & }; f; wait"],
                       quiet=True)
    try:
        wait_for(lambda: refused_forks() > 0)
        assert int((pids_dir / "pids.current").read_text()) <= 40
        assert len(pod_cgroup.pids()) <= 40
        # The host still forks fine.
        assert subprocess.run(["/bin/true"], timeout=10).returncode == 0
        started = time.monotonic()
        pod_cgroup.remove()
        assert time.monotonic() - started < 10
    finally:
        bomb.kill()
        bomb.wait()
    assert not pod_cgroup.exists()


def test_cpu_limit_throttles(pod_cgroup: PodCgroup) -> None:
    pod_cgroup.create(Limits(cpu_millicores=cgroups.parse_millicores("200m")))
    spin = ("import time\nend = time.monotonic() + 1.5\n"
            "while time.monotonic() < end:\n    pass\n")
    proc = start_gated(pod_cgroup, [sys.executable, "-c", spin])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    # Unthrottled this burns ~1.5 s of CPU; at 200m it gets about 0.3 s.
    assert usage.ru_utime + usage.ru_stime < 0.7


def test_remove_is_idempotent_and_kills_leftovers(pod_cgroup: PodCgroup) -> None:
    pod_cgroup.create(Limits())
    sleeper = start_gated(pod_cgroup, ["/bin/sleep", "300"])
    pod_cgroup.remove()
    assert sleeper.wait(timeout=10) == -9
    assert not pod_cgroup.exists()
    pod_cgroup.remove()


def test_a_missing_controller_is_named(tmp_path: Path) -> None:
    layout = cgroups.Layout("v1", {"memory": tmp_path})
    cgroup = PodCgroup("jetpack/x", layout)
    with pytest.raises(IsolationError, match="pids cgroup controller is not available"):
        cgroup.create(Limits(pids=10))
    assert not (tmp_path / "jetpack/x").exists()


@pytest.mark.usefixtures("root")
def test_warming_moves_leaves_the_process_where_it_was() -> None:
    """The supervisor calls warm_moves on every start: a write of itself into its own cgroup,
    which must move it nowhere, in any hierarchy."""
    code = ("from pathlib import Path\nfrom jetpack.stage1 import cgroups\n"
            "before = Path('/proc/self/cgroup').read_text()\ncgroups.warm_moves()\n"
            "assert Path('/proc/self/cgroup').read_text() == before\nprint(before, end='')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == Path("/proc/self/cgroup").read_text()  # and where its parent is
