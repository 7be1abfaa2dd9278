"""A short soak: 20 pod cycles of every kind (restart policy firing, port forward, volumes,
isolators, exec, logs) with an events follower connected throughout leave nothing behind
(bench/soak.py runs the long one)."""

from __future__ import annotations

import secrets
import subprocess
import urllib.request
import uuid
from pathlib import Path

import inventory
from soaking import Soak

from jetpack.stage1.cgroups import PodCgroup

from podhost import Host, open_host


def test_twenty_mixed_cycles_leave_nothing_behind(host: Host) -> None:
    host.start()
    soak = Soak(host, log=lambda line: None)
    follower = soak.run(20, every=10)
    assert [row.cycle for row in soak.rows] == [0, 10, 20]
    assert soak.leaks(follower) == []
    # the follower saw the whole run: at least every pod's creation and destruction
    assert follower.received >= 2 * 20


def test_destroyed_pods_leave_no_cgroup(host: Host) -> None:
    """The 1000-cycle soak ended with two destroyed pods' cgroups left in every hierarchy:
    each suspect cycle (destroy while running, a restart policy firing, run --rm, stop and
    destroy) a few times over, and no cgroup of a pod that is not running may remain."""
    host.start()
    soak = Soak(host, log=lambda line: None)
    for _ in range(3):
        for _kind, once in soak.kinds:
            once()
    inv = inventory.take(host)
    assert inventory.problems(inv) == []
    assert inv.cgroups == frozenset()
    assert "teardown failed" not in host.log.read_text()


def test_gc_removes_cgroups_of_pods_not_running(host: Host) -> None:
    """A teardown cut short leaves the pod's cgroup behind (what the soak found): ``gc``
    removes the cgroups of this host's destroyed and exited pods, in every hierarchy, and
    leaves alone a cgroup of a pod this host never named (another state root's)."""
    host.start()
    destroyed = host.jp("prepare", "example.com/busybox", "--exec", "/bin/true"
                        ).stdout.split()[-1]
    host.jp("run", destroyed)
    host.jp("destroy", destroyed)
    exited = host.jp("prepare", "example.com/busybox", "--exec", "/bin/true").stdout.split()[-1]
    host.jp("run", exited)
    stranger = str(uuid.uuid4())
    made = [PodCgroup.for_pod(u) for u in (destroyed, exited, stranger)]
    try:
        for cgroup in made:
            for directory in cgroup.directories():
                directory.mkdir(parents=True)
        assert {destroyed, exited} <= inventory.take(host).cgroups
        out = host.jp("gc", "--grace", "1h").stdout
        assert f"removed the leftover cgroup of pod {destroyed}" in out, out
        assert f"removed the leftover cgroup of pod {exited}" in out, out
        assert not made[0].exists()
        assert not made[1].exists()
        assert all(d.is_dir() for d in made[2].directories())
        assert host.pod(exited)["state"] == "exited"  # the grace keeps the pod itself
    finally:
        for cgroup in made:
            cgroup.remove()


def test_a_failed_teardown_step_still_removes_the_cgroup(host: Host) -> None:
    """A teardown step that fails (here the pod's run directory cannot be removed: a file in
    it is immutable) made the supervisor skip the cgroup, and record the pod exited all the
    same: its cgroup stayed, empty, in every hierarchy (what the soak found twice). The other
    steps still run; the failure is logged."""
    host.start()
    pod = host.jp("prepare", "example.com/busybox", "--exec", "/bin/sleep 600").stdout.split()[-1]
    host.jp("start", pod)
    stuck = host.jp.root / "pods" / pod / "run" / "stuck"
    stuck.write_text("")
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        host.jp("stop", pod)
        assert host.pod(pod)["state"] == "exited"
        assert "pod teardown failed" in host.log.read_text()  # the step did fail
        assert pod not in inventory.take(host).cgroups
        assert not PodCgroup.for_pod(pod).exists()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
        PodCgroup.for_pod(pod).remove()
    host.jp("destroy", pod)


def test_another_hosts_network_gc_keeps_this_hosts_forwards(
        host: Host, busybox_rootfs: Path, tmp_path: Path) -> None:
    """The soak's forwarded ports that never answered (7 of 250, while other suites ran):
    nftables' ``jetpack`` table is the machine's, and any other jetpack's ``gc --network``
    (every test host's teardown) deleted it with this host's forwards in it. Another host's
    gc with none of its own pods running must leave a running pod's forward answering."""
    host.start()
    soak = Soak(host, log=lambda line: None)
    port = 20000 + secrets.randbelow(20000)
    pod = soak.prepare("example.com/soak-web", "-p", f"http:{port}")
    host.jp("start", pod)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                return answer.read() == b"soak page\n"
        except OSError:
            return False

    host.wait_for("the forwarded port", answers)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    with open_host(other_dir, busybox_rootfs, {"storage.driver": "dir"}) as other:
        other.jp("gc", "--network")
        assert answers()
    assert answers()  # the other host's own teardown ran gc --network too
    host.jp("destroy", pod)
